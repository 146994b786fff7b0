-- Every manifest row with its final fate: the staging reason, else its video's reason, else its span
-- checked against the probed duration. A missing span means the whole video; an end at most
-- $span_tolerance_s past the end (rounding in manifests) is clamped to it. Spans are kept to the millisecond.
WITH joined AS (
    SELECT
        m.*,
        o.video_id,
        round(o.duration_s, 3) AS duration_s,
        o.reason AS source_reason,
        o.detail AS source_detail,
        o.source_uri IS NOT NULL AS has_outcome
    FROM stg_manifest AS m
    LEFT JOIN source_outcomes AS o ON o.source_uri = m.source_uri AND m.reason IS NULL
),

spanned AS (
    SELECT
        *,
        round(coalesce(start_s, 0), 3) AS span_start,
        round(
            CASE
                WHEN end_s IS NULL THEN duration_s
                WHEN end_s > duration_s AND end_s <= duration_s + $span_tolerance_s THEN duration_s
                ELSE end_s
            END, 3) AS span_end
    FROM joined
)

SELECT
    row_number,
    row_id,
    raw,
    video_value,
    source_uri,
    caption_raw,
    caption,
    language,
    source_video_id,
    metadata,
    video_id,
    span_start AS start_s,
    span_end AS end_s,
    CASE
        WHEN reason IS NOT NULL THEN reason
        WHEN NOT has_outcome THEN 'probe_missing'
        WHEN source_reason IS NOT NULL THEN source_reason
        WHEN span_start >= duration_s OR span_end > duration_s OR span_end <= span_start THEN 'malformed_span'
    END AS final_reason,
    CASE
        WHEN reason IS NOT NULL THEN detail
        WHEN NOT has_outcome THEN 'no probe result for this source (a lake written by another version?)'
        WHEN source_reason IS NOT NULL THEN source_detail
        ELSE 'span ' || span_start || '..' || span_end || ' s is beyond the video (' || duration_s || ' s)'
    END AS final_detail,
    left(md5(video_id || '|' || caption || '|' || printf('%.3f', span_start) || '|' || printf('%.3f', span_end)), 16) AS caption_id,
    CASE WHEN md5_number(video_id) % 100 < $val_percent THEN 'val' ELSE 'train' END AS split
FROM spanned
