"""Stage-2 bench: what the interpolation does to a video's caption following, from the same key frames.

    COGFLOW_HOME=.cogflow .venv/bin/python tests/bench/bench_interpolation.py            # the champion pair
    ... --stage1 RUN --stage2 RUN --sample temperature=0.3 --sample top_k=1 --prompts 96

Stage 1 makes the 5 key frames of each prompt once (its own sampling defaults). Then the 33-frame video is made
from those same key frames several ways, and each is read back whole (model/evaluation/caption_following.py):
- `hold`: every in-between frame repeats the key frame before it (no stage 2 at all): what the key frames say
  when read as a video, the reference stage 2 should keep;
- `stage 2 default`: stage 2 with its own [generate] table, as the demo makes videos;
- one row per `--sample KEY=VALUE[+KEY=VALUE]`: stage 2 with that sampling; `--sample no-caption` gives stage 2
  no caption (as the rows trained with the caption dropped), so the frames alone say what to draw.
A row below `hold` on motion means stage 2 loses the motion the key frames had. One JSON line per run is appended
to `--out` (default $COGFLOW_HOME/bench_interpolation.jsonl). Nothing is asserted; exit 0 when it ran.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from bench_stage1 import append_row, shares, table_cells  # noqa: E402  (this folder: the same read-back table)

from cogflow.model.cogvideo import sampling, stages
from cogflow.model.evaluation.caption_following import read_video  # noqa: E402
from cogflow.model.evaluation.diagnose import Variant, diagnosis_prompts, parse_variant
from cogflow.model.evaluation.evaluate import batch_seed  # noqa: E402
from cogflow.model.media import to_pixels
from cogflow.model.serving import text_to_video
from cogflow.pipeline.contract import INTERPOLATION_ROUNDS
from cogflow.pipeline.settings import load_settings  # noqa: E402


def hold(keys: torch.Tensor) -> torch.Tensor:
    """(B, 5, n) key frames -> (B, 33, n): each in-between frame repeats the key frame before it."""
    step = 2**INTERPOLATION_ROUNDS
    return torch.cat([keys[:, :-1].repeat_interleave(step, dim=1), keys[:, -1:]], dim=1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage1", help="stage-1 reference (run id, runs:/, models:/; default: the champion)")
    parser.add_argument("--stage2", help="stage-2 reference (default: the champion)")
    parser.add_argument("--prompts", type=int, default=96)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument(
        "--sample",
        action="append",
        default=[],
        metavar="KEY=VALUE[+KEY=VALUE]",
        help="a stage-2 sampling variant to compare (temperature=0.3, top_k=1)",
    )
    parser.add_argument("--out", help="JSON lines file to append the result to")
    args = parser.parse_args()
    settings = load_settings()
    t2v = text_to_video.TextToVideo.from_runs(settings, args.stage1, args.stage2, "cpu")
    first, second, tokenizers = t2v.first, t2v.second, t2v.tokenizers
    prompts = diagnosis_prompts(settings, args.prompts)
    variants = [parse_variant("default"), *(parse_variant(s) for s in args.sample if s != "no-caption")]
    if "no-caption" in args.sample:
        variants.append(Variant("no-caption", {}))
    text = tokenizers.text

    readings: dict[str, list] = {"hold": [], **{f"stage 2 {v.name}": [] for v in variants}}
    seconds = {name: 0.0 for name in readings}
    for b, start in enumerate(range(0, len(prompts), args.batch)):
        captions, seed = [p.caption for p in prompts[start : start + args.batch]], batch_seed(0, b)
        keys = text_to_video.text_to_keyframes(first, tokenizers, captions, {}, seed)[0].codes  # (B, 5, n)
        readings["hold"] += [read_video(f) for f in to_pixels(tokenizers, hold(keys))]
        ids, mask, _ = text.encode_batch(captions, second.model.spec.layout.text_len)
        for v in variants:
            started = time.monotonic()
            config = stages.sampling_config(second, {**v.options, "guidance": None})
            blank = v.name == "no-caption"  # pads only, as a training row whose caption was dropped
            video, _ = sampling.interpolate(
                second.model,
                keys,
                torch.from_numpy(0 * ids if blank else ids),
                torch.from_numpy(0 * mask if blank else mask),
                text_to_video.KEYFRAME_FPS,
                text.boi_id,
                text.fps_id,
                config,
                seed,
            )
            readings[f"stage 2 {v.name}"] += [read_video(f) for f in to_pixels(tokenizers, video.codes)]
            seconds[f"stage 2 {v.name}"] += time.monotonic() - started
        print(f"{min(start + args.batch, len(prompts))}/{len(prompts)} prompts", flush=True)

    row = {"stage1": first.source, "stage2": second.source, "prompts": len(prompts), "rows": {}}
    for name, got in readings.items():
        s = shares(prompts, got)
        row["rows"][name] = {**s, "seconds": seconds[name]}
        print(f"{name:<28} {table_cells(s)}  mean {s['mean']['share']:.0%}  read as still {s['still']['share']:.0%}")
    append_row(args.out or Path(settings.home) / "bench_interpolation.jsonl", row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
