-- Five frames in time order, each within half a window interval of its target instant (split rejects a
-- window whose source has no frame that close, as in a pause of a variable-rate stream), 1 ms of rounding.
WITH offsets AS (
    SELECT clip_id, fps, start_s, frame_times,
           list_transform(range(5), lambda k: abs(frame_times[k + 1] - (start_s + k / fps))) AS off
    FROM clips
)
SELECT clip_id, fps, start_s, frame_times
FROM offsets
WHERE len(frame_times) <> 5
   OR list_sort(frame_times) <> frame_times
   OR list_max(off) > 0.5 / fps + 0.002
