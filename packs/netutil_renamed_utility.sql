-- description: Renamed network utility: a file whose content is an installed network utility under another name (cp /usr/bin/nc /tmp/upd, or /usr/local/sbin/upd where btf mode judges every executable once by content), found by hash; every name-based rule misses it
-- interval: 60
-- platform: linux
-- technique: T1036.003
-- logging: differential_ignore_removals
-- severity: critical
WITH {{common}}
SELECT r.*,
  printf('%s is a renamed copy of %s, executed by %s: %s. Chain: %s', r.path, r.utility, r.username, r.cmdline, r.chain) || r.contacted_note AS message
FROM report r
WHERE r.matched_by = 'content'
  -- Discovery tools (ip, ss, netstat, iptables -L) run everywhere in admin scripts: rows only.
  AND r.category <> 'discovery';
