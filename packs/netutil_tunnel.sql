-- description: Tunnels and port forwarding: ssh -R/-L/-D, socat listening and connecting, and tunnelling tools (chisel, gost, ngrok, iodine, ...) (Elastic tunneling_and_port_forwarding)
-- interval: 60
-- platform: linux
-- technique: T1572
-- logging: differential_ignore_removals
-- severity: high
WITH {{common}},
tunnels AS MATERIALIZED (   -- the CASE once per row, not again for each use of its result
  SELECT r.eid, CASE
      WHEN r.category = 'tunnel' THEN 'a tunnelling tool'
      -- (each regex behind a GLOB or LIKE that most rows fail: osquery compiles a regex at every call)
      WHEN r.utility = 'ssh' AND r.cmdline GLOB '*-*[RLDw]*'
           AND regex_match(r.cmdline, '(^| )-[A-Za-z]*[RLDw]( |$|[0-9])', 0) IS NOT NULL THEN 'ssh port forwarding (-R/-L/-D/-w)'
      WHEN r.utility = 'socat' AND r.cmdline LIKE '%-listen:%' AND regex_match(upper(r.cmdline), '[A-Z0-9]*-LISTEN:', 0) IS NOT NULL
           AND regex_match(upper(r.cmdline), ' (TCP|TCP4|TCP6|UDP|OPENSSL|SOCKS4A?|PROXY)[46]?:', 0) IS NOT NULL THEN 'socat relaying a listener to a remote address'
    END AS how
  FROM report r
),
-- Docker's ambassador pattern: a container whose own entrypoint is a socat forwarder (its
-- parent is the runtime or its init: no shell and no service between) relaying a port to
-- another address, with no program on either end (EXEC:, SYSTEM:).
ambassadors AS (
  SELECT eid FROM recent
  WHERE container_id <> '' AND utility = 'socat'
    AND (parent_path GLOB '*/containerd-shim*' OR replace(parent_path, rtrim(parent_path, replace(parent_path, '/', '')), '')
         IN ('conmon', 'docker-init', 'tini', 'dumb-init', 'catatonit'))
    AND upper(cmdline) NOT LIKE '%EXEC:%' AND upper(cmdline) NOT LIKE '%SYSTEM:%'
    AND regex_match(upper(cmdline), '^[^ ]*SOCAT( -[A-Z0-9]+)* (TCP|TCP4|TCP6|UDP|UDP4|UDP6)-LISTEN:[0-9]+(,[^ ]*)? (TCP|TCP4|TCP6|UDP|UDP4|UDP6):[^ ,]+:[0-9]+$', 0) IS NOT NULL
)
SELECT r.*, t.how,
  printf('%s (%s) was executed by %s: %s: %s. Chain: %s', r.path, r.utility, r.username, t.how, r.cmdline, r.chain) || r.contacted_note AS message
FROM report r JOIN tunnels t ON t.eid = r.eid
WHERE t.how IS NOT NULL AND r.eid NOT IN (SELECT eid FROM ambassadors);
