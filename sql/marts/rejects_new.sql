-- Rejected rows not yet recorded: one record per (raw row, reason), so a re-run adds nothing.
WITH rejected AS (
    SELECT md5(row_id || '|' || final_reason) AS reject_id, *
    FROM row_outcomes
    WHERE final_reason IS NOT NULL
    QUALIFY row_number() OVER (PARTITION BY row_id, final_reason ORDER BY row_number) = 1
)

SELECT
    r.reject_id, r.row_id, $manifest_uri AS manifest_uri, r.row_number, coalesce(r.source_uri, scrub_urls(r.video_value)) AS source_uri,
    r.caption_raw AS caption, r.raw, r.final_reason AS reason, r.final_detail AS detail, $now AS seen_at
FROM rejected AS r
ANTI JOIN lake_rejects AS l ON l.reject_id = r.reject_id
