"""Ingest benchmark: clean and deduplicate a 1,000,000-row manifest that points at a handful of real videos.

    .venv/bin/python tests/bench/bench_ingest.py [--rows N] [--keep DIR]      (or: make bench)

Budget (the issue): the whole ingest of 1,000,000 rows finishes in under 60 s on a 2-core machine with the
process's peak memory under 2 GB (DuckDB works inside this process, so its memory is counted too).

What it does, in one process and one temporary folder:
1. generates 6 real sample clips (2-4 s) plus a byte-identical copy of one under another name, then writes a
   messy manifest CSV of N rows pointing at them (not timed against the budget; reported separately);
2. times a plain DuckDB `read_csv` count(*) of that file: the floor every ingest pays;
3. runs `pipeline.ingest.ingest()` on a fresh lake, with its three steps (plan_ingest, probe_source per
   source, finish_ingest) timed through thin wrappers, and a thread sampling RSS;
4. runs `ingest()` again on the same manifest: a re-ingest writes nothing and probes only the missing file
   (missing_file is a transient reason, retried by every run by design);
5. checks the outcome against what the generator put in (reasons per row, new captions, merged duplicates,
   6 videos / 7 sources), and prints the report.

Exit status: 0 when within budget and consistent, 1 when a budget is blown (the report says which),
2 when the results disagree with what the manifest holds (a correctness problem, not a speed one).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import duckdb  # noqa: E402
from memory import RssSampler, max_rss_bytes, mb  # tests/bench/, beside this script
from messy_manifest import COLUMNS, COPY_NAME, write_manifest

from cogflow.pipeline import db, lake  # noqa: E402
from cogflow.pipeline import ingest as ingest_mod
from cogflow.pipeline.sample_data import (  # noqa: E402
    generate_sample_data,
    plan_videos,
)
from cogflow.pipeline.settings import load_settings  # noqa: E402
from cogflow.pipeline.storage import Storage

TIME_BUDGET_S = 60.0
MEMORY_BUDGET_BYTES = 2_000_000_000  # "2 GB", taken strictly (1907 MiB)

VIDEOS = 6
SEED = 7
MIN_DURATION_S, MAX_DURATION_S = 2.0, 4.0

# ------------------------------------------------------------------------------------------------ measuring
DUCKDB_MEMORY = """SELECT coalesce(sum(memory_usage_bytes), 0), coalesce(sum(temporary_storage_bytes), 0),
    current_setting('temp_directory'), current_setting('memory_limit') FROM duckdb_memory()"""


@contextlib.contextmanager
def timed_steps(phases: dict[str, float], sampler: RssSampler, peaks: dict[str, int], steps: list[tuple]):
    """Wrap ingest()'s three steps (looked up as module globals at call time) to time each and take its peak RSS,
    and pipeline.db's run/materialize to time each SQL file; after each materialize, DuckDB's own memory and
    what it spilled to its temp_directory (duckdb_memory()) are recorded in `steps`."""
    originals = {name: getattr(ingest_mod, name) for name in ("plan_ingest", "probe_source", "finish_ingest")}
    db_originals = {name: getattr(db, name) for name in ("run", "materialize")}

    def wrap_sql(name, fn):
        def timed(con, sql_name, **params):
            t = time.perf_counter()
            result = fn(con, sql_name, **params)
            dt = time.perf_counter() - t
            mem = con.execute(DUCKDB_MEMORY).fetchall()[0] if name == "materialize" else None  # run's result is pending
            steps.append((sql_name, dt, mem))
            return result

        return timed

    def wrap(name, fn):
        def timed(*args, **kwargs):
            if name != "probe_source" or "probe_source" not in phases:
                sampler.reset()
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                phases[name] = phases.get(name, 0.0) + time.perf_counter() - t
                peaks[name] = max(peaks.get(name, 0), sampler.peak, sampler.current())
                if name == "probe_source":
                    phases["probe_calls"] = phases.get("probe_calls", 0) + 1

        return timed

    for name, fn in originals.items():
        setattr(ingest_mod, name, wrap(name, fn))
    for name, fn in db_originals.items():
        setattr(db, name, wrap_sql(name, fn))
    try:
        yield
    finally:
        for name, fn in originals.items():
            setattr(ingest_mod, name, fn)
        for name, fn in db_originals.items():
            setattr(db, name, fn)


# ---------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000, help="manifest rows (default 1,000,000)")
    ap.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temp folder, removed)")
    args = ap.parse_args(argv)
    if args.rows < 10:
        ap.error("--rows must be at least 10")

    work = args.keep.resolve() if args.keep else Path(tempfile.mkdtemp(prefix="cogflow-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    os.chdir(work)  # anything DuckDB spills to a relative temp folder lands here, not in the checkout
    try:
        return run(args.rows, work)
    finally:
        os.chdir(ROOT)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def run(rows: int, work: Path) -> int:
    cpus = os.cpu_count()
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cpus
    print(
        f"cogflow ingest benchmark: {rows:,} manifest rows, os.cpu_count()={cpus} (usable: {affinity}), "
        f"duckdb {duckdb.__version__}, python {sys.version.split()[0]}"
    )
    print(
        f"budget: ingest < {TIME_BUDGET_S:.0f} s, peak RSS < {MEMORY_BUDGET_BYTES / 1e9:.0f} GB "
        f"({MEMORY_BUDGET_BYTES / 2**20:,.0f} MiB); work dir {work}"
    )

    # 1. data (not part of the budget)
    data = work / "data"
    t = time.perf_counter()
    generate_sample_data(data, VIDEOS, SEED, min_duration_s=MIN_DURATION_S, max_duration_s=MAX_DURATION_S)
    specs = plan_videos(VIDEOS, SEED, min_duration_s=MIN_DURATION_S, max_duration_s=MAX_DURATION_S)
    shutil.copyfile(data / "videos" / specs[0].filename, data / "videos" / COPY_NAME)
    t_videos = time.perf_counter() - t
    manifest = data / "manifest_bench.csv"
    t = time.perf_counter()
    gen = write_manifest(manifest, rows, [s.filename for s in specs], [s.duration_s for s in specs])
    t_manifest = time.perf_counter() - t
    size = manifest.stat().st_size
    print(
        f"\nsetup (not timed against the budget): {VIDEOS} clips + 1 byte-identical copy in {t_videos:.1f} s; "
        f"manifest {size / 1e6:,.0f} MB written in {t_manifest:.1f} s"
    )
    print(
        "  videos: "
        + ", ".join(f"{s.filename} ({s.duration_s:g} s)" for s in specs)
        + f", {COPY_NAME} (= {specs[0].filename})"
    )
    share = lambda c: "  ".join(f"{k} {v / rows:.1%}" for k, v in c.most_common())  # noqa: E731
    print(f"  row fates:      {share(gen['fates'])}")
    print(f"  caption noise:  {share(gen['mixes'])}  (n/a: rejected rows, which get their own noise)")
    print(f"  spans:          {share(gen['spans'])}")
    print(f"  languages:      {share(gen['languages'])}")
    print(
        f"  repeats of an earlier key: {gen['exact_repeats'] + gen['variant_repeats']:,} rows "
        f"({gen['exact_repeats']:,} byte-identical, {gen['variant_repeats']:,} with white space / batch changed, "
        f"{gen['copy_rows']:,} of them via the copied file); {gen['dot_paths']:,} rows spell a path as ./videos/..."
    )
    print(f"  extra columns kept as metadata: {', '.join(COLUMNS[4:])}")

    settings = load_settings(home=str(work / "home"), lake=str(work / "lake"))
    baseline_rss = max_rss_bytes()

    # 2. the floor: a plain read of the same file with the same connection settings
    con = db.connect()
    t = time.perf_counter()
    (plain_count,) = con.execute(
        "SELECT count(*) FROM read_csv($p, all_varchar = true, header = true)", {"p": str(manifest)}
    ).fetchone()
    t_plain = time.perf_counter() - t
    t = time.perf_counter()
    con.execute(
        "SELECT sum(length(t::VARCHAR)) FROM read_csv($p, all_varchar = true, header = true) AS t", {"p": str(manifest)}
    ).fetchone()
    t_plain_all = time.perf_counter() - t
    con.close()

    # 3. first ingest, fresh lake; 4. re-ingest
    phases: dict[str, float] = {}
    peaks: dict[str, int] = {}
    steps: list[tuple] = []
    with RssSampler() as sampler:
        with timed_steps(phases, sampler, peaks, steps):
            t = time.perf_counter()
            summary = ingest_mod.ingest(str(manifest), settings)
            t_ingest = time.perf_counter() - t
        peak_first = max([sampler.peak, *peaks.values()])
        rss_after_first = sampler.current()
        maxrss_first = max_rss_bytes()

        sampler.reset()
        t = time.perf_counter()
        again = ingest_mod.ingest(str(manifest), settings)
        t_again = time.perf_counter() - t
        peak_again = sampler.peak
    maxrss_end = max_rss_bytes()
    counts = lake.row_counts(Storage.at(settings.lake))
    mems = [m for _, _, m in steps if m]

    # 5. report
    probes = int(phases.get("probe_calls", 0))
    t_probe = phases.get("probe_source", 0.0)
    print("\n" + summary.text())
    print("\nfigures")
    print(f"  manifest rows            {summary.manifest_rows:>12,}   (plain read counted {plain_count:,})")
    print(f"  accepted                 {summary.accepted_rows:>12,}")
    print(f"  rejected                 {summary.rejected_rows:>12,}")
    for reason, n in summary.outcomes.items():
        if reason != "accepted":
            print(f"    {reason:<22} {n:>12,}")
    print(f"  captions written         {summary.new_rows.get('captions', 0):>12,}")
    print(f"  duplicates merged        {summary.duplicate_rows:>12,}")
    print(f"  reject records written   {summary.new_rows.get('rejects', 0):>12,}")
    print(
        f"  videos / sources written {summary.new_rows.get('videos', 0):>5,} / {summary.new_rows.get('sources', 0):,}"
    )
    print("  phases (first ingest)")
    print(
        f"    plan_ingest  (read, clean, judge, list sources) {phases.get('plan_ingest', 0):7.2f} s   peak RSS {mb(peaks.get('plan_ingest', 0))}"
    )
    print(
        f"    probe_source ({probes} sources, one after another)   {t_probe:7.2f} s   peak RSS {mb(peaks.get('probe_source', 0))}"
    )
    print(
        f"    finish_ingest (outcomes, 4 appends, checks)     {phases.get('finish_ingest', 0):7.2f} s   peak RSS {mb(peaks.get('finish_ingest', 0))}"
    )
    print(f"  ingest wall time         {t_ingest:>10.2f} s   (summary says {summary.seconds:.2f} s)")
    print(f"  rows/s                   {summary.manifest_rows / t_ingest:>12,.0f}")
    print(f"  sources probed           {summary.sources_probed:>12,}")
    print(
        f"  videos probed/s          {probes / t_probe if t_probe else float('nan'):>12,.1f}   ({t_probe / max(probes, 1) * 1000:.0f} ms per source)"
    )
    print(f"  plain read_csv count(*)  {t_plain:>10.2f} s   -> ingest / plain read = {t_ingest / t_plain:.1f}x")
    print(f"  plain read, all columns  {t_plain_all:>10.2f} s   -> ingest / full read  = {t_ingest / t_plain_all:.1f}x")
    print(
        f"  peak RSS, first ingest   {mb(peak_first):>12}   (sampled every 10 ms; RSS after it {mb(rss_after_first)})"
    )
    print(
        f"  ru_maxrss, process       {mb(maxrss_end):>12}   (before ingest: {mb(baseline_rss)}, after first ingest: {mb(maxrss_first)})"
    )
    print(
        f"  re-ingest                {t_again:>10.2f} s   probed {again.sources_probed} sources, "
        f"wrote {sum(again.new_rows.values())} rows, peak RSS {mb(peak_again)}"
    )
    print(
        "                           (the one source re-probed is the missing file: missing_file is retried by design)"
    )
    print(f"  lake after both          {', '.join(f'{k} {v:,}' for k, v in sorted(counts.items()))}")
    print("  slowest SQL files (first ingest; execute time, DuckDB memory / spilled after a materialize)")
    for sql_name, dt, mem in sorted(steps, key=lambda s: -s[1])[:6]:
        extra = f"   duckdb {mb(mem[0])} in memory, {mb(mem[1])} spilled" if mem else ""
        print(f"    {sql_name:<28} {dt:6.2f} s{extra}")
    if mems:
        print(
            f"  DuckDB memory_limit {mems[0][3]}: peak {mb(max(m[0] for m in mems))} in memory, "
            f"peak {mb(max(m[1] for m in mems))} spilled to temp_directory '{mems[0][2]}'"
        )

    # consistency with what the generator wrote
    problems = []
    got = {k: v for k, v in summary.outcomes.items() if v}
    want = {k: v for k, v in gen["outcomes"].items() if v}
    if got != want:
        diff = {
            k: (want.get(k, 0), got.get(k, 0)) for k in sorted(set(got) | set(want)) if want.get(k, 0) != got.get(k, 0)
        }
        problems.append(f"outcomes differ from the manifest's mix (reason: expected, got): {diff}")
    if summary.new_rows.get("captions") != gen["new_captions"]:
        problems.append(
            f"captions written {summary.new_rows.get('captions'):,}, expected {gen['new_captions']:,} "
            "(one per distinct accepted key after cleaning)"
        )
    if summary.duplicate_rows != want.get("accepted", 0) - gen["new_captions"]:
        problems.append(
            f"duplicates merged {summary.duplicate_rows:,}, expected {want.get('accepted', 0) - gen['new_captions']:,}"
        )
    if (summary.new_rows.get("videos"), summary.new_rows.get("sources")) != (VIDEOS, VIDEOS + 1):
        problems.append(
            f"videos/sources written {summary.new_rows.get('videos')}/{summary.new_rows.get('sources')}, "
            f"expected {VIDEOS}/{VIDEOS + 1} (the copy is the same video)"
        )
    # missing_file is a transient reason, retried by every run: the missing clip is the one source probed again
    reprobe = 1 if want.get("missing_file") else 0
    if again.sources_probed != reprobe or any(again.new_rows.values()):
        problems.append(
            f"re-ingest probed {again.sources_probed} sources and wrote {again.new_rows}, "
            f"expected {reprobe} (the missing file, retried) and nothing written"
        )
    con = duckdb.connect()
    rej_rows = sorted(
        r
        for (r,) in con.execute(
            "SELECT DISTINCT row_number FROM read_parquet($p) WHERE reason = 'path_outside_roots'",
            {"p": str(Path(settings.lake) / "rejects" / "*.parquet")},
        ).fetchall()
    )
    con.close()
    # a byte-identical repeat of a rejected row is one record, kept under the first row number
    if not set(rej_rows) <= set(gen["outside_rows"]) or not rej_rows or min(rej_rows) != min(gen["outside_rows"]):
        bad = sorted(set(rej_rows) - set(gen["outside_rows"]))[:5]
        problems.append(
            f"rejects/ row_number does not match the manifest's data rows for path_outside_roots "
            f"(e.g. recorded {bad}, manifest rows are {gen['outside_rows'][:5]}...)"
        )

    budget = []
    if t_ingest >= TIME_BUDGET_S:
        budget.append(f"TIME: ingest took {t_ingest:.1f} s >= {TIME_BUDGET_S:.0f} s")
    peak = max(peak_first, maxrss_end)
    if peak >= MEMORY_BUDGET_BYTES:
        budget.append(f"MEMORY: peak RSS {mb(peak)} >= {mb(MEMORY_BUDGET_BYTES)}")

    print("\nverdict")
    print(
        f"  time   {'PASS' if t_ingest < TIME_BUDGET_S else 'FAIL'}  {t_ingest:.1f} s < {TIME_BUDGET_S:.0f} s"
        + ("" if rows == 1_000_000 else f"   (note: {rows:,} rows, the budget is for 1,000,000)")
    )
    print(f"  memory {'PASS' if peak < MEMORY_BUDGET_BYTES else 'FAIL'}  {mb(peak)} < {mb(MEMORY_BUDGET_BYTES)}")
    print(f"  results {'consistent' if not problems else 'INCONSISTENT'} with the generated manifest")
    for p in budget + problems:
        print(f"  !! {p}")
    if budget:
        return 1
    return 2 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
