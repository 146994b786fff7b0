-- Every caption row appears once.
SELECT caption_id, count(*) AS copies FROM captions GROUP BY caption_id HAVING count(*) > 1
