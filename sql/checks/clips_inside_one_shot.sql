-- No clip spans a shot boundary: its frames lie inside one shot of its video (videos without shots: no check).
SELECT c.clip_id, c.video_id, c.start_s, c.fps, h.shot_index, h.start_s AS shot_start, h.end_s AS shot_end
FROM clips AS c
JOIN shots AS h ON h.video_id = c.video_id
WHERE h.start_s > c.start_s + 0.001 AND h.start_s < c.start_s + 4.0 / c.fps  -- a shot begins inside the window
