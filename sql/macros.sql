-- Helpers for the other SQL files, created on every connection (pipeline.db.connect).

-- Seconds from '12.5', '00:01:02.5', '75:30' or '1:02,5' (subtitle and editor style); NULL for blank or
-- unreadable text, and for clock times whose minutes or seconds reach 60 ('0:75').
CREATE OR REPLACE MACRO span_seconds(x) AS CASE
    WHEN regexp_full_match(trim(x), '\d+(:[0-5]?\d){1,2}([.,]\d+)?')
        THEN list_reduce(list_transform(string_split(replace(trim(x), ',', '.'), ':'), lambda s: s::DOUBLE), lambda a, b: a * 60 + b)
    ELSE TRY_CAST(nullif(trim(x), '') AS DOUBLE)
END;

-- Letters counted per script, for the language tag. Chinese carries about one word per character and
-- English about one per three letters, so Latin letters are weighted by 1/3 to compare like with like.
-- (Runs, not single characters, are removed: five times faster on a million captions.)
CREATE OR REPLACE MACRO han_chars(s) AS length(regexp_replace(s, '[^\p{Han}]+', '', 'g'));
CREATE OR REPLACE MACRO latin_chars(s) AS length(regexp_replace(s, '[^\p{Latin}]+', '', 'g'));
CREATE OR REPLACE MACRO other_letters(s) AS length(regexp_replace(s, '(?:[^\p{L}]|\p{Han}|\p{Latin})+', '', 'g'));

CREATE OR REPLACE MACRO language_tag(s) AS CASE
    WHEN han_chars(s) + latin_chars(s) / 3.0 + other_letters(s) = 0 THEN 'other'
    WHEN han_chars(s) >= 0.8 * (han_chars(s) + latin_chars(s) / 3.0 + other_letters(s)) THEN 'zh'
    WHEN latin_chars(s) / 3.0 >= 0.8 * (han_chars(s) + latin_chars(s) / 3.0 + other_letters(s)) THEN 'en'
    WHEN han_chars(s) > 0 AND latin_chars(s) > 0
        AND han_chars(s) + latin_chars(s) / 3.0 >= 0.8 * (han_chars(s) + latin_chars(s) / 3.0 + other_letters(s)) THEN 'mixed'
    ELSE 'other'
END;

-- Caption cleaning, one step per line: tags out (a '<' must open a tag name, so 'a < b' survives), and again
-- after entities are decoded (captions scraped from HTML are often escaped twice); line breaks and NULs become
-- spaces (a NUL stands between words); other control and format characters go (zero-width, soft hyphen,
-- direction marks); every run of white space, in any script (U+3000, U+00A0, U+2003, ...), becomes one space;
-- ends trimmed.
-- RE2's \s and [[:cntrl:]] are ASCII-only, hence the Unicode classes.
CREATE OR REPLACE MACRO strip_tags(s) AS regexp_replace(s, '<!--.*?-->|</?[A-Za-z][^<>]*>', ' ', 'g');
CREATE OR REPLACE MACRO clean_caption(s) AS trim(
    regexp_replace(
        regexp_replace(
            regexp_replace(
                CASE WHEN contains(s, '&') THEN strip_tags(unescape_entities(strip_tags(s))) ELSE strip_tags(s) END,
                '[\x00\t\n\r\f\v\x{85}\x{2028}\x{2029}]', ' ', 'g'),
            '[\p{Cc}\p{Cf}]', '', 'g'),
        '[\s\p{Z}]+', ' ', 'g')
);

-- Strip credentials from URLs inside a text (user:password@, and the whole query and fragment, which may hold
-- presigned signatures or tokens), JSON-escaped quotes (\") included. The lake's source_uri is finer
-- (pipeline.storage.source_key keeps the query minus credentials); this is for free text such as raw rows.
CREATE OR REPLACE MACRO scrub_urls(s) AS regexp_replace(
    s, '(?i)((?:https?|s3)://)(?:(?:[^/?#"\s\\]|\\.)*@)?((?:[^?#"\s\\]|\\.)*)(?:[?#](?:[^"\s\\]|\\.)*)?', '\1\2', 'g');
