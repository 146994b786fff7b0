"""Near-duplicate videos: the same pictures at another resolution, bitrate or container (exact copies share a
content hash and are one video already).

A video's fingerprint (pipeline/scan.py) is one 64-bit DCT hash per instant it was taken at. Two videos are
near-duplicates when their fingerprints differ in at most `bits` bits. Comparing every pair is out of reach at a
million videos, so candidates come from an index: each hash is cut into 16-bit bands (20 over a 5-hash
fingerprint), and by the pigeonhole principle two fingerprints less than 20 bits apart agree exactly on at least one
band (farther pairs usually do too). Candidates are the fingerprints that share a band value, found by binary
search in each band's sorted values, then checked bit by bit. Bands of 16 bits keep the candidates few: among a
million unrelated fingerprints a band value is shared by about 15. A pair within `bits` is then confirmed:
- by its lengths, within DURATION_SLACK: the hashes are taken at shares of each video's length, so two videos of
  other lengths agree only by chance (the sample world moves its objects by the share of the video elapsed, so a
  4 s and a 4.6 s video of a square and a circle crossing the same wall hash alike);
- by its colour layouts (the mean colours of 4x4 cells at the same instants) within `colours` levels in every
  cell: the luma hash of a plain background with one moving object says where the object is, not its colour.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BAND_BITS = 16
COLOURS = 24  # a copy's cells keep their mean colour within this (0-255): 3 at half size, 14 at a starved bitrate
DURATION_SLACK = (0.5, 0.02)  # copies last as long, within 0.5 s or 2% of the longer (container rounding, a frame)
MAX_RUN = 1000  # a band value this common says nothing (a flat picture's hash): it gives no candidates
CHUNK = 20_000  # new fingerprints looked up at once (bounds the candidate pairs held in memory)


@dataclass(frozen=True)
class Match:
    index: int  # the near-duplicate, a position in the fingerprints given
    of: int  # the earlier fingerprint it is near
    bits: int  # how many bits they differ in


def _bands(words: int) -> list[tuple[int, int, int]]:
    """(word, shift, width) of each band."""
    return [(w, lo, BAND_BITS) for w in range(words) for lo in range(0, 64, BAND_BITS)]


def _band_values(prints: np.ndarray, word: int, shift: int, width: int) -> np.ndarray:
    mask = np.uint64((1 << width) - 1)
    return (prints[:, word] >> np.uint64(shift)) & mask


def distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bits that differ between fingerprints: (..., words) uint64 arrays, broadcast."""
    return np.bitwise_count(a ^ b).sum(axis=-1, dtype=np.int64)


def near_duplicates(
    prints: np.ndarray,
    first_new: int,
    bits: int,
    layouts: np.ndarray | None = None,
    durations: np.ndarray | None = None,
    colours: int = COLOURS,
) -> list[Match]:
    """Which of `prints[first_new:]` are within `bits` bits of an earlier row that is not itself a near-duplicate.

    `prints` is (n, words) uint64: the accepted fingerprints first (rows before `first_new`, never matched), then the
    new ones in order of preference (the one kept of two near-duplicates is the earlier). `layouts`, (n, cells)
    uint8, and `durations`, (n,) seconds, confirm each pair (see the module docstring). Returns one Match per near-duplicate, with the earliest
    kept row it is near.
    """
    n = len(prints)
    if bits <= 0 or n <= first_new or first_new < 0:
        return []
    index = [_Band(prints, *band) for band in _bands(prints.shape[1])]
    close: list[np.ndarray] = []  # (later, earlier, bits apart) of the pairs within `bits`
    for start in range(first_new, n, CHUNK):
        new = np.arange(start, min(start + CHUNK, n))
        candidates = np.unique(np.concatenate([band.earlier_matches(new) for band in index]), axis=0)
        apart = distances(prints[candidates[:, 0]], prints[candidates[:, 1]])
        near = apart <= bits
        if layouts is not None:
            a, b = layouts[candidates[:, 0]].astype(np.int16), layouts[candidates[:, 1]].astype(np.int16)
            near &= np.abs(a - b).max(axis=1, initial=0) <= colours
        if durations is not None:
            a, b = durations[candidates[:, 0]], durations[candidates[:, 1]]
            near &= np.abs(a - b) <= np.maximum(DURATION_SLACK[0], DURATION_SLACK[1] * np.maximum(a, b))
        close.append(np.column_stack([candidates, apart])[near])
    dropped: dict[int, Match] = {}
    for later, earlier, d in np.concatenate(close).tolist():  # sorted by the later row, then the earlier
        if later not in dropped and earlier not in dropped:  # near a row that is kept
            dropped[later] = Match(later, earlier, d)
    return list(dropped.values())


