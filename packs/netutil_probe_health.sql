-- description: Detection health: the exec probe is not running, or the kernel dropped events; this host is partly blind
-- interval: 300
-- platform: linux
-- technique: T1562.001
-- logging: snapshot
-- severity: high
SELECT state, error, source, kernel, execs_seen, events_matched, events_lost, rows_retained, store_path, version,
  printf('network_utility_execs is %s on this host%s%s', state,
         CASE WHEN events_lost > 0 THEN printf(', %d events lost', events_lost) ELSE '' END,
         CASE WHEN error <> '' THEN ': ' || error ELSE '' END) AS message
FROM network_utility_probe_status
WHERE state NOT IN ('running', 'starting') OR events_lost > 0;
