-- Shared by every detection: `WITH {{common}}` at the top of a query expands to these
-- common table expressions. The packs command inlines them into the generated packs.

-- The rows a run judges, {{recent}}: in the packs, those of the last five intervals (osquery
-- logs only rows new since the previous run; five survive four missed runs); in `watch`, the next
-- eids after the last judged one (each row judged once, whatever the rate). The
-- constraint reaches the table's index; MATERIALIZED makes it one read of the table per
-- query (every read is a thrift call in osquery).
recent AS MATERIALIZED (
  SELECT * FROM network_utility_execs
  WHERE {{recent}}
),
-- Writable directories, generated from extension/osquery_netutil/locations.py.
writable(prefix) AS (VALUES {{writable_dirs}}),
-- Each exec (depth 0) and each of its ancestors (depth 1 = parent), as recorded at exec time;
-- base = 1 for the host's own ancestors (those the sensor itself descends from), script =
-- the script an interpreter was started on (sh /tmp/x.sh, python3 /dev/shm/p.py), if any.
-- Last (depth 1000), the lineage's origin as the kernel marked it: the nearest exec
-- suspicious by place, however deep, also an earlier image of a process in the chain (a
-- trampoline that waited, then exec'd the utility).
-- MATERIALIZED: expanded once per query, whichever CTEs read it.
nodes AS MATERIALIZED (
  SELECT eid, 0 AS depth, path, cmdline, 0 AS base, NULL AS script FROM recent
  UNION ALL
  SELECT r.eid, a.key + 1, json_extract(a.value, '$.path'), json_extract(a.value, '$.cmdline'),
         coalesce(json_extract(a.value, '$.base'), 0), json_extract(a.value, '$.script')
  FROM recent r, json_each(r.ancestors) a
  UNION ALL
  SELECT eid, 1000, json_extract(origin, '$.path'), json_extract(origin, '$.cmdline'), 0, json_extract(origin, '$.script')
  FROM recent WHERE origin <> ''
),
-- The same with each process's file name (/usr/sbin/nginx: nginx), so that packs compare
-- names as strings: osquery compiles a regex at every call, and every ancestor of every
-- row would add one.
ancestors_named AS (
  SELECT n.*, replace(n.path, rtrim(n.path, replace(n.path, '/', '')), '') AS name FROM nodes n
),
-- Per process that can be evidence, whether its file, and the script it was started on,
-- sit in a writable directory: each found once (MATERIALIZED), then read twice below. The
-- host's base is not evidence: agents, supervisors and sandboxes are exec'd from memfds
-- and odd places, and everything on the host descends from them; nor is a container
-- runtime's re-exec of itself from a sealed memfd.
placed AS MATERIALIZED (
  SELECT n.eid, n.depth, n.path, n.script,
         EXISTS (SELECT 1 FROM writable w WHERE n.path LIKE w.prefix || '%') AS in_writable,
         n.depth > 0 AND n.script IS NOT NULL
           AND EXISTS (SELECT 1 FROM writable w WHERE n.script LIKE w.prefix || '%') AS script_in_writable
  FROM nodes n
  WHERE n.base = 0 AND n.path NOT LIKE '/memfd:runc_cloned%'
),
-- Why a process is suspicious (NULL when it is not), and the file that makes it so.
located AS (
  SELECT s.eid, s.depth, CASE
      WHEN s.in_writable THEN 'writable directory'
      WHEN s.script_in_writable THEN 'script in a writable directory'
      WHEN s.path LIKE '/dev/fd/%' OR s.path LIKE '/proc/%/fd/%' OR s.path LIKE '/memfd:%' THEN 'fd or memfd'
      WHEN s.path LIKE '% (deleted)' THEN 'deleted file'
      WHEN s.path <> '' AND s.path NOT LIKE '/%' THEN 'relative path'
      WHEN s.depth = 1000 AND s.path = '' THEN 'origin no longer known'
      -- The kernel marked an interpreter started on a relative script, whose cwd had
      -- changed when it was read: the place is unknown.
      WHEN s.depth = 1000 AND s.script <> '' AND s.script NOT LIKE '/%' THEN 'relative path'
    END AS reason,
    CASE WHEN (s.script_in_writable OR s.depth = 1000 AND s.script NOT LIKE '/%') AND NOT s.in_writable THEN s.script
         ELSE s.path END AS place
  FROM placed s
),
-- Per exec, the suspicious process closest to it (the utility itself, else the nearest ancestor).
suspicious AS (
  SELECT eid, MIN(depth) AS depth, reason, place AS suspicious_path
  FROM located WHERE reason IS NOT NULL GROUP BY eid
),
-- Servers: a web shell's or an exploited service's processes descend from one. The
-- container service detection looks for them (with app runtimes); no tool's exception
-- below applies under one (a web shell that copies a tool's shape).
servers(name) AS (VALUES ('nginx'), ('apache2'), ('httpd'), ('lighttpd'), ('caddy'), ('gunicorn'), ('uwsgi'), ('puma'),
  ('java'), ('dotnet'), ('beam.smp'), ('postgres'), ('mysqld'), ('mariadbd'), ('redis-server'), ('mongod'), ('php-fpm')),
-- Tools whose own work looks like an attack from a writable directory, each keyed on its
-- whole shape (its launcher, its directory pattern, its arguments): (eid, depth and place
-- of the tool's node, as `located` names it). Each has a mimic fixture that must still fire. `benign_tools` below
-- keeps only those with no other suspicious node and no server in the chain.
tool_nodes AS (
  -- pip in a virtualenv under a writable directory installs from git over ssh: the venv's
  -- python runs pip, pip runs git (and git, git), git runs
  -- `[/usr/bin/]ssh [-o SendEnv=GIT_PROTOCOL] [-p N] [-4|-6] host git-upload-pack '<repo>'`.
  SELECT r.eid, a.key + 1 AS depth, json_extract(a.value, '$.path') AS place
  FROM recent r, json_each(r.ancestors) a
  WHERE r.utility = 'ssh' AND r.parent_path IN ('/usr/bin/git', '/usr/lib/git-core/git')
    AND (r.cmdline LIKE '% git-upload-pack ''%' OR r.cmdline LIKE '% git-receive-pack ''%')
    AND regex_match(r.cmdline, '^(/usr/bin/)?ssh( -o SendEnv=GIT_PROTOCOL| -p [0-9]+| -[46])* [^ -][^ ]* git-(upload|receive)-pack ''[^'' ]*''$', 0) IS NOT NULL
    -- pip's #! script exec'd (its node is the script), or the venv's python on pip
    AND (json_extract(a.value, '$.path') GLOB '/*/bin/pip*'
         OR json_extract(a.value, '$.path') GLOB '/*/bin/python*'
            AND (json_extract(a.value, '$.script') GLOB '/*/bin/pip*' OR json_extract(a.value, '$.cmdline') LIKE '% -m pip %'))
    AND NOT EXISTS (SELECT 1 FROM json_each(r.ancestors) b
                    WHERE b.key < a.key AND json_extract(b.value, '$.path') NOT IN ('/usr/bin/git', '/usr/lib/git-core/git'))
  UNION ALL
  -- Ansible with become (`-b`): over ssh, sudo runs the module's AnsiballZ wrapper from
  -- <system tmp>/ansible-tmp-<time>-<pid>-<random>/ (/var/tmp, else /tmp: Ansible's
  -- system_tmpdirs), announced by its BECOME-SUCCESS marker.
  SELECT r.eid, a.key + 1, json_extract(a.value, '$.script')
  FROM recent r, json_each(r.ancestors) a
  WHERE r.ancestors LIKE '%/ansible-tmp-%' AND r.ancestors LIKE '%BECOME-SUCCESS-%'
    AND json_extract(a.value, '$.script') GLOB '/*/ansible-tmp-*/AnsiballZ_*.py'
    AND EXISTS (SELECT 1 FROM writable w WHERE json_extract(a.value, '$.script') LIKE w.prefix || 'ansible-tmp-%')
    AND regex_match(json_extract(a.value, '$.script'), '/ansible-tmp-[0-9]+\.[0-9]+-[0-9]+-[0-9]+/AnsiballZ_[A-Za-z0-9_]+\.py$', 0) IS NOT NULL
    AND EXISTS (SELECT 1 FROM json_each(r.ancestors) b
                WHERE b.key > a.key AND json_extract(b.value, '$.cmdline') LIKE '%echo BECOME-SUCCESS-%' || json_extract(a.value, '$.script') || '%')
    AND EXISTS (SELECT 1 FROM json_each(r.ancestors) c
                WHERE c.key > a.key AND replace(json_extract(c.value, '$.path'), rtrim(json_extract(c.value, '$.path'), replace(json_extract(c.value, '$.path'), '/', '')), '') IN ('sshd', 'sshd-session'))
  UNION ALL
  -- A project's own test script in a checkout in a writable directory (its tests/, test/,
  -- ci/, scripts/ or hack/), run from the checkout's root, curling or wgetting this host only.
  SELECT r.eid, s.depth, s.suspicious_path
  FROM recent r JOIN suspicious s ON s.eid = r.eid
  WHERE r.category = 'transfer' AND r.eid IN (SELECT eid FROM local_only) AND s.depth BETWEEN 1 AND 999
    AND EXISTS (SELECT 1 FROM writable w WHERE r.cwd LIKE w.prefix || '_%') AND s.suspicious_path LIKE r.cwd || '/%'
    AND regex_match(substr(s.suspicious_path, length(r.cwd) + 2), '^([^/]+/)*(tests?|ci|scripts|hack)/[^/]+\.sh$', 0) IS NOT NULL
),
-- (The lineage's origin, depth 1000, is the tool's node itself when it names the same place.)
benign_tools AS (
  SELECT t.eid FROM tool_nodes t
  WHERE NOT EXISTS (SELECT 1 FROM located l WHERE l.eid = t.eid AND l.reason IS NOT NULL AND l.depth <> t.depth
                      AND NOT (l.depth = 1000 AND l.place = t.place))
    AND NOT EXISTS (SELECT 1 FROM ancestors_named n WHERE n.eid = t.eid AND n.depth > 0
                      AND (n.name IN (SELECT name FROM servers) OR rtrim(n.name, '0123456789.') = 'php-fpm'))
),
-- The chain rendered root first: /usr/sbin/sshd > /usr/bin/bash > /tmp/x.sh > /usr/bin/nc
lineage AS (
  SELECT r.eid, coalesce((
      SELECT group_concat(p, ' > ') FROM (
        SELECT coalesce(nullif(json_extract(a.value, '$.path'), ''), '[pid ' || json_extract(a.value, '$.pid') || ']') AS p
        FROM json_each(r.ancestors) a ORDER BY a.key DESC)
    ) || ' > ', '') || r.path AS chain
  FROM recent r
),
-- Exceptions the peers found necessary for every detection. Add yours here: one SELECT of
-- eids per reason.
-- (Over the row's own text and its ancestors' JSON: expanding every ancestor costs each
-- query that needs no ancestor more than the rest of its work.)
excepted AS (
  -- Ubuntu's motd-news job fetches https://motd.ubuntu.com with curl (Datadog's exception).
  SELECT eid FROM recent WHERE cmdline LIKE '%50-motd-news%' OR ancestors LIKE '%50-motd-news%'
),
-- What each judged exec's process contacted in its first {{settled_s}} seconds
-- (network_utility_socket_events: its connects, sends and DNS questions; an exec is judged
-- once they have come, and what comes later does not change its line, which osquery's
-- differential log would report again), read once, by the range of the judged eids:
-- "ADDR:PORT,..." and the names it asked, and whether any destination was beyond this host.
contacted AS MATERIALIZED (
  SELECT exec_eid AS eid,
         group_concat(DISTINCT CASE WHEN reached THEN
           CASE WHEN family = 10 THEN '[' || remote_address || ']' ELSE remote_address END || ':' || remote_port END)
           AS destinations,
         group_concat(DISTINCT CASE WHEN action = 'dns_query' THEN dns_name END) AS names,
         max(reached AND remote_address NOT LIKE '127.%' AND remote_address <> '::1') AS beyond
  -- A UDP connect sends nothing: getaddrinfo connects one to every address it sorts.
  FROM (SELECT s.*, s.action = 'send' OR s.action = 'connect' AND s.protocol = 6 AS reached
        -- CROSS JOIN: the events are read once, in the outer loop (osquery would make a
        -- thrift call per exec the other way round).
        FROM network_utility_socket_events s CROSS JOIN recent r ON r.eid = s.exec_eid
        WHERE s.exec_eid BETWEEN (SELECT coalesce(min(eid), 1) FROM recent) AND (SELECT coalesce(max(eid), 0) FROM recent)
          AND s.time <= r.time + {{settled_s}})
  GROUP BY exec_eid
),
-- Execs whose arguments name only this host: loopback IPs or localhost, nothing else. This
-- exception is for health checks (load balancers' and orchestrators' nc -z, curl of a local
-- port; Datadog, Elastic, Sigma), so each detection says whether it applies: never to a
-- backdoor shape (a reverse shell into a local tunnel endpoint is how attackers pivot), nor
-- to a launch from a writable directory, nor to the hunting queries. Not for DNS tools:
-- their data is the name asked, and the local resolver is 127.0.0.53.
local_only AS (
  SELECT eid FROM recent
  WHERE category <> 'dns' AND (ip_args <> '' OR cmdline LIKE '%localhost%')
    -- No IP argument but loopback: no item of ip_args starts other than 127. or is other
    -- than ::1. GLOBs and LIKEs before any regex: osquery compiles a regex at every call.
    AND NOT (',' || ip_args || ',' GLOB '*,[^1:,]*' OR ',' || ip_args || ',' GLOB '*,1[^2]*'
             OR ',' || ip_args || ',' GLOB '*,12[^7]*' OR ',' || ip_args || ',' GLOB '*,127[^.]*'
             OR ',' || ip_args || ',' GLOB '*,:[^:]*' OR ',' || ip_args || ',' GLOB '*,::[^1]*'
             OR ',' || ip_args || ',' GLOB '*,::1[^,]*')
    AND (cmdline NOT LIKE '%://%' OR regex_match(cmdline, '://(?!localhost[:/]|localhost$|127\.|\[::1\])', 0) IS NULL)
    AND (cmdline NOT LIKE '%@%' OR regex_match(cmdline, '@(?!localhost|127\.|\[?::1)[A-Za-z0-9]', 0) IS NULL)
    -- and what it contacted was this host too (argv can name localhost and a config file,
    -- a proxy or a redirect another place)
    AND eid NOT IN (SELECT eid FROM contacted WHERE beyond)
),
-- What a triager needs, for every exec that is not excepted; contacted_note ends the
-- detections' lines: "; contacted 203.0.113.5:443 (asked c2.example.com)".
report AS (
  SELECT r.eid, r.time, r.username, r.uid, r.pid, r.parent, r.utility, r.category, r.technique,
         r.matched_by, r.path, r.cmdline, r.cwd, l.chain, r.parent_cmdline, r.container_id,
         r.ip_args, r.public_ip_args, r.origin, r.stdin, r.stdout, r.stderr, r.pipe_peers,
         replace(coalesce(c.destinations, ''), ',', ', ') AS contacted, replace(coalesce(c.names, ''), ',', ', ') AS asked,
         CASE WHEN c.destinations IS NULL AND c.names IS NULL THEN ''
              ELSE '; contacted ' || coalesce(replace(c.destinations, ',', ', '), 'no address')
                   || coalesce(' (asked ' || replace(c.names, ',', ', ') || ')', '') END AS contacted_note
  FROM recent r JOIN lineage l ON l.eid = r.eid LEFT JOIN contacted c ON c.eid = r.eid
  WHERE r.eid NOT IN (SELECT eid FROM excepted)
)
