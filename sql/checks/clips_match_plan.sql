-- Every clip is a planned window, in the shard, stage and place the plan gave it.
SELECT c.clip_id, c.shard_id, c.stage, c.fps, c.start_s
FROM clips AS c
LEFT JOIN clip_plan AS p ON p.clip_id = c.clip_id AND p.shard_id = c.shard_id
WHERE p.clip_id IS NULL
   OR p.stage <> c.stage OR p.fps <> c.fps OR p.start_s <> c.start_s
   OR p.video_id <> c.video_id OR p.caption_id <> c.caption_id
