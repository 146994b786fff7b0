-- A clip is encoded at most once per frame tokenizer version.
SELECT frame_tokenizer_version, clip_id, count(*) AS copies
FROM tokens
GROUP BY frame_tokenizer_version, clip_id
HAVING count(*) > 1
