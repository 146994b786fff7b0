-- No caption points at a video the lake does not hold.
SELECT c.caption_id, c.video_id FROM captions AS c ANTI JOIN videos AS v ON v.video_id = c.video_id
