-- description: Backdoor and reverse-shell arguments: nc -e/-c, ncat --sh-exec/--exec/--lua-exec, socat EXEC:/SYSTEM:, an nc listener launched from a suspicious location, or a shell pipeline through nc, telnet or openssl s_client in an ancestor's command line (Falco, Elastic, Sigma, Datadog netcat_shell)
-- interval: 60
-- platform: linux
-- technique: T1059.004
-- logging: differential_ignore_removals
-- severity: critical
WITH {{common}},
shapes AS MATERIALIZED (   -- the CASE once per row, not again for each use of its result
  SELECT r.eid, CASE
      -- (each regex behind a LIKE or GLOB that most rows fail: osquery compiles a regex at every call)
      WHEN r.utility IN ('netcat', 'ncat', 'cryptcat', 'pwncat', 'sbd') AND r.cmdline GLOB '*-*[ec]*'
           AND regex_match(r.cmdline, '(^| )-[A-Za-z]*[ec]( |$|/)', 0) IS NOT NULL THEN 'executes a program for the connection (-e/-c)'
      WHEN r.utility = 'ncat' AND r.cmdline LIKE '% --%exec%' AND regex_match(r.cmdline, ' --(sh-exec|exec|lua-exec)', 0) IS NOT NULL THEN 'executes a program for the connection (--exec)'
      WHEN r.utility = 'socat' AND (r.cmdline LIKE '%exec:%' OR r.cmdline LIKE '%system:%')
           AND regex_match(upper(r.cmdline), '(^| |,|!!)(EXEC|SYSTEM):', 0) IS NOT NULL THEN 'connects a program to the socket (EXEC:/SYSTEM:)'
      WHEN r.utility IN ('netcat', 'ncat') AND r.cmdline GLOB '*-*l*' AND regex_match(r.cmdline, '(^| )-[A-Za-z]*l', 0) IS NOT NULL
           AND r.eid IN (SELECT eid FROM suspicious) THEN 'listens, launched from a suspicious location'
      WHEN r.utility IN ('netcat', 'ncat', 'telnet', 'socat', 'openssl')
           AND (r.parent_cmdline LIKE '%|%' OR r.parent_cmdline LIKE '%mkfifo%' OR r.parent_cmdline LIKE '%mknod%')
           AND regex_match(r.parent_cmdline, '\|\s*(/bin/|/usr/bin/)?(ba|da|z|k)?sh( |$|\|)|mkfifo|mknod .* p', 0) IS NOT NULL
           THEN 'part of a shell pipeline (reverse shell)'
    END AS shape
  FROM report r
)
SELECT r.*, x.shape,
  printf('%s (%s) was executed by %s with backdoor arguments: it %s. Command: %s. Chain: %s',
         r.path, r.utility, r.username, x.shape, r.cmdline, r.chain) || r.contacted_note AS message
FROM report r JOIN shapes x ON x.eid = r.eid
WHERE x.shape IS NOT NULL;
