-- raw_rows is fully carried by stg_manifest once that is built.
DROP TABLE IF EXISTS raw_rows
