-- A Parquet manifest: typed columns become JSON values; stg_manifest reads them back as text.
INSERT INTO raw_rows
SELECT row_number() OVER () AS row_number, to_json(t)::VARCHAR AS raw, NULL AS load_reason, NULL AS load_detail
FROM read_parquet($path) AS t
