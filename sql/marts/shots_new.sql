-- The shots of the videos this run adds (videos_new, made just before): one row per shot, numbered in time order.
-- Videos probed without a scan have none; split then plans over their whole caption spans.
WITH first_probe AS (
    SELECT left(sha256, 16) AS video_id, shots
    FROM probes
    WHERE reason IS NULL AND shots IS NOT NULL
    QUALIFY row_number() OVER (PARTITION BY sha256 ORDER BY source_uri) = 1
)

SELECT
    f.video_id, r.i::INTEGER AS shot_index, f.shots[r.i + 1].start_s AS start_s, f.shots[r.i + 1].end_s AS end_s,
    f.shots[r.i + 1].detector AS detector, f.shots[r.i + 1].score AS score, f.shots[r.i + 1].motion AS motion
FROM first_probe AS f
SEMI JOIN videos_new AS v ON v.video_id = f.video_id
CROSS JOIN LATERAL (SELECT unnest(range(len(f.shots))) AS i) AS r
ORDER BY f.video_id, shot_index
