"""SRT and WebVTT subtitle files as timed captions: one (start_s, end_s, text) cue per subtitle block.

Only the structure is parsed here; the text is cleaned by the same SQL as every other caption (tags such as
<i> or <v Speaker> are stripped there). A cue whose timing line cannot be read keeps its raw timing text, so
the SQL rejects that one cue as a malformed span instead of the whole file being lost.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass

SUBTITLE_SUFFIXES = (".srt", ".vtt")

# 01:02:03,456 (SRT) / 01:02:03.456 or 02:03.456 (WebVTT, hours optional)
_TIME = re.compile(r"^(?:(\d+):)?(\d{1,2}):(\d{1,2})(?:[.,](\d{1,3}))?$")
_ARROW = "-->"


class SubtitleError(Exception):
    """The file is not a subtitle file we can read at all (reject reason `bad_subtitles`)."""


@dataclass(frozen=True)
class Cue:
    index: int  # 1-based position in the file
    start: float | str  # seconds, or the raw text when it could not be parsed
    end: float | str
    text: str


def decode_text(data: bytes) -> str:
    """Subtitles come in UTF-8 (with or without BOM), UTF-16 with BOM, and for Chinese often GB18030/GBK."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return data.decode("utf-16")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    try:
        return data.decode("gb18030")
    except UnicodeDecodeError as exc:
        raise SubtitleError(f"not UTF-8, UTF-16 or GB18030 text: {exc}") from exc


def parse_timestamp(text: str) -> float | None:
    match = _TIME.match(text.strip())
    if not match:
        return None
    hours, minutes, seconds, millis = match.groups()
    if int(minutes) >= 60 or int(seconds) >= 60:
        return None
    return int(hours or 0) * 3600 + int(minutes) * 60 + int(seconds) + int((millis or "0").ljust(3, "0")) / 1000


def parse_subtitles(data: bytes, suffix: str) -> list[Cue]:
    """Cues of an .srt or .vtt file, in file order. Raises SubtitleError when no cue can be found."""
    text = decode_text(data).replace("\r\n", "\n").replace("\r", "\n")
    if suffix == ".vtt" and not text.lstrip().startswith("WEBVTT"):
        raise SubtitleError("a WebVTT file must start with 'WEBVTT'")
    cues: list[Cue] = []
    for block in re.split(r"\n\s*\n", text):
        lines = [line for line in block.split("\n") if line.strip()]
        timing = next((i for i, line in enumerate(lines) if _ARROW in line), None)
        if timing is None:
            continue  # the WEBVTT header, NOTE / STYLE / REGION blocks, or an SRT counter without a cue
        start_text, _, rest = lines[timing].partition(_ARROW)
        end_text = rest.split()[0] if rest.split() else ""  # WebVTT puts cue settings after the end time
        start, end = parse_timestamp(start_text), parse_timestamp(end_text)
        cues.append(
            Cue(
                index=len(cues) + 1,
                start=start if start is not None else start_text.strip(),
                end=end if end is not None else end_text.strip(),
                text="\n".join(lines[timing + 1 :]),
            )
        )
    if not cues:
        raise SubtitleError("no cue with a 'start --> end' timing line found")
    return cues
