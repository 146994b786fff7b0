"""Text to video from the command line (README: Generate).

    python -m cogflow.model.serving.generate "一个下午在海滩上奔跑的女人" -o beach.mp4 [--stage1 REF] [--stage2 REF]
        [--seed 0] [--temperature T] [--top-k K] [--top-p P] [--guidance G] [--sequential] [--frames-out sheet.png]
        [--upscale 480]      (or `cogflow generate`)

The stages come from MLflow runs, registry URIs or local files (cogflow.model.cogvideo.stages), or both at once from
a registered text-to-video model (`--model models:/cogflow-t2v@champion`); sampling is
cogflow.model.cogvideo.sampling's; frames become an MP4 or GIF and a contact sheet (cogflow.model.media).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from cogflow.model.cogvideo.sampling import OPTIONS
from cogflow.model.media import contact_sheet, upscaled, write_video
from cogflow.model.serving.text_to_video import KEYFRAME_FPS, TextToVideo, Videos, check_keyframe_fps
from cogflow.pipeline.contract import INTERPOLATION_ROUNDS
from cogflow.pipeline.settings import Settings, load_settings

SUFFIXES = (".mp4", ".gif")


@dataclass
class GenerateResult:
    path: str
    frames: int  # 33
    size: int  # pixels per side as written
    fps: float  # of the written video
    seconds: float  # wall time, loading included
    stage1_steps: int  # forward calls of stage 1
    stage2_steps: int  # of the three stage-2 rounds together
    tokens: int  # codes sampled
    sampling_seconds: float  # in the two stages' decoding loops
    tokens_per_s: float
    stage1_run: str  # the run id used (or the reference given)
    stage2_run: str
    seed: int
    parallel: bool
    device: str
    prompt_truncated: bool  # more text pieces than slots: the beginning was kept
    frames_out: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def write_outputs(
    pixels: np.ndarray,
    out: Path,
    prompt: str,
    note: str,
    fps: float,
    frames_out: str | Path | None,
    upscale: int | None,
) -> np.ndarray:
    """One video's frames (33, 160, 160, 3) to `out` (upscaled when asked) and its contact sheet to `frames_out`."""
    frames = upscaled(pixels, upscale) if upscale else pixels
    write_video(out, frames, fps)
    if frames_out is not None:
        Path(frames_out).parent.mkdir(parents=True, exist_ok=True)
        contact_sheet(pixels, prompt, note, 2**INTERPOLATION_ROUNDS).save(frames_out)
    return frames


def check_output(out: Path, upscale: int | None) -> None:
    if out.suffix.lower() not in SUFFIXES:
        raise ValueError(f"the output must be .mp4 or .gif, not {out.name}")
    if upscale is not None and (upscale < 16 or (out.suffix.lower() == ".mp4" and upscale % 2)):
        raise ValueError(f"--upscale must be at least 16 (and even for MP4), not {upscale}")


def generate_video(
    settings: Settings,
    prompt: str,
    out_path: str | Path,
    *,
    stage1: str | None = None,
    stage2: str | None = None,
    seed: int = 0,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    guidance: float | None = None,
    keyframe_fps: float = KEYFRAME_FPS,
    frames_out: str | Path | None = None,
    upscale: int | None = None,
    parallel: bool | None = None,
    device: str | None = None,
    progress: bool = True,
) -> GenerateResult:
    """`prompt` -> a 33-frame video at `out_path` (.mp4 or .gif). Sampling options left None come from each
    stage's `[generate]` table, else GenerateConfig's defaults; stage references as in `stage_source`."""
    out = Path(out_path)
    check_output(out, upscale)
    if not prompt.strip():
        raise ValueError("the prompt is empty")
    check_keyframe_fps(keyframe_fps)
    options = {"temperature": temperature, "top_k": top_k, "top_p": top_p, "guidance": guidance, "parallel": parallel}
    started = time.monotonic()
    t2v = TextToVideo.from_runs(settings, stage1, stage2, device)
    return _write(
        t2v,
        prompt,
        out,
        seed,
        options,
        keyframe_fps,
        frames_out,
        upscale,
        progress,
        started,
        f"stage 1 {t2v.first.source}   stage 2 {t2v.second.source}",
    )


