-- Videos probed this run that the lake does not hold yet. Identical bytes under several paths are one video:
-- video_id is the content hash, and the first path (alphabetically) is its source_uri.
WITH accepted AS (
    SELECT left(sha256, 16) AS video_id, *
    FROM probes
    WHERE reason IS NULL
    QUALIFY row_number() OVER (PARTITION BY sha256 ORDER BY source_uri) = 1
)

SELECT
    a.video_id, a.source_uri, a.sha256, a.bytes, a.container, a.codec, a.width, a.height, a.fps,
    a.duration_s, a.frame_count, a.rotation, a.header_duration_s,
    a.crop_left, a.crop_top, a.crop_right, a.crop_bottom, a.motion, a.brightness, a.sharpness, a.shot_count,
    a.fingerprint, a.colour_layout, $now AS ingested_at
FROM accepted AS a
ANTI JOIN lake_videos AS v ON v.video_id = a.video_id
