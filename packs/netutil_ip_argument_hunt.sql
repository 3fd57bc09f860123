-- description: Hunting: network utility run with any IP literal in its arguments, private ranges included (not only this host)
-- interval: 300
-- platform: linux
-- technique: T1046
-- logging: differential_ignore_removals
-- severity: low
WITH {{common}}
SELECT r.*,
  printf('%s (%s) was executed by %s with IP address(es) %s in its arguments', r.path, r.utility, r.username, r.ip_args) AS message
FROM report r
WHERE r.ip_args <> ''
  -- Discovery tools (ip, ss, netstat, iptables -L) run everywhere in admin scripts: rows only.
  AND r.category <> 'discovery';
