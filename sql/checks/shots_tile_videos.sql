-- A video's shots follow each other without gap or overlap from 0 to its end, numbered from 0.
WITH ordered AS (
    SELECT *, lag(end_s) OVER (PARTITION BY video_id ORDER BY shot_index) AS previous_end,
           row_number() OVER (PARTITION BY video_id ORDER BY shot_index) - 1 AS expected_index
    FROM shots
)

SELECT o.video_id, o.shot_index, o.start_s, o.end_s, o.previous_end
FROM ordered AS o
JOIN videos AS v USING (video_id)
WHERE o.shot_index <> o.expected_index
   OR o.end_s <= o.start_s
   OR (o.previous_end IS NULL AND o.start_s <> 0)
   OR (o.previous_end IS NOT NULL AND abs(o.start_s - o.previous_end) > 1e-6)
   OR o.end_s > v.duration_s + 1e-6
