-- Rows that point at a subtitle file instead of carrying a caption: they are expanded into one row per cue.
SELECT row_number, raw, raw ->> 'subtitles' AS subtitles
FROM raw_rows
WHERE load_reason IS NULL AND nullif(trim(raw ->> 'subtitles'), '') IS NOT NULL
ORDER BY row_number
