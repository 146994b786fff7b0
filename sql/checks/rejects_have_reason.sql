-- Every reject says why.
SELECT reject_id FROM rejects WHERE reason IS NULL OR reason = '' OR detail IS NULL
