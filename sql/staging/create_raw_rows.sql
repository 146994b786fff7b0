-- Every manifest row as its raw JSON, before any interpretation. Loaders insert into it; rows that could not
-- even be read (a CSV line with the wrong column count, a JSONL line that is not an object, an unreadable
-- subtitle file) are kept with a load_reason so they end up in rejects/ instead of vanishing.
CREATE OR REPLACE TEMP TABLE raw_rows (
    row_number BIGINT,   -- 1-based data row in the manifest (a subtitle row's cues share its number)
    raw VARCHAR,         -- the row as a JSON object (or a JSON string holding the unreadable line)
    load_reason VARCHAR,
    load_detail VARCHAR
)
