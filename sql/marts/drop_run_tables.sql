-- This run's working tables, dropped once the new rows are written and counted.
DROP TABLE IF EXISTS stg_manifest;
DROP TABLE IF EXISTS row_outcomes;
DROP TABLE IF EXISTS source_outcomes;
DROP TABLE IF EXISTS videos_new;
DROP TABLE IF EXISTS sources_new;
DROP TABLE IF EXISTS captions_new;
DROP TABLE IF EXISTS rejects_new;
