-- Frame rates come from the fixed set ($rates), stage 2 only at the interpolation rates ($stage2_rates), each with
-- its own token ($fps_tokens[i] is the token of $rates[i]); the values are cogflow.pipeline.contract's.
SELECT clip_id, stage, fps, fps_token
FROM clips
WHERE NOT list_contains($rates, fps)
   OR (stage = 2 AND NOT list_contains($stage2_rates, fps))
   OR NOT list_contains($clip_stages, stage)
   OR fps_token IS DISTINCT FROM $fps_tokens[list_position($rates, fps)]
