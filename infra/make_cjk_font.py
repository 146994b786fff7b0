"""Make the CJK font cogflow ships (pipeline/fonts/cogflow-cjk-sc.otf), so contact sheets, reports and the demo's
pictures draw Chinese captions on a machine without a CJK font (a fresh server or container has none).

    pip install fonttools && python infra/make_cjk_font.py NotoSansCJKsc-Regular.otf pipeline/fonts/cogflow-cjk-sc.otf

The source is Noto Sans CJK SC Regular (SIL Open Font License 1.1, pipeline/fonts/OFL.txt), e.g. from the `mplfonts`
wheel on PyPI. The whole font is 16 MB; cogflow keeps the characters of GB 2312 (the 6,763 common simplified
hanzi and its symbols), ASCII, Latin-1 and CJK and full-width punctuation: 7,806 glyphs, 1.6 MB. The result is a modified
version under the OFL, so it carries a name of its own. For characters outside the set (traditional ones, rare
hanzi), point `COGFLOW_FONT` at a full CJK font (pipeline/preview.py).
"""

from __future__ import annotations

import sys

from fontTools import subset
from fontTools.ttLib import TTFont

FAMILY = "cogflow CJK SC"


def characters() -> set[int]:
    chars = set(range(0x20, 0x7F)) | set(range(0xA0, 0x100))  # ASCII, Latin-1
    chars |= set(range(0x2000, 0x2070)) | set(range(0x3000, 0x3040)) | set(range(0xFF00, 0xFFF0))  # punctuation
    for high in range(0xA1, 0xF8):  # every two-byte code of GB 2312 that decodes
        for low in range(0xA1, 0xFF):
            try:
                chars.add(ord(bytes([high, low]).decode("gb2312")))
            except UnicodeDecodeError:
                pass
    return chars


def main(source: str, out: str) -> None:
    font = TTFont(source)
    options = subset.Options()
    options.layout_features = []  # horizontal text, one form per character: no alternates
    options.name_IDs = ["*"]
    options.hinting = False  # drawn at caption sizes by FreeType, whose autohinter does well enough
    options.notdef_outline = True
    subsetter = subset.Subsetter(options)
    subsetter.populate(unicodes=characters())
    subsetter.subset(font)
    names = font["name"]
    for record in names.names:  # a modified OFL font takes a name of its own
        if record.nameID in (1, 3, 4, 16):
            record.string = FAMILY if record.nameID in (1, 16) else f"{FAMILY} Regular"
        elif record.nameID == 6:
            record.string = FAMILY.replace(" ", "") + "-Regular"
    font.save(out)
    print(f"{out}: {len(font.getGlyphOrder())} glyphs")


if __name__ == "__main__":
    main(*sys.argv[1:3])
