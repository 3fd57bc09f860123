"""From kernel record to row: enrichment (paths, ancestry, containers, content, IP arguments) and the sensor that feeds the store."""
