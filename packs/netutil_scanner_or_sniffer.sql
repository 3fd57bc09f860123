-- description: Network scanner or packet sniffer executed anywhere (nmap, masscan, zmap, tcpdump, tshark, ...): discovery and credential sniffing are rarely legitimate on servers
-- interval: 60
-- platform: linux
-- technique: T1046
-- logging: differential_ignore_removals
-- severity: medium
WITH {{common}}
SELECT r.*,
  printf('The %s %s (%s) was executed by %s: %s. Chain: %s', r.category, r.path, r.utility, r.username, r.cmdline, r.chain) || r.contacted_note AS message
FROM report r
WHERE r.category IN ('scanner', 'sniffer') AND r.eid NOT IN (SELECT eid FROM local_only);
