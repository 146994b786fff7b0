-- How many readable rows carry the video and caption columns, and which columns the manifest has at all:
-- a manifest without them is a usage error (wrong --video-col?), reported before anything is written.
SELECT
    count(*) AS readable_rows,
    count(*) FILTER (WHERE (raw -> $video_key) IS NOT NULL) AS with_video,
    count(*) FILTER (WHERE (raw -> $caption_key) IS NOT NULL) AS with_caption,
    (SELECT list(DISTINCT k ORDER BY k)[1:30] FROM (SELECT unnest(json_keys(raw)) AS k FROM raw_rows WHERE load_reason IS NULL)) AS columns
FROM raw_rows
WHERE load_reason IS NULL
