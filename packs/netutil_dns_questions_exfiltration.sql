-- description: DNS exfiltration in the questions a tracked process actually sent (names from stdin, batch files and getaddrinfo included): a label of 40 characters or more, hex, base32 or base64-looking labels, or a TXT or NULL question for an encoded name
-- interval: 60
-- platform: linux
-- technique: T1048.003
-- logging: differential_ignore_removals
-- severity: high
WITH {{sockets}},
asked AS MATERIALIZED (   -- the CASE once per question
  SELECT r.eid, CASE
      -- Cheap first (osquery compiles a regex at every call): each shape needs a run of 16
      -- label characters.
      WHEN r.dns_name NOT GLOB '*' || replace(printf('%16s', ''), ' ', '[A-Za-z0-9_+-]') || '*' THEN NULL
      WHEN regex_match(r.dns_name, '(^|\.)[A-Za-z0-9_-]{40,}\.', 0) IS NOT NULL THEN 'a label of 40 characters or more'
      WHEN regex_match(r.dns_name, '(^|\.)[0-9a-fA-F]{16,}\.', 0) IS NOT NULL THEN 'a hex-encoded label'
      WHEN regex_match(r.dns_name, '(^|\.)(?=[A-Za-z0-9+_-]*[A-Z])(?=[A-Za-z0-9+_-]*[a-z])(?=[A-Za-z0-9+_-]*[0-9])[A-Za-z0-9+_-]{16,}\.', 0) IS NOT NULL THEN 'a base64-looking label'
      WHEN regex_match(r.dns_name, '(^|\.)(?=[A-Z2-7]*[2-7])[A-Z2-7]{16,}\.', 0) IS NOT NULL
        OR regex_match(r.dns_name, '(^|\.)(?=[a-z2-7]*[2-7][a-z2-7]*[2-7])[a-z2-7]{16,}\.', 0) IS NOT NULL THEN 'a base32-looking label'
    END AS shape
  FROM recent_sockets r
  WHERE r.action = 'dns_query'
)
SELECT r.*, a.shape,
  printf('%s (pid %d) asked the DNS %s %s: %s, the shape of data exfiltrated through DNS%s', r.path, r.pid,
         r.dns_type, r.dns_name, a.shape, CASE WHEN r.reason IS NOT NULL THEN '; ' || r.reason ELSE '' END) AS message
FROM joined_sockets r JOIN asked a ON a.eid = r.eid
WHERE a.shape IS NOT NULL;
