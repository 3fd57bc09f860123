-- description: Hunting: every network utility executed, with no location condition (seed: "Utilitaire réseau exécuté")
-- interval: 300
-- platform: linux
-- technique: T1105
-- logging: differential_ignore_removals
-- severity: info
WITH {{common}}
SELECT r.*,
  printf('%s (%s) was executed by %s: %s', r.path, r.utility, r.username, r.chain) AS message
FROM report r
  -- Discovery tools (ip, ss, netstat, iptables -L) run everywhere in admin scripts: rows only.
WHERE r.category <> 'discovery';
