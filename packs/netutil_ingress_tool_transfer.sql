-- description: Ingress tool transfer: curl or wget writing a file into a writable directory, or piped or substituted straight into a shell by its parent (curl | sh, bash <(curl), sh -c "$(wget -qO-)") (Falco curl_download, Sigma wget_download_suspicious_directory, Elastic piped-to-interpreter)
-- interval: 60
-- platform: linux
-- technique: T1105
-- logging: differential_ignore_removals
-- severity: high
WITH {{common}},
-- The downloaders' execs, and whether each runs in a writable directory: a column, so that
-- the tests below take it before their regexes (SQLite runs a subquery last in an AND, and
-- osquery compiles a regex at every call).
downloads AS MATERIALIZED (
  SELECT r.*, EXISTS (SELECT 1 FROM writable w WHERE r.cwd || '/' LIKE w.prefix || '%') AS in_writable_cwd
  FROM report r WHERE r.utility IN ('curl', 'wget', 'aria2c', 'axel', 'lwp-download', 'tftp', 'ftp')
),
transfers AS MATERIALIZED (   -- the CASE once per row, not again for each use of its result
  SELECT r.eid, CASE
      WHEN EXISTS (SELECT 1 FROM writable w
                       -- -o/-O/-P/-d alone or ending a bundle of short flags (curl -sSLo, wget -qO)
                       WHERE r.cmdline LIKE '%' || rtrim(w.prefix, '/') || '%'   -- cheap first
                         AND regex_match(r.cmdline, '(^| )(-[A-Za-z]*[oOPd]|--output|--output-document|--output-dir|--directory-prefix|--dir)(=| )?'
                                         || rtrim(w.prefix, '/') || '(/| |$)', 0) IS NOT NULL)
           THEN 'writes the download into a writable directory'
      WHEN r.utility = 'curl' AND r.in_writable_cwd
           AND regex_match(r.cmdline, '(^| )(-O|--remote-name|-[A-Za-z]*O)( |$)', 0) IS NOT NULL
           THEN 'saves the download into its writable working directory'
      WHEN r.utility = 'wget' AND r.in_writable_cwd
           AND regex_match(r.cmdline, ' (-O|--output-document)', 0) IS NULL
           THEN 'saves the download into its writable working directory'
      WHEN r.utility IN ('curl', 'wget') AND r.parent_cmdline LIKE '%|%'
           AND regex_match(r.parent_cmdline, '(curl|wget)[^|]*\|\s*(sudo )?(/bin/|/usr/bin/)?((ba|da|z|k)?sh|python[0-9.]*|perl)( |$)', 0) IS NOT NULL
           THEN 'is piped into an interpreter by its parent'
      -- bash <(curl URL), sh -c "$(wget -qO- URL)": the download runs with no file written.
      -- The parent shows the command line, or, once it has exec'd, the interpreter reading the
      -- substitution's pipe (bash /dev/fd/63: shells use fds from 10 up, launchers 3 to 9).
      WHEN r.utility IN ('curl', 'wget') AND (r.parent_cmdline LIKE '%(%' OR r.parent_cmdline LIKE '%/fd/%')
           AND (regex_match(r.parent_cmdline, '(^|[^A-Za-z0-9_.-])((ba|da|z|k)?sh|python[0-9.]*|perl)( +-[A-Za-z]+)* +["'']?(<\(|\$\()\s*(sudo )?(curl|wget)( |$)', 0) IS NOT NULL
                OR regex_match(r.parent_cmdline, '^[^ ]*\b((ba|da|z|k)?sh|python[0-9.]*|perl) +(/dev/fd/|/proc/self/fd/)[1-9][0-9]+( |$)', 0) IS NOT NULL)
           THEN 'is run by an interpreter through its parent''s <(...) or $(...)'
    END AS how
  FROM downloads r
)
SELECT r.*, t.how,
  printf('%s (%s) was executed by %s and %s: %s. Chain: %s', r.path, r.utility, r.username, t.how, r.cmdline, r.chain) || r.contacted_note AS message
FROM report r JOIN transfers t ON t.eid = r.eid
WHERE t.how IS NOT NULL;
