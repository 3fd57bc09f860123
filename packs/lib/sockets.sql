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
-- The exec rows the events join: one read of the table, by a range of eids (osquery pushes
-- it down; a join by eid would be one thrift call per event, and IN one per value).
-- An empty window reads the empty range 1..0.
execs_of AS MATERIALIZED (
  SELECT eid, utility, cmdline, username FROM network_utility_execs
  WHERE eid BETWEEN (SELECT coalesce(min(exec_eid), 1) FROM recent_sockets WHERE exec_eid > 0)
                AND (SELECT coalesce(max(exec_eid), 0) FROM recent_sockets WHERE exec_eid > 0)
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
