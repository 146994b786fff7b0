"""`cogflow repair`: remove what a failed or raced write left in the lake, and say what was removed.

Writers add whole files (pipeline/lake.py), so what a failed or raced write leaves behind takes three shapes:

- duplicate keys: two writers that raced (on S3 before the lease existed, or with the lease lost) both appended
  the same rows, each in a part of its own; the copy in the part whose name sorts first is kept (a part's name
  starts with the second it was written in: the oldest part, or one written in the same second), the others are
  cut out of their parts. Two split plans that raced give the same windows twice, in the same shard or in two
  shards; a shard whose windows another shard already holds goes whole, with its clips, rejects, record and
  tokens;
- files without a completion record: a split shard's clips and rejects, or a token file, whose run died before
  the record (or whose shard is no longer planned); readers skip them, repair removes them;
- orphan temporary files (`.tmp-*`): a local write killed between copying and renaming.

Repair holds the lake's writer lock (lease on S3), so no ingest or split plan writes meanwhile, and takes each
shard's lock without waiting: a shard being written right now is left alone and said so. Every removal is
safe to interrupt: a part is rewritten in place, whole or not at all (`lake.rewrite`; it keeps its path, since
readers and a running split's shards may have listed it), and a shard loses its plan rows first, then its
record, then its files, so a second run finishes what a killed one started.
"""

from __future__ import annotations

import contextlib
import re
import time
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from cogflow.pipeline import checks, lake
from cogflow.pipeline.sources import safe_uri
from cogflow.pipeline.split import shard_paths
from cogflow.pipeline.storage import TMP_MARK, Storage

# The tables written by appending parts, and the key each row must hold once (README, "The lake").
APPENDED_KEYS = {
    "videos": "video_id",
    "sources": "source_uri",
    "captions": "caption_id",
    "rejects": "reject_id",
    "clip_rejects": "reject_id",  # its parts: the planning rejects (a shard's rejects are in its own file)
}
TEMP_FILE = re.compile(rf"^(?P<folder>.*?)/?{re.escape(TMP_MARK)}[0-9a-f]+-(?P<name>[^/]+)$")  # LocalStorage.put_file


class NoLake(Exception):
    """There is no lake where repair was pointed (a typo must not make one)."""


@dataclass
class RepairSummary:
    lake: str
    lines: list[str] = field(default_factory=list)  # one per removal, in the order done
    files_removed: int = 0
    rows_removed: int = 0
    skipped: list[str] = field(default_factory=list)  # shards being written now: left alone
    checks: list[str] = field(default_factory=list)
    check_failure: str | None = None
    seconds: float = 0.0

    def text(self) -> str:
        out = [f"removed {line}" for line in self.lines] + [f"left alone: {s}" for s in self.skipped]
        what = (
            f"removed {_n(self.files_removed, 'file')} and {_n(self.rows_removed, 'duplicate row')}"
            if self.files_removed or self.rows_removed
            else "nothing to remove"
        )
        out.append(f"repair {self.lake}: {what} ({self.seconds:.1f} s)")
        out.append(
            f"data checks failed:\n{self.check_failure}"
            if self.check_failure
            else f"data checks passed: {len(self.checks)}"
        )
        return "\n".join(out)


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _shard_of(rel: str) -> str | None:
    """The split shard `rel` is a file of (one of its `shard_paths`), or None."""
    shard_id = rel.rsplit("/", 1)[-1].removeprefix("shard-").removesuffix(".parquet")
    return shard_id if rel in shard_paths(shard_id).values() else None


def _folders(paths: dict[str, str]) -> list[str]:
    """The top folders a path maker (`shard_paths`, `lake.token_paths`) puts files in: the ones to list."""
    return sorted({rel.split("/", 1)[0] for rel in paths.values()})


SHARD_FOLDERS = _folders(shard_paths("x"))
TOKEN_FOLDERS = _folders(lake.token_paths("x", 1, "x"))


def _lock_of(rel: str) -> str | None:
    """The shard lock a write of `rel` is made under; None for a table part (made under the writer lock)."""
    if (shard_id := _shard_of(rel)) is not None:
        return shard_id
    if (key := lake.token_file_key(rel)) is not None:
        return lake.token_lock_id(*key)
    return None


