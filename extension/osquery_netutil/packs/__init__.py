"""The query packs: reading and checking detections, the osquery and Fleet files, scheduling, osqueryd's log lines."""
