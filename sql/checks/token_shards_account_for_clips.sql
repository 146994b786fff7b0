-- Every encoded clip file holds exactly the clips of its split shard and stage, made with the tokenizer
-- versions its completion record names.
WITH encoded AS (
    SELECT frame_tokenizer_version, stage, shard_id, count(*) AS clips,
           max(text_tokenizer_version) AS text_max, min(text_tokenizer_version) AS text_min
    FROM tokens
    GROUP BY frame_tokenizer_version, stage, shard_id
),
source AS (SELECT stage, shard_id, count(*) AS clips FROM clips GROUP BY stage, shard_id)
SELECT r.frame_tokenizer_version, r.stage, r.shard_id, 'token rows differ from the clips of the shard' AS problem
FROM token_shards AS r
LEFT JOIN encoded AS e USING (frame_tokenizer_version, stage, shard_id)
LEFT JOIN source AS s USING (stage, shard_id)
WHERE coalesce(e.clips, 0) <> r.clips OR coalesce(s.clips, 0) <> r.clips
UNION ALL
SELECT r.frame_tokenizer_version, r.stage, r.shard_id, 'token rows made by another text tokenizer than the record names'
FROM token_shards AS r
JOIN encoded AS e USING (frame_tokenizer_version, stage, shard_id)
WHERE e.text_min IS DISTINCT FROM r.text_tokenizer_version OR e.text_max IS DISTINCT FROM r.text_tokenizer_version
