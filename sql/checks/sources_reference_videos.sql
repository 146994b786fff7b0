-- Every known source path maps to a video the lake holds.
SELECT s.source_uri, s.video_id FROM sources AS s ANTI JOIN videos AS v ON v.video_id = s.video_id
