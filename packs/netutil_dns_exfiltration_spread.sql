-- description: Low-and-slow DNS exfiltration over many execs: ten or more distinct encoded-looking labels (hex, base32, base64, each too short for the per-exec shapes of netutil_dns_exfiltration) asked under one parent domain by one process tree (a script, a job, a session) among the rows judged and the five minutes before them (no peer ships this)
-- interval: 60
-- platform: linux
-- technique: T1048.003
-- logging: differential_ignore_removals
-- severity: high
WITH {{common}},
-- The name each DNS tool asked in the five minutes before the rows judged (also those
-- judged by earlier runs: the spread is the evidence): its first argument with a dot and a
-- letter that is no option, no @server and no IPv6 address.
asked AS MATERIALIZED (
  SELECT e.eid, e.parent, e.ancestors,
         (SELECT rtrim(a.value, '.') FROM json_each(e.json_cmdline) a
          WHERE a.key > 0 AND a.value LIKE '%_._%' AND substr(a.value, 1, 1) NOT IN ('-', '+', '@')
            AND a.value GLOB '*[A-Za-z]*' AND a.value NOT LIKE '%:%' AND a.value NOT LIKE '% %'
          ORDER BY a.key LIMIT 1) AS name
  FROM network_utility_execs e
  WHERE e.time >= (SELECT min(time) FROM recent) - 300 AND e.time <= (SELECT max(time) FROM recent)
    AND e.category = 'dns' AND e.utility <> 'whois'
),
-- Per name (with a digit: data has them): its parent domain (the last two labels, three under a
-- country code's generic second level: evil.co.uk), what is left of it (dots dropped), and
-- the process tree that asked: the ancestor just below the outermost one that is neither
-- the host's base nor init (that one is a service such as cron, sshd or a container shim,
-- whose jobs and sessions are trees of their own), else the parent.
domains AS MATERIALIZED (
  SELECT a.*, regex_match(a.name, '([^.]+\.(co|com|net|org|gov|edu|ac|or|ne|go|gv|mil|nic)\.[a-zA-Z]{2}|[^.]+\.[^.]+)$', 0) AS domain
  FROM asked a WHERE a.name GLOB '*[0-9]*'
),
split AS MATERIALIZED (
  SELECT d.eid, lower(d.domain) AS domain,
         replace(substr(d.name, 1, length(d.name) - length(d.domain) - 1), '.', '') AS leaf,
         coalesce((SELECT json_extract(n.value, '$.pid') FROM json_each(d.ancestors) n
                   WHERE coalesce(json_extract(n.value, '$.base'), 0) = 0 AND json_extract(n.value, '$.pid') <> 1
                   ORDER BY n.key DESC LIMIT 1 OFFSET 1), d.parent) AS tree
  FROM domains d
  WHERE d.domain IS NOT NULL AND length(d.name) > length(d.domain) + 1
),
-- Labels that look like encoded data, not names: hex with a digit and a letter, base32 with
-- two of its digits, or base64 mixing both cases and a digit (hostnames such as web01 or
-- ip-10-0-0-1 are none of these).
encoded AS MATERIALIZED (
  SELECT * FROM split
  WHERE length(leaf) >= 6 AND (
       regex_match(leaf, '^(?=[0-9a-fA-F]*[0-9])(?=[0-9a-fA-F]*[a-fA-F])[0-9a-fA-F]{6,}$', 0) IS NOT NULL
    OR regex_match(lower(leaf), '^(?=(?:[a-z2-7]*[2-7]){2})[a-z2-7]{8,}$', 0) IS NOT NULL
    OR regex_match(leaf, '^(?=[A-Za-z0-9+_-]*[A-Z])(?=[A-Za-z0-9+_-]*[a-z])(?=[A-Za-z0-9+_-]*[0-9])[A-Za-z0-9+_-]{8,}$', 0) IS NOT NULL)
),
spread AS (
  SELECT tree, domain, count(DISTINCT lower(leaf)) AS labels
  FROM encoded GROUP BY tree, domain HAVING count(DISTINCT lower(leaf)) >= 10
)
SELECT r.*, s.domain AS parent_domain, s.labels,
  printf('%s (%s) was executed by %s, one of %d execs asking %d distinct encoded-looking labels under %s from one process tree (pid %d) in the window, each too short to alert alone: data leaving through DNS a few bytes at a time. Command: %s. Chain: %s',
         r.path, r.utility, r.username, (SELECT count(*) FROM encoded x WHERE x.tree = s.tree AND x.domain = s.domain),
         s.labels, s.domain, s.tree, r.cmdline, r.chain) || r.contacted_note AS message
FROM report r JOIN encoded e ON e.eid = r.eid JOIN spread s ON s.tree = e.tree AND s.domain = e.domain;
