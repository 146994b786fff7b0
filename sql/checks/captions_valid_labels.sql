-- Split and language take only their documented values.
SELECT caption_id, split, language
FROM captions
WHERE split NOT IN ('train', 'val') OR split IS NULL OR language NOT IN ('zh', 'en', 'mixed', 'other') OR language IS NULL
