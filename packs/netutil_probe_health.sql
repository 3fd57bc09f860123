-- description: Detection health: the exec probe is not running, the kernel dropped events, or the sensor was restarted in the last 10 minutes (after a kill, most of all: an implant that restarts the sensor under itself makes its own tree the host's base); this host is partly blind
-- interval: 300
-- platform: linux
-- technique: T1562.001
-- logging: snapshot
-- severity: high
SELECT state, error, source, kernel, start_time, restarted, execs_seen, events_matched, events_lost, rows_retained, store_path, version,
  printf('network_utility_execs is %s on this host%s%s%s', state,
         CASE WHEN events_lost > 0 THEN printf(', %d events lost', events_lost) ELSE '' END,
         CASE WHEN error <> '' THEN ': ' || error ELSE '' END,
         CASE WHEN restarted <> '' THEN printf('; the sensor restarted at %s, %s', datetime(start_time, 'unixepoch'), restarted) ELSE '' END) AS message
FROM network_utility_probe_status
WHERE state NOT IN ('running', 'starting') OR events_lost > 0
   OR (restarted <> '' AND start_time > CAST(strftime('%s', 'now') AS INTEGER) - 600);
