-- description: A process from a suspicious location (a writable directory, an fd or memfd, however far up its lineage) connected or sent to a public address, whatever its arguments said: a hostname, a config file (curl -K), a proxy variable, a URL list (wget -i) or a renamed tool
-- interval: 60
-- platform: linux
-- technique: T1105
-- logging: differential_ignore_removals
-- severity: high
WITH {{sockets}}
SELECT r.*,
  printf('%s (pid %d%s) %s %s:%d%s%s, %s%s', r.path, r.pid, CASE WHEN r.cmdline <> '' THEN ': ' || r.cmdline ELSE '' END,
         CASE r.action WHEN 'send' THEN 'sent to' ELSE 'contacted' END, r.remote_address, r.remote_port,
         CASE WHEN r.status <> '' THEN ' (' || r.status || ')' ELSE '' END,
         CASE WHEN r.count > 1 THEN ' ' || r.count || ' times' ELSE '' END, r.reason,
         CASE WHEN r.username <> '' THEN ', as ' || r.username ELSE '' END) AS message
FROM report_sockets r
-- A UDP connect sends nothing (getaddrinfo connects one to every address it sorts): sends count.
WHERE (r.action = 'send' OR r.action = 'connect' AND r.protocol = 6) AND r.remote_public = 1
  -- From a suspicious place only: a container's own tools fetch from the internet all day
  -- (image builds, init containers); its exec rows are judged by the container detections.
  AND r.origin <> '';
