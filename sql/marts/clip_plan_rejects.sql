-- Captions with no window in a stage, recorded once with their reason (the planner skips them next time).
SELECT
    md5(caption_id || '|' || stage || '|' || reason) AS reject_id, stage, NULL::VARCHAR AS clip_id, caption_id,
    video_id, NULL::DOUBLE AS fps, NULL::DOUBLE AS start_s, reason, detail, NULL::VARCHAR AS shard_id, $now AS seen_at
FROM clip_windows
WHERE clip_id IS NULL
ORDER BY caption_id, stage
