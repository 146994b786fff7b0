-- One row per manifest row: typed, cleaned, resolved, and with the first reason (if any) it cannot be used
-- before its video is even looked at. Inputs: raw_rows (loaders), resolved (pipeline.manifest.resolve_source).
-- Columns are read through JSON paths ($video_key = $."<name>") so any column name is a plain key.
WITH fields AS (
    SELECT
        r.row_number,
        md5($manifest_uri || '|' || r.raw) AS row_id,
        scrub_urls(json(r.raw)::VARCHAR) AS raw,  -- no password or query of a URL reaches the lake (json(): '\/' is '/')
        r.load_reason,
        r.load_detail,
        r.raw ->> $video_key AS video_value,
        r.raw ->> $caption_key AS caption_raw,
        nullif(trim(r.raw ->> 'start_s'), '') AS start_text,
        nullif(trim(r.raw ->> 'end_s'), '') AS end_text,
        nullif(trim(r.raw ->> 'video_id'), '') AS source_video_id,
        -- every other column is kept as metadata (a JSON merge patch with nulls deletes the known keys), URLs scrubbed
        scrub_urls(json_merge_patch(r.raw, json_object($video_col, NULL, $caption_col, NULL, 'start_s', NULL, 'end_s', NULL, 'video_id', NULL))::VARCHAR) AS metadata
    FROM raw_rows AS r
),

typed AS (
    SELECT
        f.*,
        v.source_uri,
        v.fetch_uri,
        v.resolve_reason,
        v.resolve_detail,
        clean_caption(f.caption_raw) AS caption,
        span_seconds(f.start_text) AS start_s,
        span_seconds(f.end_text) AS end_s
    FROM fields AS f
    LEFT JOIN resolved AS v ON v.video_value = f.video_value
),

judged AS (
    SELECT
        *,
        length(caption) AS caption_chars,
        CASE
            WHEN load_reason IS NOT NULL THEN load_reason
            WHEN video_value IS NULL OR trim(video_value) = '' THEN 'missing_video'
            WHEN resolve_reason IS NOT NULL THEN resolve_reason
            WHEN caption IS NULL OR caption = '' THEN 'empty_caption'
            WHEN length(caption) < $min_caption_chars THEN 'caption_too_short'
            WHEN length(caption) > $max_caption_chars THEN 'caption_too_long'
            WHEN (start_text IS NOT NULL AND (start_s IS NULL OR NOT isfinite(start_s) OR start_s < 0))
                OR (end_text IS NOT NULL AND (end_s IS NULL OR NOT isfinite(end_s) OR end_s <= 0))
                OR end_s <= start_s THEN 'malformed_span'
        END AS reason
    FROM typed
)

SELECT
    row_number,
    row_id,
    raw,
    video_value,
    source_uri,
    fetch_uri,
    caption_raw,
    caption,
    language_tag(caption) AS language,
    start_s,
    end_s,
    source_video_id,
    metadata,
    reason,
    CASE reason
        WHEN load_reason THEN load_detail
        WHEN 'missing_video' THEN coalesce(resolve_detail, 'the row names no video')
        WHEN resolve_reason THEN resolve_detail
        WHEN 'empty_caption' THEN 'the caption is empty after cleaning'
        WHEN 'caption_too_short' THEN caption_chars || ' characters < ' || $min_caption_chars
        WHEN 'caption_too_long' THEN caption_chars || ' characters > ' || $max_caption_chars
        WHEN 'malformed_span' THEN 'start_s=' || coalesce(start_text, '∅') || ', end_s=' || coalesce(end_text, '∅')
            || ': spans need 0 <= start_s < end_s, in seconds or [hh:]mm:ss'
    END AS detail
FROM judged
