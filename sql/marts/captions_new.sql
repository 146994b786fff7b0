-- Accepted rows not yet in the lake; identical (video, caption, span) rows become one caption row.
WITH accepted AS (
    SELECT *
    FROM row_outcomes
    WHERE final_reason IS NULL
    QUALIFY row_number() OVER (PARTITION BY caption_id ORDER BY row_number) = 1
)

SELECT
    a.caption_id, a.video_id, a.source_uri, a.caption, a.language, a.start_s, a.end_s, a.split,
    a.source_video_id, a.metadata, $manifest_uri AS manifest_uri, $now AS ingested_at
FROM accepted AS a
ANTI JOIN lake_captions AS c ON c.caption_id = a.caption_id
