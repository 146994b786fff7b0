-- Every clip reject says why, and a planning reject names no clip.
SELECT reject_id, reason, detail
FROM clip_rejects
WHERE reason IS NULL OR reason = '' OR detail IS NULL OR detail = ''
   OR (shard_id IS NULL) <> (clip_id IS NULL)
