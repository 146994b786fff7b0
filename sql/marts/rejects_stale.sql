-- This manifest's reject records that its latest run no longer gives: the row was corrected or left the manifest,
-- or its video arrived or now fails for another reason. Keyed as in rejects_new.sql (one record per row and reason).
SELECT l.reject_id
FROM lake_rejects AS l
WHERE l.manifest_uri = $manifest_uri
    AND l.reject_id NOT IN (
        SELECT md5(row_id || '|' || final_reason) FROM row_outcomes WHERE final_reason IS NOT NULL
    )
