-- description: A process from a suspicious location (a writable directory, an fd or memfd, however far up its lineage) accepted a connection on a port it listens on, from another host, or listens beyond loopback: a bind shell or a relay, whatever its arguments said, with who connected
-- interval: 60
-- platform: linux
-- technique: T1571
-- logging: differential_ignore_removals
-- severity: high
WITH {{sockets}}
SELECT r.*,
  printf('%s (pid %d%s) %s, %s', r.path, r.pid, CASE WHEN r.cmdline <> '' THEN ': ' || r.cmdline ELSE '' END,
         CASE r.action WHEN 'accept' THEN 'accepted a connection from ' || r.remote_address || ':' || r.remote_port
                                          || ' on port ' || r.local_port
                       ELSE 'listens on ' || r.local_address || ':' || r.local_port END, r.reason) AS message
FROM report_sockets r
-- A peer on this host (a test harness, a local proxy) is not the case this looks for; nor
-- a container's own relay (Docker's ambassador socat): from a suspicious place only.
WHERE r.origin <> ''
  AND (r.action = 'accept' AND r.remote_address NOT LIKE '127.%' AND r.remote_address <> '::1'
       OR r.action = 'listen' AND r.local_address NOT LIKE '127.%' AND r.local_address <> '::1');
