-- description: A tool that moves data or shells (nc, socat, curl, wget, ssh, scp, rsync, tunnels) run with a public IP literal in its arguments (127.1-style and hex forms included): a hard-coded address is how implants reach their command and control (Jibril's critical variant); reachability probes and DNS tools stay in the hunting query
-- interval: 60
-- platform: linux
-- technique: T1071
-- logging: differential_ignore_removals
-- severity: critical
WITH {{common}}
SELECT r.*,
  printf('%s (%s) was executed by %s with public IP address(es) %s in its arguments: %s',
         r.path, r.utility, r.username, r.public_ip_args, r.chain) || r.contacted_note AS message
FROM report r
WHERE r.public_ip_args <> ''
  -- Tools that move data or shells. Reachability probes (ping, traceroute, mtr, arping) and
  -- DNS tools asked of a public resolver are routine: the hunting query keeps them.
  AND r.category IN ('transfer', 'remote_shell', 'tunnel');
