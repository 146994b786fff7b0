-- No caption is empty after cleaning.
SELECT caption_id, caption FROM captions WHERE caption IS NULL OR trim(caption) = ''
