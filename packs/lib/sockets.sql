-- Shared by the detections that judge what tracked processes contacted: `WITH {{sockets}}`
-- at the top of a query expands to these common table expressions.

-- The socket events a run judges, {{recent_sockets}}: five intervals in the packs, the next
-- eids in `watch` (as {{recent}} for the execs). MATERIALIZED: one read of the table.
recent_sockets AS MATERIALIZED (
  SELECT * FROM network_utility_socket_events
  WHERE {{recent_sockets}}
),
-- Why the process of an event is suspicious, from the facts of the event itself: the
-- lineage's origin (an exec from a writable directory, an fd or memfd, a relative path,
-- however far up, marked in the kernel; never the host's base), or its container.
-- NULL when neither.
placed_sockets AS MATERIALIZED (
  SELECT s.*, CASE
      WHEN s.origin <> '' AND json_extract(s.origin, '$.path') = '' THEN 'origin no longer known'
      WHEN s.origin <> '' THEN 'descends from ' || coalesce(nullif(json_extract(s.origin, '$.script'), ''),
                                                          json_extract(s.origin, '$.path'))
      WHEN s.container_id <> '' AND s.exec_eid <> 0 THEN 'a network utility in container ' || substr(s.container_id, 1, 12)
    END AS reason
  FROM recent_sockets s
),
-- The exec rows the events join. osquery makes every read of an extension
-- table a thrift call: a join by eid would be one per event (and IN one per value), so
-- the newest eids are read as one range, which osquery pushes down. An eid more than
-- 5000 below the newest (a long-lived tracked process, a backdoor that has run for hours)
-- is read by itself, so that the range never spans the execs between it and the new ones.
-- An empty window reads the empty range 1..0.
wanted_execs AS MATERIALIZED (
  SELECT DISTINCT exec_eid AS eid FROM recent_sockets WHERE exec_eid > 0
),
execs_of AS MATERIALIZED (
  SELECT eid, utility, cmdline, username FROM network_utility_execs
  WHERE eid BETWEEN (SELECT coalesce(min(eid), 1) FROM wanted_execs
                     WHERE eid > (SELECT max(eid) FROM wanted_execs) - 5000)
                AND (SELECT coalesce(max(eid), 0) FROM wanted_execs)
  UNION ALL
  SELECT eid, utility, cmdline, username FROM network_utility_execs
  WHERE eid IN (SELECT eid FROM wanted_execs WHERE eid <= (SELECT max(eid) FROM wanted_execs) - 5000)
),
-- Every judged event with the exec row it joins (the utility and its command line; '' for
-- a tracked process that is no row, a /tmp script's python).
joined_sockets AS (
  SELECT p.*, coalesce(e.utility, '') AS utility, coalesce(e.cmdline, '') AS cmdline,
         coalesce(e.username, '') AS username
  FROM placed_sockets p LEFT JOIN execs_of e ON e.eid = p.exec_eid
),
-- What a triager needs, for the events whose process is suspicious (reason).
report_sockets AS (
  SELECT * FROM joined_sockets p
  WHERE p.reason IS NOT NULL
    -- Ubuntu's motd-news job (curl to motd.ubuntu.com), as `excepted` in common.sql.
    AND p.origin NOT LIKE '%50-motd-news%'
)
