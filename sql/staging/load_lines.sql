-- A JSONL manifest, handed over as manifest_lines(row_number, line) with blank lines already skipped.
-- A line that is not a JSON object is kept as a malformed row.
INSERT INTO raw_rows
SELECT
    row_number,
    CASE WHEN is_object THEN line ELSE to_json(line)::VARCHAR END AS raw,
    CASE WHEN is_object THEN NULL ELSE 'malformed_row' END AS load_reason,
    CASE WHEN is_object THEN NULL ELSE 'line ' || row_number || ': not a JSON object' END AS load_detail
FROM (
    SELECT row_number, line, CASE WHEN json_valid(line) THEN json_type(line) = 'OBJECT' ELSE false END AS is_object
    FROM manifest_lines
)
