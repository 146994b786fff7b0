-- Nothing planned is lost: every window of a finished shard became a clip or a reject with a reason,
-- and the shard's completion record agrees with what its files hold.
WITH planned AS (SELECT shard_id, clip_id FROM clip_plan WHERE shard_id IN (SELECT shard_id FROM clip_shards)),
outcomes AS (
    SELECT shard_id, clip_id FROM clips
    UNION ALL
    SELECT shard_id, clip_id FROM clip_rejects WHERE clip_id IS NOT NULL
)
SELECT p.shard_id, p.clip_id, 'planned window with no clip and no reject' AS problem
FROM planned AS p ANTI JOIN outcomes AS o ON o.shard_id = p.shard_id AND o.clip_id = p.clip_id
UNION ALL
SELECT s.shard_id, NULL, 'record disagrees with the shard files'
FROM clip_shards AS s
WHERE s.clips_written <> (SELECT count(*) FROM clips AS c WHERE c.shard_id = s.shard_id)
   OR s.rejects <> (SELECT count(*) FROM clip_rejects AS r WHERE r.shard_id = s.shard_id)
   OR s.clips_planned <> s.clips_written + s.rejects