class _Band:
    """One band of every fingerprint, sorted: the rows sharing a value are found by binary search."""

    def __init__(self, prints: np.ndarray, word: int, shift: int, width: int) -> None:
        self.values = _band_values(prints, word, shift, width)
        self.order = np.argsort(self.values, kind="stable")
        self.sorted = self.values[self.order]

    def earlier_matches(self, rows: np.ndarray) -> np.ndarray:
        """(later, earlier) pairs: each of `rows` with every earlier row of the same band value."""
        low = np.searchsorted(self.sorted, self.values[rows], "left")
        high = np.searchsorted(self.sorted, self.values[rows], "right")
        runs = np.where(high - low <= MAX_RUN, high - low, 0)
        later = np.repeat(rows, runs)
        offsets = np.arange(runs.sum()) - np.repeat(np.cumsum(runs) - runs, runs)
        earlier = self.order[np.repeat(low, runs) + offsets]
        keep = earlier < later
        return np.column_stack([later[keep], earlier[keep]])


@dataclass(frozen=True)
class Video:
    key: str  # what the caller names it by (ingest: its sha256)
    fingerprint: list[int] | None  # signed 64-bit hashes as stored; None or short: takes no part
    layout: bytes | None = None  # the colour layout as stored; None: takes no part
    duration_s: float = 0.0
    pixels: int = 0  # of two new near-duplicates the one with more pixels, then more bytes, is kept
    bytes: int = 0


def find(accepted: list[Video], new: list[Video], bits: int, words: int) -> dict[str, tuple[str, int]]:
    """The new videos that are near-duplicates of an accepted one or of a better new one: key -> (the other's key,
    bits apart)."""
    videos = accepted + sorted(new, key=lambda v: (-v.pixels, -v.bytes, v.key))
    prints, full = as_words([v.fingerprint for v in videos], words)
    size = max((len(v.layout) for v in videos if v.layout), default=0)
    layouts = np.zeros((len(videos), size), np.uint8)
    for i, v in enumerate(videos):
        if v.layout and len(v.layout) == size:
            layouts[i] = np.frombuffer(v.layout, np.uint8)
        else:
            full[i] = False  # a hash without its colours takes no part
    rows = np.flatnonzero(full)
    first_new = int(np.searchsorted(rows, len(accepted)))
    durations = np.array([v.duration_s for v in videos], np.float64)
    matches = near_duplicates(prints[rows], first_new, bits, layouts[rows], durations[rows])
    return {videos[rows[m.index]].key: (videos[rows[m.of]].key, m.bits) for m in matches}


def as_words(fingerprints: list[list[int] | None], words: int) -> tuple[np.ndarray, np.ndarray]:
    """Signed 64-bit hashes (as stored) -> (rows, words) uint64 and a mask of the rows that have a full one."""
    full = np.array([fp is not None and len(fp) == words for fp in fingerprints], bool)
    out = np.zeros((len(fingerprints), words), np.uint64)
    for i, fp in enumerate(fingerprints):
        if full[i]:
            out[i] = np.array(fp, np.int64).view(np.uint64)
    return out, full
