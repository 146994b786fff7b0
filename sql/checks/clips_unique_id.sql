-- No clip twice among finished shards (a redone shard replaces its files, it never adds a second copy).
SELECT clip_id, count(*) AS copies
FROM clips
GROUP BY clip_id
HAVING count(*) > 1
