-- A CSV (or TSV) manifest. The dialect is fixed, not sniffed: a guess from a sample can switch quoting off for
-- the whole file because of one stray quote. pipeline.manifest reads the header and delimiter itself and
-- passes $columns (every column as text; typing happens in stg_manifest). store_rejects keeps malformed
-- lines in reject_errors (see load_csv_malformed) instead of failing the file.
INSERT INTO raw_rows
SELECT row_number() OVER () AS row_number, to_json(t)::VARCHAR AS raw, NULL AS load_reason, NULL AS load_detail
FROM read_csv(
    $path, auto_detect = false, header = true, delim = $delim, quote = '"', escape = '"',
    columns = $columns, store_rejects = true
) AS t
