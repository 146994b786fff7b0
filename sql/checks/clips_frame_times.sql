-- Five frames in time order, each within one window frame interval of its target instant
-- (nearest-frame sampling moves a frame by about half a source frame, far less than 1/fps).
WITH offsets AS (
    SELECT clip_id, fps, start_s, frame_times,
           list_transform(range(5), lambda k: frame_times[k + 1] - (start_s + k / fps)) AS off
    FROM clips
)
SELECT clip_id, fps, start_s, frame_times
FROM offsets
WHERE len(frame_times) <> 5
   OR list_sort(frame_times) <> frame_times
   OR list_min(off) < -1.0 / fps
   OR list_max(off) > 1.0 / fps
