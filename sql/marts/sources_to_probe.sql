-- The sources that usable rows point at and that no earlier run has settled: each is probed exactly once.
-- Settled means known to hold a video (sources/), or rejected for something in its bytes ($cached_reasons);
-- transient failures (missing_file, download_failed, probe_error) are tried again. --retry-rejects
-- ($retry_rejects) re-probes the cached rejects too, e.g. after raising a limit.
WITH wanted AS (
    SELECT source_uri, min(fetch_uri) AS fetch_uri
    FROM stg_manifest
    WHERE reason IS NULL
    GROUP BY source_uri
),

settled AS (
    SELECT source_uri FROM lake_sources
    UNION
    SELECT source_uri FROM lake_rejects WHERE NOT $retry_rejects AND list_contains($cached_reasons, reason)
)

SELECT w.source_uri, w.fetch_uri
FROM wanted AS w
ANTI JOIN settled AS s ON s.source_uri = w.source_uri
ORDER BY w.source_uri
