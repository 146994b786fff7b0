-- Rows of this manifest by outcome, for the run summary: 'accepted' or the reject reason.
SELECT coalesce(final_reason, 'accepted') AS outcome, count(*) AS rows
FROM row_outcomes
GROUP BY outcome
ORDER BY outcome = 'accepted' DESC, rows DESC, outcome
