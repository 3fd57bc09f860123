-- description: Network utility run inside a container by the container's own service (a web server or an app runtime, with or without a shell between), whatever the directory: a web shell's curl | sh or wget -O, nc -e, an nc listener, a scan of the pod network. Probes the runtime execs into the container (docker exec, HEALTHCHECK, kubelet exec probes) and entrypoint waits on service ports stay quiet (seed: Datadog "Network utility executed in container"; Falco's network tool in a container)
-- interval: 60
-- platform: linux
-- technique: T1505.003
-- logging: differential_ignore_removals
-- severity: high
WITH {{common}},
-- Per container exec, the nearest ancestor that is the runtime (a shim, runc, crun,
-- conmon): the processes below it are the container's own; those above are the host's.
-- Names are compared as strings, not regexes: osquery compiles a regex at every call, and
-- these run on every ancestor of every container exec.
runtime AS (
  SELECT n.eid, MIN(n.depth) AS depth
  FROM ancestors_named n JOIN recent r ON r.eid = n.eid
  WHERE r.container_id <> '' AND n.depth > 0
    AND (n.name LIKE 'containerd-shim%' OR n.name IN ('runc', 'crun', 'conmon', 'youki'))
  GROUP BY n.eid
),
-- The container's service in the chain: a server or app runtime between the utility and
-- the runtime. A probe the runtime execs has none: its parent is the runtime or a shell
-- the runtime started.
services AS (
  SELECT n.eid, MIN(n.depth) AS depth, n.path AS service   -- SQLite: the path of the nearest one
  FROM ancestors_named n JOIN recent r ON r.eid = n.eid LEFT JOIN runtime t ON t.eid = n.eid
  WHERE r.container_id <> '' AND n.depth > 0 AND n.depth < coalesce(t.depth, 1000)
    AND (n.name IN (SELECT name FROM servers) OR n.name IN ('node', 'nodejs', 'deno', 'bun', 'perl')
         -- and versioned names: php8.2, php-fpm8.2, python3.12, ruby3.1
         OR rtrim(n.name, '0123456789.') IN ('php', 'php-fpm', 'python', 'ruby'))
  GROUP BY n.eid
)
SELECT r.container_id, r.*, v.service,
  printf('%s (%s) was executed in container %s by its own service %s, as a web shell or an exploited app would: %s',
         r.path, r.utility, substr(r.container_id, 1, 12), v.service, r.chain) || r.contacted_note AS message
FROM report r JOIN services v ON v.eid = r.eid
WHERE r.container_id <> '' AND r.category <> 'discovery'
  -- A wait on the container's own ports (nc -z localhost 5432, wget --spider 127.0.0.1:8080).
  AND NOT (r.eid IN (SELECT eid FROM local_only) AND (r.cmdline LIKE '% -z%' OR r.cmdline LIKE '%--spider%'));