def _write(
    t2v: TextToVideo,
    prompt: str,
    out: Path,
    seed: int,
    options: dict,
    keyframe_fps: float,
    frames_out: str | Path | None,
    upscale: int | None,
    progress: bool,
    started: float,
    source: str,
) -> GenerateResult:
    """One prompt's video through `t2v`, written to `out` (and its contact sheet to `frames_out`)."""
    final_fps = keyframe_fps * 2**INTERPOLATION_ROUNDS  # the last round's fps token, and the video's rate
    with torch.inference_mode():
        made: Videos = t2v.codes([prompt], options, seed, keyframe_fps, progress)
        pixels = t2v.pixels(made.codes[0])  # (33, 160, 160, 3)
    note = f"seed {seed}   {len(pixels)} frames at {final_fps:g} fps   {source}   key frames framed in red"
    frames = write_outputs(pixels, out, prompt, note, final_fps, frames_out, upscale)
    return GenerateResult(
        path=str(out),
        frames=len(frames),
        size=int(frames.shape[1]),
        fps=final_fps,
        seconds=time.monotonic() - started,
        stage1_steps=made.keyframes.steps,
        stage2_steps=made.interpolation.steps,
        tokens=made.tokens,
        sampling_seconds=made.seconds,
        tokens_per_s=made.tokens / made.seconds if made.seconds else 0.0,
        stage1_run=t2v.first.source,
        stage2_run=t2v.second.source,
        seed=seed,
        parallel=made.configs[0].parallel,
        device=str(t2v.device),
        prompt_truncated=made.truncated[0],
        frames_out=None if frames_out is None else str(frames_out),
    )


# ---------------------------------------------------------------------------------------------------------------
# The command line


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """generate's options (shared with `cogflow generate`)."""
    parser.add_argument("prompt", help="what the video shows (Chinese or English, as the captions were)")
    parser.add_argument("-o", "--out", required=True, help="the video to write: .mp4 (H.264) or .gif")
    parser.add_argument(
        "--stage1",
        help="run id, runs:/<id>[/path], models:/<name>/<version> or a .pt file "
        "(default: the newest complete stage-1 run)",
    )
    parser.add_argument("--stage2", help="the same for stage 2")
    parser.add_argument(
        "--model",
        help="a registered text-to-video model instead of two stages, e.g. "
        "models:/cogflow-t2v@champion (or /<version>, @candidate)",
    )
    parser.add_argument("--seed", type=int, default=0, help="the same seed gives the same video")
    parser.add_argument("--temperature", type=float, help="default: the stage's [generate] table, else 1.0")
    parser.add_argument("--top-k", type=int, help="keep the k likeliest codes (0: off; default: as for temperature)")
    parser.add_argument("--top-p", type=float, help="nucleus sampling (1.0: off; default: as for temperature)")
    parser.add_argument("--guidance", type=float, help="stage-1 classifier-free guidance scale (1.0: off; default 3.0)")
    parser.add_argument(
        "--sequential",
        action="store_true",
        help="one code per forward call, as CogVideo (same video, slower with windowed attention)",
    )
    parser.add_argument("--frames-out", help="also write every frame as a contact sheet (PNG)")
    parser.add_argument("--upscale", type=int, help="resize the written video to this many pixels a side (bicubic)")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when there is one)")
    return parser


def generate_from_args(settings: Settings, args: argparse.Namespace, progress: bool = True) -> GenerateResult:
    options = dict(
        seed=args.seed,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        guidance=args.guidance,
        frames_out=args.frames_out,
        upscale=args.upscale,
        parallel=False if args.sequential else None,
        progress=progress,
    )
    if args.model:
        if args.stage1 or args.stage2:
            raise ValueError("--model is both stages: give it or --stage1/--stage2, not both")
        return generate_from_model(settings, args.model, args.prompt, args.out, device=args.device, **options)
    return generate_video(
        settings, args.prompt, args.out, stage1=args.stage1, stage2=args.stage2, device=args.device, **options
    )


def generate_from_model(
    settings: Settings,
    uri: str,
    prompt: str,
    out_path: str | Path,
    *,
    seed: int = 0,
    frames_out: str | Path | None = None,
    upscale: int | None = None,
    progress: bool = True,
    device: str | None = None,
    **options: object,
) -> GenerateResult:
    """`prompt` -> a video with a registered cogflow-t2v version (`TextToVideo.from_registry`); sampling options
    as in `generate_video`."""
    out = Path(out_path)
    check_output(out, upscale)
    if not prompt.strip():
        raise ValueError("the prompt is empty")
    started = time.monotonic()
    t2v = TextToVideo.from_registry(settings, uri, device)
    options = {k: v for k, v in options.items() if k in OPTIONS}
    return _write(t2v, prompt, out, seed, options, KEYFRAME_FPS, frames_out, upscale, progress, started, uri)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = add_arguments(argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0]))
    args = parser.parse_args(argv)
    try:
        result = generate_from_args(load_settings(), args)
    except ValueError as exc:
        print(f"generate: {exc}", file=sys.stderr)
        return 2
    r = result
    print(
        f"wrote {r.path}: {r.frames} frames of {r.size}x{r.size} at {r.fps:g} fps, seed {r.seed}, in {r.seconds:.1f} s "
        f"({r.tokens} codes at {r.tokens_per_s:,.0f} codes/s, {r.stage1_steps} + {r.stage2_steps} forward calls, "
        f"{'wavefront' if r.parallel else 'one code per call'} decoding on {r.device})"
    )
    print(
        f"stages: MLflow runs {r.stage1_run} (1) and {r.stage2_run} (2)"
        + (f"; contact sheet {r.frames_out}" if r.frames_out else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
