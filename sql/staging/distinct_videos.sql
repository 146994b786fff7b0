-- The distinct video values of the readable rows: each is resolved (and checked against the roots) once.
SELECT DISTINCT raw ->> $video_key AS video_value
FROM raw_rows
WHERE load_reason IS NULL AND (raw ->> $video_key) IS NOT NULL
