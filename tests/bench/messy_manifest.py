"""The ingest benchmark's manifest (bench_ingest.py): N rows of messy video-caption pairs over a handful of real
videos, written with what a correct ingest must find in them (rejects per reason, new captions, merged duplicates)."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

from cogflow.pipeline.sample_data import BACKGROUNDS, COLOURS, MOTIONS, SHAPES

COPY_NAME = "copy_of_sample_0000.mp4"
COLUMNS = ["video", "caption", "start_s", "end_s", "shot_id", "source", "license", "batch", "notes"]

# Every row is a "key" (a shot): rows 0-3 of each block of 5 are new keys, row 4 repeats an earlier key, so 20% of
# the rows duplicate an earlier caption. A key's caption, video, span and fate are pure functions of the key, so a
# repeated key lands on the same (video, caption, span) and must be merged. Half of the repeats are byte-identical
# lines; the other half wrap the caption in white space that cleaning removes and carry another `batch` value;
# a repeat of a key on sample_0000 points at the byte-identical copy instead (same video_id: still one caption).

MASK = (1 << 64) - 1

CAMERA = [
    ("镜头缓慢推进", "slow zoom in"),
    ("固定机位", "static camera"),
    ("镜头向右平移", "camera pans right"),
    ("俯拍", "top-down view"),
    ("特写", "close-up"),
    ("远景", "wide shot"),
    ("手持拍摄", "handheld"),
    ("柔和的光线", "soft light"),
    ("逆光", "backlit"),
    ("慢动作", "slow motion"),
]
LIGHT_EN = ["", "", "", " (Q&A reel)", " - take 2", " [HD]"]  # '&' in the clean text: entity-encoded in some rows
SOURCES = ["stock", "crawl", "partner", "in-house", "user-upload"]
LICENSES = ["cc-by", "cc-by-sa", "cc0", "proprietary", ""]
NOTES = ["", "", "", "checked", "needs review", "审核通过", "from archive"]

COLOUR_LIST = list(COLOURS.values())
BG_LIST = list(BACKGROUNDS.values())
SHAPE_LIST = list(SHAPES.values())
MOTION_LIST = list(MOTIONS.values())

# Row fates (per key), as (outcome, share). Everything not listed is accepted.
FATES = [
    ("empty_caption", 0.020),
    ("caption_too_short", 0.005),
    ("caption_too_long", 0.002),
    ("malformed_span", 0.010),  # unreadable, negative or reversed span text
    ("span_beyond_video", 0.005),  # a readable span past the probed duration: also 'malformed_span'
    ("missing_file", 0.003),
    ("path_outside_roots", 0.002),  # ../../etc/passwd, /etc/passwd
    ("unsupported_uri", 0.0005),
    ("missing_video", 0.001),
]
MIXES = [  # caption noise on accepted keys, as (name, share); all of it cleans back to the same text
    ("html_tags", 0.12),
    ("html_entities", 0.08),
    ("control_chars", 0.08),
    ("whitespace", 0.12),
    ("tags+entities+whitespace", 0.05),
]
SPANS = [
    ("none", 0.40),
    ("seconds", 0.40),
    ("hh:mm:ss", 0.10),
    ("end_past_duration_within_tolerance", 0.03),
]  # rest: start only


def _u(key: int, salt: int) -> float:
    """A uniform number in [0, 1) from (key, salt): splitmix64, so a key's choices never depend on row order."""
    x = (key * 0x9E3779B97F4A7C15 + (salt + 1) * 0xBF58476D1CE4E5B9) & MASK
    x ^= x >> 31
    x = (x * 0x94D049BB133111EB) & MASK
    x ^= x >> 29
    x = (x * 0xBF58476D1CE4E5B9) & MASK
    x ^= x >> 32
    return x / 18446744073709551616.0


def _pick(u: float, table: list[tuple[str, float]], default: str) -> str:
    acc = 0.0
    for name, share in table:
        acc += share
        if u < acc:
            return name
    return default


def clean_text(key: int) -> tuple[str, str]:
    """The caption a key means (after cleaning), and its language: zh (45%), en (45%) or a zh/en mix (10%)."""
    colour = COLOUR_LIST[int(_u(key, 1) * len(COLOUR_LIST))]
    bg = BG_LIST[int(_u(key, 2) * len(BG_LIST))]
    shape = SHAPE_LIST[int(_u(key, 3) * len(SHAPE_LIST))]
    motion = MOTION_LIST[int(_u(key, 4) * len(MOTION_LIST))]
    cam = CAMERA[int(_u(key, 5) * len(CAMERA))]
    lang = _u(key, 6)
    if lang < 0.45:
        return f"第{key}号镜头：一个{colour[1]}的{shape[0]}在{bg[1]}背景上{motion[0]}，{cam[0]}。", "zh"
    if lang < 0.90:
        article = "An" if colour[2][0] in "aeiou" else "A"
        tail = LIGHT_EN[int(_u(key, 7) * len(LIGHT_EN))]
        return (
            f"Shot {key}: {article} {colour[2]} {shape[1]} {motion[1]} on a {bg[2]} background, {cam[1]}{tail}.",
            "en",
        )
    return f"Shot {key}: 一个{colour[1]}的{shape[0]} {motion[1]}, {cam[1]}", "mixed"


