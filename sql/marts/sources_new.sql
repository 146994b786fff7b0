-- Every path that held an accepted video, so a later run knows it without probing it again.
SELECT p.source_uri, left(p.sha256, 16) AS video_id, p.sha256, p.bytes, $now AS first_seen_at
FROM probes AS p
ANTI JOIN lake_sources AS s ON s.source_uri = p.source_uri
WHERE p.reason IS NULL
