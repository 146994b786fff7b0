-- What each wanted source is: a video (id and duration) or a reject reason. This run's probes win over what
-- the lake knows (sources/ and videos/), which wins over cached rejects.
WITH candidates AS (
    SELECT source_uri, CASE WHEN reason IS NULL THEN left(sha256, 16) END AS video_id, duration_s, reason, detail, 1 AS priority
    FROM probes
    UNION ALL
    SELECT s.source_uri, s.video_id, v.duration_s, NULL, NULL, 2
    FROM lake_sources AS s
    JOIN lake_videos AS v ON v.video_id = s.video_id
    UNION ALL
    SELECT source_uri, NULL, NULL, reason, detail, 3
    FROM lake_rejects
    WHERE list_contains($cached_reasons, reason)
)

SELECT source_uri, video_id, duration_s, reason, detail
FROM candidates
WHERE source_uri IN (SELECT source_uri FROM stg_manifest WHERE reason IS NULL)
QUALIFY row_number() OVER (PARTITION BY source_uri ORDER BY priority, detail) = 1
