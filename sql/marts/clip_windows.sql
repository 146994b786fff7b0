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
-- No window spans two shots: a span is cut at the video's shot boundaries (shots/, from ingest's scan) into
-- pieces, and windows are placed inside pieces as above ("span" below is a piece; a video without shots has one
-- piece per span, the span itself). Stage 1 takes the lowest rate that fits a piece (the longest such piece).
-- Capped per span (and per rate in stage 2), spread over its pieces.
-- A caption with no window keeps one row with fps NULL and the reason, for clip_plan_rejects.
WITH todo AS (
    SELECT c.caption_id, c.video_id, c.caption, c.language, c.split, c.start_s AS caption_start,
           c.end_s AS caption_end, least(v.fps, v.frame_count / v.duration_s) AS source_fps, s.stage
    FROM captions AS c
    JOIN videos AS v ON v.video_id = c.video_id
    CROSS JOIN (SELECT unnest($stages) AS stage) AS s
    ANTI JOIN planned AS p ON p.caption_id = c.caption_id AND p.stage = s.stage
),

shot_spans AS (
    -- a shot less half a frame at each cut, so that the frame nearest an instant inside it is the shot's own
    SELECT t.*,
           greatest(t.caption_start, h.start_s + CASE WHEN h.shot_index > 0 THEN 0.5 / t.source_fps ELSE 0 END) AS span_start,
           least(t.caption_end, h.end_s - CASE WHEN h.last THEN 0 ELSE 0.5 / t.source_fps END) AS span_end
    FROM todo AS t
    JOIN (SELECT *, shot_index = max(shot_index) OVER (PARTITION BY video_id) AS last FROM shots) AS h
        ON h.video_id = t.video_id
),

pieces AS (
    SELECT * EXCLUDE (span_end), span_end - span_start AS span FROM shot_spans WHERE span_end > span_start
    UNION ALL
    SELECT t.*, t.caption_start AS span_start, t.caption_end - t.caption_start AS span
    FROM todo AS t
    ANTI JOIN shots AS h ON h.video_id = t.video_id
),

allowed AS (
    -- the rates each piece may use on its source, whatever its length
    SELECT t.*, r.fps
    FROM pieces AS t
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
    QUALIFY stage = 2 OR row_number() OVER (PARTITION BY caption_id, stage ORDER BY fps, span DESC, span_start) = 1
),

windows AS (
    -- rounded down to the millisecond: never later, so the last frame stays strictly inside the span
    SELECT c.*, floor((c.span_start + CASE WHEN $window_step >= 5 THEN c.span * (2 * i + 1) / (2.0 * c.n) - 2.0 / c.fps
                                           ELSE (c.span - 4.0 / c.fps) * (2 * i + 1) / (2.0 * c.n) END) * 1000 + 1e-6) / 1000 AS start_s
    FROM chosen AS c
    CROSS JOIN LATERAL (SELECT unnest(range(c.n)) AS i) AS w
    -- the caps hold per caption span (and rate), however many shots cut it: first every piece's first window,
    -- the longest pieces first, then their second ones...
    QUALIFY row_number() OVER (PARTITION BY c.caption_id, c.stage, c.fps ORDER BY w.i, c.span DESC, c.span_start)
            <= CASE WHEN c.stage = 1 THEN $stage1_windows ELSE $stage2_windows END
)

SELECT
    left(sha256(caption_id || '|' || stage || '|' || printf('%g', fps) || '|' || printf('%.3f', start_s)), 16) AS clip_id,
    stage::TINYINT AS stage, video_id, caption_id, caption, language, split, fps,
    $fps_tokens[list_position($rates, fps)] AS fps_token, start_s, NULL::VARCHAR AS reason, NULL::VARCHAR AS detail
FROM windows

UNION ALL

SELECT
    NULL, t.stage::TINYINT, t.video_id, t.caption_id, t.caption, t.language, t.split, NULL, NULL, NULL,
    CASE WHEN a.fastest IS NULL THEN 'source_fps_too_low'
         WHEN a.pieces > 1 AND 4.0 / a.fastest < t.caption_end - t.caption_start - 1e-9 THEN 'no_window_in_one_shot'
         ELSE 'span_too_short' END,
    CASE
        WHEN a.fastest IS NULL
            THEN printf('the source has %.3f fps; stage %d needs a rate at or below it among %s',
                        t.source_fps, t.stage, CASE WHEN t.stage = 1 THEN $rates ELSE $stage2_rates END::VARCHAR)
        WHEN a.pieces > 1 AND 4.0 / a.fastest < t.caption_end - t.caption_start - 1e-9
            THEN printf('the %.3f s span crosses %d shot boundaries and its longest part inside one shot, %.3f s, holds no 5-frame window (at %g fps one needs more than %g s)',
                        t.caption_end - t.caption_start, a.pieces - 1, a.longest, a.fastest, 4.0 / a.fastest)
        ELSE printf('a %.3f s span holds no 5-frame window (the shortest this source allows, at %g fps, needs more than %g s)',
                    t.caption_end - t.caption_start, a.fastest, 4.0 / a.fastest)
    END
FROM todo AS t
LEFT JOIN (
    SELECT caption_id, stage, max(fps) AS fastest, max(span) AS longest, count(DISTINCT span_start) AS pieces
    FROM allowed GROUP BY ALL
) AS a ON a.caption_id = t.caption_id AND a.stage = t.stage
ANTI JOIN fitting AS f ON f.caption_id = t.caption_id AND f.stage = t.stage
