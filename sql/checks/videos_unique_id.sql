-- Every video appears once.
SELECT video_id, count(*) AS copies FROM videos GROUP BY video_id HAVING count(*) > 1
