"""SQL statements as files, loaded by name through `pipeline.db` (dbt-style layers: staging, marts, checks)."""
