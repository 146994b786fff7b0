-- Planned windows that a shard failed to decode (a reject with a shard) and that no finished shard has made
-- since, as clip_windows rows: `split --retry-rejects` plans them again into new shards, e.g. after a missing
-- file came back or the decoder timeout was raised. Their clip_ids stay the same.
WITH failed AS (
    SELECT DISTINCT r.clip_id
    FROM clip_rejects AS r
    WHERE r.shard_id IS NOT NULL AND r.stage IN (SELECT unnest($stages))
),

retry AS (
    SELECT f.clip_id FROM failed AS f ANTI JOIN made AS m ON m.clip_id = f.clip_id
)

SELECT DISTINCT ON (p.clip_id)
    p.clip_id, p.stage, p.video_id, p.caption_id, p.caption, p.language, p.split, p.fps, p.fps_token, p.start_s,
    NULL::VARCHAR AS reason, NULL::VARCHAR AS detail
FROM clip_plan AS p
JOIN retry AS r USING (clip_id)
ORDER BY p.clip_id, p.planned_at DESC
