-- Helpers for the other SQL files, created on every connection (pipeline.db.connect).

-- Seconds from '12.5', '00:01:02.5' or '1:02,5' (subtitle and editor style); NULL for blank or unreadable text.
CREATE OR REPLACE MACRO span_seconds(x) AS CASE
    WHEN regexp_full_match(trim(x), '(\d+:){1,2}\d+([.,]\d+)?')
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

-- Caption cleaning, one step per line: tags out (a '<' must open a tag name, so 'a < b' survives); entities decoded (only values with '&' pay for the UDF);
-- line breaks and tabs become spaces; other control and zero-width characters go; every run of white space
-- (including the ideographic space U+3000 and no-break space U+00A0) becomes one space; ends trimmed.
CREATE OR REPLACE MACRO clean_caption(s) AS trim(
    regexp_replace(
        regexp_replace(
            regexp_replace(
                CASE WHEN contains(s, '&') THEN unescape_entities(regexp_replace(s, '<!--.*?-->|</?[A-Za-z][^<>]*>', ' ', 'g'))
                     ELSE regexp_replace(s, '<!--.*?-->|</?[A-Za-z][^<>]*>', ' ', 'g') END,
                '[\t\n\r\f\v]', ' ', 'g'),
            '[[:cntrl:]]|[\x{200B}-\x{200D}\x{2060}\x{FEFF}]', '', 'g'),
        '[\s\x{3000}\x{00A0}]+', ' ', 'g')
);

-- Strip credentials from URLs inside a text (user:password@ and query strings such as presigned signatures).
CREATE OR REPLACE MACRO scrub_urls(s) AS regexp_replace(
    s, '((?:https?|s3)://)(?:[^/@"\s]*@)?([^?"\s]*)\?[^"\s]*', '\1\2', 'g');
