-- description: Network utility executed from a suspicious location on a host: the utility or any ancestor runs from a writable directory, a memfd or fd, a relative path or a deleted file (seed: Datadog "Network utility executed")
-- interval: 60
-- platform: linux
-- technique: T1105
-- logging: differential_ignore_removals
-- severity: high
WITH {{common}}
SELECT r.*, s.reason, s.suspicious_path,
  printf('The process %s (%s) was executed by %s, launched from %s (%s), potentially to download additional tools, open a backdoor or exfiltrate data: %s',
         r.path, r.utility, r.username, s.suspicious_path, s.reason, r.chain) || r.contacted_note AS message
FROM report r JOIN suspicious s ON s.eid = r.eid
WHERE r.container_id = ''
  AND (r.eid NOT IN (SELECT eid FROM local_only) OR s.reason IN ('writable directory', 'script in a writable directory'))
  -- Discovery tools count from a writable directory or a memfd only: a daemon upgraded in
  -- place (its file shows as deleted) runs ip all day.
  AND (r.category <> 'discovery' OR s.reason IN ('writable directory', 'script in a writable directory', 'fd or memfd'))
  -- Tools doing their own work (pip from git in a venv, Ansible's become, a checkout's health check).
  AND r.eid NOT IN (SELECT eid FROM benign_tools);