class _Repair:
    def __init__(self, store: Storage, summary: RepairSummary) -> None:
        self.store, self.summary = store, summary

    def remove(self, rel: str, why: str) -> None:
        self.store.delete(rel)
        self.summary.files_removed += 1
        self.summary.lines.append(f"{rel}  ({why})")

    @contextlib.contextmanager
    def shard(self, lock_id: str, what: str):
        """Hold a shard's lock for the block, or yield False (and say so) when a live writer has it."""
        with lake.try_shard_lock(self.store, lock_id) as held:
            if not held:
                self.summary.skipped.append(f"{what} (being written now; run repair again later)")
            yield held

    # -- 1. temporary files ------------------------------------------------------------------------------------

    def temporary_files(self) -> None:
        for rel in self.store.list_temporary(""):
            match = TEMP_FILE.match(rel)
            target = f"{match.group('folder')}/{match.group('name')}".lstrip("/") if match else rel
            lock_id = _lock_of(target)
            if lock_id is None:  # a table part: the writer lock repair holds covers its writer
                self.remove(rel, "temporary file of a write that never finished")
                continue
            with self.shard(lock_id, rel) as held:
                if held:
                    self.remove(rel, "temporary file of a write that never finished")

    # -- 2. duplicate rows in appended tables ------------------------------------------------------------------

    def _rewrite(self, name: str, part: str, drop: pa.Array, why: str) -> None:
        """Rewrite `part` in place without the rows where `drop` is true (left empty when none is left)."""
        table = lake.read_table(self.store, name, parts=[part])
        kept = table.filter(pc.invert(drop))
        dropped = table.num_rows - kept.num_rows
        lake.rewrite(self.store, name, part, kept)
        rest = f"its other {_n(kept.num_rows, 'row')} kept" if kept.num_rows else "the part is left empty"
        self.summary.lines.append(f"{_n(dropped, 'row')} from {part}  ({why}; {rest})")
        self.summary.rows_removed += dropped

    def duplicate_rows(self, name: str, key: str) -> None:
        seen: set = set()
        for part in self.store.list_files(name, ".parquet"):
            if not part.rsplit("/", 1)[-1].startswith("part-"):
                continue
            keys = lake.read_table(self.store, name, [key], parts=[part])[key].to_pylist()
            drop = []
            for value in keys:
                drop.append(value in seen)
                seen.add(value)
            if any(drop):
                self._rewrite(name, part, pa.array(drop), f"{key} already in an earlier part")

    # -- 3. split plans that raced -----------------------------------------------------------------------------

    def duplicate_plans(self) -> None:
        """Windows planned twice: a repeated (shard, window) row goes; a shard whose windows another shard
        (finished first, else planned first) holds goes whole, files and all."""
        parts = self.store.list_files("clip_plan", ".parquet")
        rows = [lake.read_table(self.store, "clip_plan", ["shard_id", "clip_id"], parts=[p]) for p in parts]
        finished = lake.finished_shards(self.store)
        first_part: dict[str, int] = {}
        clips_of: dict[str, set[str]] = {}
        for i, table in enumerate(rows):
            for shard_id, clip_id in zip(table["shard_id"].to_pylist(), table["clip_id"].to_pylist()):
                first_part.setdefault(shard_id, i)
                clips_of.setdefault(shard_id, set()).add(clip_id)
        claimed: set[str] = set()
        doubles: list[str] = []
        for shard_id in sorted(clips_of, key=lambda s: (s not in finished, first_part[s], s)):
            if clips_of[shard_id] & claimed:
                doubles.append(shard_id)
            else:
                claimed |= clips_of[shard_id]
        seen: set[tuple[str, str]] = set()
        repeated: set[str] = set()  # shards with a window planned twice in the shard itself
        for table in rows:
            for pair in zip(table["shard_id"].to_pylist(), table["clip_id"].to_pylist()):
                if pair in seen:
                    repeated.add(pair[0])
                seen.add(pair)
        with contextlib.ExitStack() as locks:
            # a splitter reads its shard's rows from the plan: touch only rows of shards no one is splitting now
            free = {
                s
                for s in sorted(set(doubles) | repeated)
                if locks.enter_context(self.shard(s, f"shard {s}, planned twice"))
            }
            gone = free & set(doubles)
            seen.clear()
            for part, table in zip(parts, rows):
                drop = []
                for pair in zip(table["shard_id"].to_pylist(), table["clip_id"].to_pylist()):
                    drop.append(pair[0] in free and (pair[0] in gone or pair in seen))
                    seen.add(pair)
                if any(drop):
                    self._rewrite("clip_plan", part, pa.array(drop), "windows planned twice")
            for shard_id in sorted(gone):
                # A plan puts all windows of a video in one shard, so each window of a shard that goes is in a shard
                # kept, or its caption has no window of that stage left in the plan and the next split plans it again.
                self._shard_files(
                    shard_id,
                    "its windows were planned twice: a shard kept holds them, or the next split plans them again",
                )

    def _shard_files(self, shard_id: str, why: str) -> None:
        """Remove a shard's files (held under its lock): the record first, so it stops counting at once."""
        paths = shard_paths(shard_id)
        for rel in [paths["record"], *(p for kind, p in paths.items() if kind != "record")]:
            if self.store.exists(rel):
                self.remove(rel, why)

    # -- 4. files without a completion record ------------------------------------------------------------------

    def unfinished_shards(self) -> None:
        planned = set(lake.read_table(self.store, "clip_plan", ["shard_id"])["shard_id"].to_pylist())
        finished = lake.finished_shards(self.store)
        with_files: set[str] = set()
        for folder in SHARD_FOLDERS:
            for rel in self.store.list_files(folder, ".parquet"):
                if (shard_id := _shard_of(rel)) is not None:
                    with_files.add(shard_id)
        for shard_id in sorted(with_files - (finished & planned)):
            with self.shard(shard_id, f"shard {shard_id}") as held:
                if not held:
                    continue
                if shard_id not in planned:
                    self._shard_files(shard_id, f"shard {shard_id} is in no plan")
                elif not self.store.exists(shard_paths(shard_id)["record"]):  # it may have finished since
                    self._shard_files(shard_id, f"shard {shard_id} has no completion record")

    def unfinished_tokens(self) -> None:
        finished = lake.finished_shards(self.store)
        files: dict[tuple[str, int, str], set[str]] = {}  # (frame version, stage, shard) -> paths present
        for folder in TOKEN_FOLDERS:
            for rel in self.store.list_files(folder, ".parquet"):
                if (key := lake.token_file_key(rel)) is not None:
                    files.setdefault(key, set()).add(rel)
        for (version, stage, shard_id), present in sorted(files.items()):
            paths = lake.token_paths(version, stage, shard_id)
            if shard_id not in finished:
                why = f"split shard {shard_id} is not finished"
            elif paths["record"] not in present:
                why = "no completion record"
            else:
                continue
            with self.shard(lake.token_lock_id(version, stage, shard_id), paths["tokens"]) as held:
                still = shard_id not in lake.finished_shards(self.store) or not self.store.exists(paths["record"])
                if held and still:  # looked at again under the lock: it may have finished since
                    for rel in (paths["record"], paths["tokens"]):  # the record first
                        if self.store.exists(rel):
                            self.remove(rel, why)


def repair(store: Storage) -> RepairSummary:
    """Remove duplicate keys, files without a completion record and orphan temporary files; run the checks.

    NoLake when there is no lake at all at the store's root (a typo must not create one)."""
    started = time.monotonic()
    if not store.list_files("") and not store.list_temporary(""):
        raise NoLake(f"no lake at {safe_uri(store.root)}: nothing to repair")
    summary = RepairSummary(safe_uri(store.root))
    fixer = _Repair(store, summary)
    with lake.writer_lock(store):
        fixer.temporary_files()
        for name, key in APPENDED_KEYS.items():
            fixer.duplicate_rows(name, key)
        fixer.duplicate_plans()
        fixer.unfinished_shards()
        fixer.unfinished_tokens()
    try:
        summary.checks = checks.check_lake(store)
    except checks.DataCheckError as exc:
        summary.check_failure = str(exc)
    summary.seconds = time.monotonic() - started
    return summary
