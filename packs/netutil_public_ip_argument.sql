-- description: Network utility run with a public IP literal in its arguments (127.1-style and hex forms included): a hard-coded address is how implants reach their command and control (Jibril's critical variant)
-- interval: 60
-- platform: linux
-- technique: T1071
-- logging: differential_ignore_removals
-- severity: critical
WITH {{common}}
SELECT r.*,
  printf('%s (%s) was executed by %s with public IP address(es) %s in its arguments: %s',
         r.path, r.utility, r.username, r.public_ip_args, r.chain) AS message
FROM report r
WHERE r.public_ip_args <> '';