def messy(text: str, lang: str, mix: str) -> str:
    """`text` with noise that clean_caption removes again (tags only at word breaks: a tag becomes a space)."""
    spaced = lang != "zh"  # Chinese text has no spaces to hide noise in: its noise goes to the ends
    if mix == "html_tags":
        if spaced:
            head, _, rest = text.partition(" ")
            return f"<p>{head} <b>{rest.replace(' ', ' <i>', 1)}</i></b></p><br/>"
        return f'<p><span class="zh">{text}</span></p>'
    if mix == "html_entities":
        if spaced:
            return text.replace("&", "&amp;").replace(" ", "&nbsp;", 2).replace(",", "&#44;", 1)
        return text.replace("一", "&#19968;", 1).replace("：", "&#xFF1A;", 1).replace("，", "&#65292;", 1)
    if mix == "control_chars":
        if spaced:
            return (
                "\ufeff"
                + text[:4]
                + "\u200b"
                + text[4:].replace(" ", "\t", 1).replace(" ", "\x07 ", 1).replace(" ", "\n", 1)
            )
        return "\ufeff" + text[:2] + "\u200b" + text[2:5] + "\x01" + text[5:] + "\r\n"
    if mix == "whitespace":
        if spaced:
            return "\u3000 " + text.replace(" ", "  ", 2).replace(" ", " \u3000 ", 1).replace(" ", "\u00a0", 1) + "   "
        return "\u3000\u3000" + text + " \u00a0 "
    if mix == "tags+entities+whitespace":
        return "  " + messy(messy(text, lang, "html_entities"), lang, "html_tags") + "\u3000"
    return text


def write_manifest(path: Path, rows: int, video_names: list[str], durations: list[float]) -> dict:
    """Write the manifest; return what the generator knows the ingest must find."""
    n_videos = len(video_names)
    expected = Counter()
    accepted_keys: set[int] = set()
    mixes, fates, spans_seen, langs = Counter(), Counter(), Counter(), Counter()
    exact_repeats = variant_repeats = copy_rows = dot_paths = 0
    outside_rows: list[int] = []  # 1-based data rows that must come back as path_outside_roots rejects
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for i in range(rows):
            block, pos = divmod(i, 5)
            repeat = pos == 4
            key = int(_u(block, 99) * (4 * block + 4)) if repeat else 4 * block + pos
            fate = _pick(_u(key, 10), FATES, "accepted")
            text, lang = clean_text(key)
            v = int(_u(key, 11) * n_videos)
            video = f"videos/{video_names[v]}"
            mix = _pick(_u(key, 12), MIXES, "plain") if fate == "accepted" else "n/a"
            caption = messy(text, lang, mix) if fate == "accepted" else text
            start = end = ""
            span = "n/a"
            if fate == "accepted":
                span = _pick(_u(key, 13), SPANS, "start_only")
                s = round(_u(key, 14), 2)  # every clip lasts at least 2 s: spans end before 1.95 s
                e = round(s + 0.3 + 0.6 * _u(key, 15), 2)
                if span == "seconds":
                    start, end = f"{s:g}", f"{e:g}"
                elif span == "hh:mm:ss":
                    start, end = f"00:00:{s:06.3f}", f"0:{e:06.3f}".replace(".", ",")
                elif span == "end_past_duration_within_tolerance":
                    start, end = "0", f"{durations[v] + 0.1:.3f}"
                elif span == "start_only":
                    start = f"{s:g}"
            elif fate == "empty_caption":
                caption = ["", "   ", "<br/>", "\u3000\u3000", "<p></p>", "\u200b\t", "&nbsp;"][key % 7]
            elif fate == "caption_too_short":
                caption = ["好", "<b>A</b>", " x ", "&amp;"][key % 4]
            elif fate == "caption_too_long":
                caption = (text + " ") * 40
            elif fate == "malformed_span":
                start, end = [("2.0", "1.0"), ("-1", "1"), ("abc", "1"), ("0", "0"), ("1", "one"), ("0:xx", "")][
                    key % 6
                ]
            elif fate == "span_beyond_video":
                start, end = "0", "60"
            elif fate == "missing_file":
                video = "videos/missing_clip.mp4"
            elif fate == "path_outside_roots":
                video = ["../../etc/passwd", "/etc/passwd"][key % 2]
            elif fate == "unsupported_uri":
                video = "ftp://example.com/clip.mp4"
            elif fate == "missing_video":
                video = ""
            batch = f"b{key % 97}"
            if repeat:
                if video == f"videos/{video_names[0]}":
                    video, copy_rows = f"videos/{COPY_NAME}", copy_rows + 1
                if _u(i, 16) < 0.5:
                    variant_repeats += 1
                    caption, batch = f" {caption}\u3000" if caption.strip() else caption, f"r{i % 13}"
                else:
                    exact_repeats += 1
            elif video.startswith("videos/") and _u(key, 17) < 0.05:
                video, dot_paths = "./" + video, dot_paths + 1  # another spelling of the same file
            w.writerow(
                [
                    video,
                    caption,
                    start,
                    end,
                    key,
                    SOURCES[key % 5],
                    LICENSES[key % 5 if key % 3 else 4],
                    batch,
                    NOTES[key % len(NOTES)],
                ]
            )
            outcome = {"span_beyond_video": "malformed_span"}.get(fate, fate)
            expected[outcome] += 1
            fates[fate] += 1
            mixes[mix] += 1
            spans_seen[span] += 1
            langs[lang] += 1
            if fate == "accepted":
                accepted_keys.add(key)
            if fate == "path_outside_roots":
                outside_rows.append(i + 1)
    return {
        "outcomes": expected,
        "new_captions": len(accepted_keys),
        "fates": fates,
        "mixes": mixes,
        "spans": spans_seen,
        "languages": langs,
        "exact_repeats": exact_repeats,
        "variant_repeats": variant_repeats,
        "copy_rows": copy_rows,
        "dot_paths": dot_paths,
        "outside_rows": outside_rows,
    }
