"""A container's own bytes, read without a decoder: where an AVI's `movi` list or a Matroska/WebM cluster says its
data ends. A file whose last list or cluster claims more bytes than the file holds was cut short (video.probe calls a
file truncated only on such evidence)."""

from __future__ import annotations

import struct
from typing import BinaryIO


def riff_movi_cut(f: BinaryIO, size: int) -> str | None:
    """Whether an AVI's 'movi' list (its frames) declares more bytes than the file has.

    Only the frame data counts: a file missing just its trailing idx1 index still holds every frame."""
    riff_at = 0
    while riff_at + 12 <= size:  # 'RIFF' 'AVI ' then, past 1 GB (OpenDML), 'RIFF' 'AVIX' chunks
        f.seek(riff_at)
        cid, riff_size = struct.unpack("<4sI", f.read(8))
        if cid != b"RIFF":
            return None
        # a writer that never finished leaves 0: the chunk runs to the end of the file
        riff_end = size if riff_size == 0 else min(riff_at + 8 + riff_size, size)
        pos = riff_at + 12
        while pos + 12 <= riff_end:
            f.seek(pos)
            cid, chunk_size, form = struct.unpack("<4sI4s", f.read(12))
            if cid == b"LIST" and form == b"movi" and chunk_size and pos + 8 + chunk_size > size:
                return f"the 'movi' list declares {chunk_size} bytes of frames at byte {pos}, the file ends at {size}"
            pos += 8 + chunk_size + (chunk_size & 1)
        if riff_size == 0:
            return None
        riff_at += 8 + riff_size + (riff_size & 1)
    return None


EBML_SEGMENT, EBML_CLUSTER = 0x18538067, 0x1F43B675


def _ebml_number(f: BinaryIO, keep_marker: bool) -> tuple[int, bool] | None:
    """One EBML variable-length number: (value, all value bits set, i.e. 'unknown size'); None at the end.

    The count of leading zero bits of the first byte gives the length; ids keep that marker bit, sizes drop it."""
    first = f.read(1)
    if not first or first[0] == 0:
        return None
    length = 9 - first[0].bit_length()
    rest = f.read(length - 1)
    if len(rest) < length - 1:
        return None
    value = int.from_bytes(first + rest, "big")
    if not keep_marker:
        value &= (1 << (7 * length)) - 1
    return value, value == (1 << (7 * length)) - 1


def ebml_cluster_cut(f: BinaryIO, size: int) -> str | None:
    """Whether a Matroska/WebM cluster (a run of frames) declares more bytes than the file has.

    Only clusters count: a file missing just its trailing Cues still holds every frame. Live recordings write
    clusters of unknown size; nothing can be told from them, so the walk stops there."""
    f.seek(0)
    pos = 0
    while pos < size:  # the top level: the EBML header, then the Segment whose children are walked
        element, length = _ebml_number(f, True), _ebml_number(f, False)
        if element is None or length is None:
            return None
        data_at = f.tell()
        if element[0] == EBML_SEGMENT:
            pos = data_at
            continue
        if length[1]:
            return None  # unknown size: the element runs to where the next one starts, which cannot be found cheaply
        end = data_at + length[0]
        if element[0] == EBML_CLUSTER and end > size:
            return f"the cluster at byte {pos} declares frames up to byte {end}, the file ends at {size}"
        pos = end
        f.seek(pos)
    return None
