-- description: Cloud instance-metadata access (169.254.169.254, fd00:ec2::254, 100.100.100.200, 169.254.170.2, metadata.google.internal; hex, decimal and IPv4-mapped forms included) from a container, or on the host by a process that is not a cloud agent: how stolen instance credentials begin
-- interval: 60
-- platform: linux
-- technique: T1552.005
-- logging: differential_ignore_removals
-- severity: high
WITH {{common}},
-- ip_args holds addresses normalised (0xa9fea9fe, 2852039166 and ::ffff:a9fe:a9fe are 169.254.169.254).
metadata AS (
  SELECT eid FROM recent
  WHERE ',' || ip_args || ',' LIKE '%,169.254.169.254,%' OR ',' || ip_args || ',' LIKE '%,169.254.170.2,%'
     OR ',' || ip_args || ',' LIKE '%,100.100.100.200,%' OR ',' || lower(ip_args) || ',' LIKE '%,fd00:ec2::254,%'
     OR lower(cmdline) LIKE '%metadata.google.internal%' OR lower(cmdline) LIKE '%metadata.goog/%'
),
-- The cloud's own agents read the metadata all day: on the host, they are not evidence.
agents AS (
  SELECT eid FROM ancestors_named
  WHERE name IN ('google_guest_agent', 'google_metadata_script_runner', 'google_oslogin_nss', 'amazon-ssm-agent',
                 'ssm-agent-worker', 'ecs-agent', 'amazon-ecs-init', 'cloud-init', 'waagent', 'aliyun-service',
                 'AliYunDun', 'nova-agent', 'oci-wlp')
     OR cmdline LIKE '%/usr/bin/cloud-init %' OR cmdline LIKE 'cloud-init %'
)
SELECT r.*,
  printf('%s (%s) was executed by %s%s to reach the cloud instance metadata service (instance credentials): %s',
         r.path, r.utility, r.username,
         CASE WHEN r.container_id <> '' THEN ' in container ' || substr(r.container_id, 1, 12) ELSE '' END, r.chain) || r.contacted_note AS message
FROM report r JOIN metadata m ON m.eid = r.eid
WHERE (r.container_id <> '' OR r.eid NOT IN (SELECT eid FROM agents))
  -- ip route get 169.254.169.254 asks the route, not the service.
  AND r.category <> 'discovery';
