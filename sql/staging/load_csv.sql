-- A CSV (or TSV: the delimiter is sniffed) manifest. Every column is read as text; typing happens in
-- stg_manifest. store_rejects keeps malformed lines in reject_errors (see load_csv_malformed) instead of failing.
INSERT INTO raw_rows
SELECT row_number() OVER () AS row_number, to_json(t)::VARCHAR AS raw, NULL AS load_reason, NULL AS load_detail
FROM read_csv($path, all_varchar = true, header = true, store_rejects = true) AS t
