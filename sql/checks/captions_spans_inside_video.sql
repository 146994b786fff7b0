-- Every span lies inside its video (to the millisecond the spans are rounded to).
SELECT c.caption_id, c.start_s, c.end_s, v.duration_s
FROM captions AS c
JOIN videos AS v ON v.video_id = c.video_id
WHERE c.start_s < 0 OR c.end_s <= c.start_s OR c.end_s > v.duration_s + 0.001
