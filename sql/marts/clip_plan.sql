-- The new windows grouped into shards: all windows of a video (both stages) in one shard, so each video is
-- decoded once. Videos are dealt in video_id order into n shards of equal work, a video's work being its share
-- of the pixels to decode (up to its last window's end) plus its share of the clips to write, and
-- n = enough for $shard_bytes per shard, for $shard_videos videos per shard, and for $min_shards shards.
-- A shard is named by the hash of its clip ids (and of $salt, which tells a retry of the same windows apart):
-- the same windows make the same shard.
WITH per_video AS (
    SELECT
        w.video_id,
        count(*) AS clips,
        v.width * v.height * (v.frame_count / v.duration_s) * max(w.start_s + 4.0 / w.fps) AS pixels
    FROM clip_windows AS w
    JOIN videos AS v USING (video_id)
    WHERE w.clip_id IS NOT NULL
    GROUP BY w.video_id, v.width, v.height, v.frame_count, v.duration_s
),

weighted AS (
    SELECT
        video_id,
        clips / sum(clips) OVER () + pixels / sum(pixels) OVER () AS work,  -- all of it sums to 2
        greatest(
            ceil(sum(clips) OVER () * $clip_bytes / $shard_bytes),
            ceil(count(*) OVER () / $shard_videos),
            least(count(*) OVER (), $min_shards)
        ) AS n
    FROM per_video
),

assigned AS (
    -- the shard under the video's midpoint on the work axis, so shards get equal work
    SELECT video_id, least(floor((sum(work) OVER (ORDER BY video_id) - work / 2) * n / 2.0), n - 1)::BIGINT AS shard_index
    FROM weighted
),

other_sources AS (
    -- the video's other known paths, tried in turn when its first path is gone
    SELECT s.video_id, list(s.source_uri ORDER BY s.source_uri) AS uris
    FROM sources AS s
    JOIN videos AS v ON v.video_id = s.video_id AND s.source_uri <> v.source_uri
    GROUP BY s.video_id
),

named AS (
    SELECT
        left(sha256($salt || string_agg(w.clip_id, ',' ORDER BY w.clip_id) OVER (PARTITION BY a.shard_index)), 16) AS shard_id,
        w.*
    FROM clip_windows AS w
    JOIN assigned AS a USING (video_id)
    WHERE w.clip_id IS NOT NULL
)

SELECT
    n.shard_id, n.stage, n.clip_id, n.video_id, n.caption_id, n.caption, n.language, n.split, n.fps, n.fps_token,
    n.start_s, list_prepend(v.source_uri, coalesce(o.uris, [])) AS source_uris, v.sha256, v.bytes,
    CASE WHEN v.crop_left IS NOT NULL THEN [v.crop_left, v.crop_top, v.crop_right, v.crop_bottom] END AS crop,
    $now AS planned_at
FROM named AS n
JOIN videos AS v USING (video_id)
LEFT JOIN other_sources AS o USING (video_id)
ORDER BY n.shard_id, n.video_id, n.stage, n.start_s, n.fps, n.clip_id
