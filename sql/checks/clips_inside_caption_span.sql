-- Every window lies inside its caption's span, with the split of its caption.
SELECT c.clip_id, c.start_s, c.fps, k.start_s AS span_start, k.end_s AS span_end
FROM clips AS c
JOIN captions AS k ON k.caption_id = c.caption_id
WHERE c.start_s < k.start_s - 0.001
   OR c.start_s + 4.0 / c.fps >= k.end_s
   OR c.split <> k.split
