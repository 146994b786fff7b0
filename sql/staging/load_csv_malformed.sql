-- CSV lines DuckDB could not split into the header's columns: one reject per line, with every error seen on it.
INSERT INTO raw_rows
SELECT
    NULL AS row_number,
    to_json(any_value(csv_line))::VARCHAR AS raw,
    'malformed_row' AS load_reason,
    'line ' || line || ': ' || string_agg(DISTINCT error_type || ' (' || error_message || ')', '; ') AS load_detail
FROM reject_errors
GROUP BY line
