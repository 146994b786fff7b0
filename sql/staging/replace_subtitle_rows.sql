-- Swap each subtitle row for its cues (or for itself with a load_reason when the file was unusable).
DELETE FROM raw_rows WHERE row_number IN (SELECT row_number FROM subtitle_rows);
INSERT INTO raw_rows SELECT row_number, raw, load_reason, load_detail FROM subtitle_rows;
