-- No caption is empty after cleaning, counting invisible characters (format, control, any white space) as empty.
SELECT caption_id, caption FROM captions WHERE caption IS NULL OR regexp_replace(caption, '[\s\p{Z}\p{Cc}\p{Cf}]+', '', 'g') = ''
