-- The counts behind the run summary that the written tables alone cannot tell.
SELECT
    count(*) AS manifest_rows,
    count(*) FILTER (WHERE final_reason IS NULL) AS accepted_rows,
    count(DISTINCT caption_id) FILTER (WHERE final_reason IS NULL) AS distinct_captions,
    (SELECT count(DISTINCT source_uri) FROM stg_manifest WHERE reason IS NULL) AS usable_sources
FROM row_outcomes
