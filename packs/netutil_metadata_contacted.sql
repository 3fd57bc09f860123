-- description: A process from a suspicious location (or a network utility in a container) contacted the cloud instance-metadata service (169.254.169.254, 169.254.170.2, 100.100.100.200, fd00:ec2::254) however the address was spelled or hidden: a hostname, a config file, a proxy, a script's own socket
-- interval: 60
-- platform: linux
-- technique: T1552.005
-- logging: differential_ignore_removals
-- severity: high
WITH {{sockets}}
SELECT r.*,
  printf('%s (pid %d%s) contacted the cloud instance metadata service at %s:%d, %s', r.path, r.pid,
         CASE WHEN r.cmdline <> '' THEN ': ' || r.cmdline ELSE '' END, r.remote_address, r.remote_port, r.reason) AS message
FROM report_sockets r
WHERE (r.action = 'send' OR r.action = 'connect' AND r.protocol = 6)   -- a UDP connect sends nothing
  AND lower(r.remote_address) IN ('169.254.169.254', '169.254.170.2', '100.100.100.200', 'fd00:ec2::254');
