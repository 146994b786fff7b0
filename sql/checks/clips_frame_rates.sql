-- Frame rates come from the fixed set, stage 2 only at the interpolation rates, each with its own token.
SELECT clip_id, stage, fps, fps_token
FROM clips
WHERE fps NOT IN (0.25, 0.5, 1, 2, 4, 8)
   OR (stage = 2 AND fps NOT IN (2, 4, 8))
   OR stage NOT IN (1, 2)
   OR fps_token <> '<fps_' || printf('%g', fps) || '>'
