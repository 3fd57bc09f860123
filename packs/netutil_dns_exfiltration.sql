-- description: DNS exfiltration shapes: nslookup, dig, host and friends asked for a very long label, many labels, hex, base32 (either case) or base64-looking labels, or a TXT record from an IP-literal resolver (no peer ships this)
-- interval: 60
-- platform: linux
-- technique: T1048.003
-- logging: differential_ignore_removals
-- severity: high
WITH {{common}},
shapes AS MATERIALIZED (   -- the CASE once per row, not again for each use of its result
  SELECT r.eid, CASE
      -- Cheap first (osquery compiles a regex at every call): each shape below needs a run of
      -- 16 label characters, seven dots, or "txt" in the command line.
      WHEN r.cmdline NOT GLOB '*' || replace(printf('%16s', ''), ' ', '[A-Za-z0-9_+-]') || '*'
           AND length(r.cmdline) - length(replace(r.cmdline, '.', '')) < 7
           AND r.cmdline NOT LIKE '%txt%' THEN NULL
      WHEN regex_match(r.cmdline, '(^|[ @.])[A-Za-z0-9_-]{40,}\.', 0) IS NOT NULL THEN 'a label of 40 characters or more'
      WHEN regex_match(r.cmdline, '(^| )([A-Za-z0-9_-]+\.){7,}[A-Za-z0-9_-]+\.?( |$)', 0) IS NOT NULL THEN 'eight labels or more'
      WHEN regex_match(r.cmdline, '(^|[ .])[0-9a-fA-F]{16,}\.', 0) IS NOT NULL THEN 'a hex-encoded label'
      WHEN regex_match(r.cmdline, '(^|[ .])(?=[A-Za-z0-9+_-]*[A-Z])(?=[A-Za-z0-9+_-]*[a-z])(?=[A-Za-z0-9+_-]*[0-9])[A-Za-z0-9+_-]{16,}\.', 0) IS NOT NULL THEN 'a base64-looking label'
      -- Base32 upper case, or lower case (DNS ignores case) with two digits, which names rarely have.
      WHEN regex_match(r.cmdline, '(^|[ .])(?=[A-Z2-7]*[2-7])[A-Z2-7]{16,}\.', 0) IS NOT NULL
        OR regex_match(r.cmdline, '(^|[ .])(?=[a-z2-7]*[2-7][a-z2-7]*[2-7])[a-z2-7]{16,}\.', 0) IS NOT NULL THEN 'a base32-looking label'
      WHEN r.ip_args <> '' AND regex_match(lower(r.cmdline), '(^| )(-(q|type|t|querytype)[= ]?txt|txt)( |$)', 0) IS NOT NULL THEN 'a TXT record from an IP-literal resolver'
    END AS shape
  FROM report r
  WHERE r.category = 'dns' AND r.utility <> 'whois'
)
SELECT r.*, x.shape,
  printf('%s (%s) was executed by %s with %s, the shape of data exfiltrated through DNS queries: %s. Chain: %s',
         r.path, r.utility, r.username, x.shape, r.cmdline, r.chain) || r.contacted_note AS message
FROM report r JOIN shapes x ON x.eid = r.eid
WHERE x.shape IS NOT NULL;
