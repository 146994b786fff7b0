-- Every 5-frame window of every caption not yet planned for a requested stage (README: Split).
-- A window at `fps` has its 5 frames at start_s + k/fps (k = 0..4), so it spans 4/fps seconds; it fits a
-- caption span [s, e) when its last frame falls strictly before e. Rates above the source's own frame rate
-- are never used: they would repeat frames. The source's rate is the lower of the rate its packets show
-- (videos.fps) and what its frames hold (frame_count / duration): a stream with pauses has fewer frames.
--   stage 1: the lowest rate in $rates that fits (CogVideo: one clip covers the whole action);
--   stage 2: every rate in $stage2_rates that fits (the rates of the three interpolation rounds).
-- A span's windows start $window_step frame intervals apart or more.
--   5 (the default, no two share a frame): as many as fit end to end, their centres evenly spread at
--     s + D(2i+1)/(2n);
--   fewer (overlapping windows, more clips from each span): the slack (span - 4/fps: how far the first frame may
--     move with the last still inside) is cut into n parts at least $window_step intervals long and each window
--     starts in the middle of its part, so none starts on the span's very edge, where a source at exactly the
--     window's rate may hold no frame near enough the last instant.
-- Capped per span (and per rate in stage 2).
-- A caption with no window keeps one row with fps NULL and the reason, for clip_plan_rejects.
WITH todo AS (
    SELECT c.caption_id, c.video_id, c.caption, c.language, c.split, c.start_s AS span_start,
           c.end_s - c.start_s AS span,
           least(v.fps, v.frame_count / v.duration_s) AS source_fps, s.stage
    FROM captions AS c
    JOIN videos AS v ON v.video_id = c.video_id
    CROSS JOIN (SELECT unnest($stages) AS stage) AS s
    ANTI JOIN planned AS p ON p.caption_id = c.caption_id AND p.stage = s.stage
),

allowed AS (
    -- the rates each caption's stage may use on its source, whatever the span
    SELECT t.*, r.fps
    FROM todo AS t
    CROSS JOIN (SELECT unnest($rates) AS fps) AS r
    WHERE r.fps <= t.source_fps * (1 + 1e-6)
      AND (t.stage = 1 OR list_contains($stage2_rates, r.fps))
),

fitting AS (
    SELECT *,
           CASE WHEN $window_step >= 5  -- how many fit end to end strictly inside the span
                THEN floor((span - 4.0 / fps) * fps / $window_step - 1e-9)::BIGINT + 1
                -- how many parts of the slack are $window_step frame intervals long, at least one
                ELSE greatest(1, floor((span - 4.0 / fps) * fps / $window_step + 1e-9)::BIGINT) END AS n_fit
    FROM allowed
    WHERE 4.0 / fps < span - 1e-9
),

chosen AS (
    SELECT *, least(n_fit, CASE WHEN stage = 1 THEN $stage1_windows ELSE $stage2_windows END) AS n
    FROM fitting
    QUALIFY stage = 2 OR row_number() OVER (PARTITION BY caption_id, stage ORDER BY fps) = 1
),

windows AS (
    -- rounded down to the millisecond: never later, so the last frame stays strictly inside the span
    SELECT c.*, floor((c.span_start + CASE WHEN $window_step >= 5 THEN c.span * (2 * i + 1) / (2.0 * c.n) - 2.0 / c.fps
                                           ELSE (c.span - 4.0 / c.fps) * (2 * i + 1) / (2.0 * c.n) END) * 1000 + 1e-6) / 1000 AS start_s
    FROM chosen AS c
    CROSS JOIN LATERAL (SELECT unnest(range(c.n)) AS i) AS w
)

SELECT
    left(sha256(caption_id || '|' || stage || '|' || printf('%g', fps) || '|' || printf('%.3f', start_s)), 16) AS clip_id,
    stage::TINYINT AS stage, video_id, caption_id, caption, language, split, fps,
    $fps_tokens[list_position($rates, fps)] AS fps_token, start_s, NULL::VARCHAR AS reason, NULL::VARCHAR AS detail
FROM windows

UNION ALL

SELECT
    NULL, t.stage::TINYINT, t.video_id, t.caption_id, t.caption, t.language, t.split, NULL, NULL, NULL,
    CASE WHEN a.fastest IS NULL THEN 'source_fps_too_low' ELSE 'span_too_short' END,
    CASE
        WHEN a.fastest IS NULL
            THEN printf('the source has %.3f fps; stage %d needs a rate at or below it among %s',
                        t.source_fps, t.stage, CASE WHEN t.stage = 1 THEN $rates ELSE $stage2_rates END::VARCHAR)
        ELSE printf('a %.3f s span holds no 5-frame window (the shortest this source allows, at %g fps, needs more than %g s)',
                    t.span, a.fastest, 4.0 / a.fastest)
    END
FROM todo AS t
LEFT JOIN (SELECT caption_id, stage, max(fps) AS fastest FROM allowed GROUP BY ALL) AS a
    ON a.caption_id = t.caption_id AND a.stage = t.stage
ANTI JOIN fitting AS f ON f.caption_id = t.caption_id AND f.stage = t.stage
