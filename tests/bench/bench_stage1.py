"""Stage-1 ablation bench: train stage 1 one way on a lake that already holds tokens, read its key frames back.

    COGFLOW_HOME=.cogflow .venv/bin/python tests/bench/bench_stage1.py --label lr5e-3 --set train.lr=5e-3
    ... --label guidance1 --run RUN_ID --sample guidance=1   # read back a trained run with other sampling
    ... --t2i-steps 600        # first a text-to-image run of the same model, its spatial channel seeds stage 1
    ... --seeds 0,1,2          # the same config trained with three seeds: one row each, and their spread

What one change to stage 1 (its config, its data, a text-to-image start) does to what the issue cares about, in one
run and without Prefect, so that each row of an ablation table is one command:
- training time, tokens/s, val bits per code (stage 1 and, with --t2i-steps, the text-to-image run);
- stage 1's 5 key frames for `--prompts` prompts (half val captions, half sample-world captions no video of the
  lake has: model/evaluation/diagnose.py's prompts) read back per field, with 95% Wilson intervals next to chance.

Key frames are what stage 1 alone decides (colour, shape, background and the direction of motion); the whole
33-frame video needs stage 2 and is `cogflow diagnose`'s. One JSON line per run is appended to `--out`
(default $COGFLOW_HOME/bench_stage1.jsonl). Nothing is asserted; exit 0 when it ran.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from cogflow.model.cogvideo import stages
from cogflow.model.cogvideo.train import load_config, train_stage
from cogflow.model.evaluation.caption_following import FIELDS, read_video  # noqa: E402
from cogflow.model.evaluation.diagnose import diagnosis_prompts
from cogflow.model.evaluation.evaluate import batch_seed  # noqa: E402
from cogflow.model.evaluation.measures import VALUES, wilson
from cogflow.model.media import to_pixels  # noqa: E402
from cogflow.model.serving import text_to_video
from cogflow.model.tokenizers.encode import load_tokenizers  # noqa: E402
from cogflow.pipeline.settings import load_settings  # noqa: E402


def read_keyframes(settings, stage: stages.Stage, prompts, options: dict, batch: int = 16) -> dict[str, dict]:
    """Per field (and background): right, n, share and its 95% interval over the prompts with a truth."""
    tokenizers = load_tokenizers(
        settings, stage.info["frame_tokenizer_version"], stage.info["text_tokenizer_version"], "cpu"
    )
    readings = []
    for b, start in enumerate(range(0, len(prompts), batch)):
        captions = [p.caption for p in prompts[start : start + batch]]
        codes = text_to_video.text_to_keyframes(stage, tokenizers, captions, options, batch_seed(0, b))[0].codes
        # A text-to-image model makes one frame: read as a still video of two (colour and shape; no motion).
        readings += [
            read_video(frames if len(frames) > 1 else np.repeat(frames, 2, axis=0))
            for frames in to_pixels(tokenizers, codes)
        ]
    return shares(prompts, readings)


def shares(prompts, readings) -> dict[str, dict]:
    """Per field (and background): right, n, share and its 95% interval over the prompts with a truth; the mean
    over the fields; and the share read as not moving."""
    scored = [(p, r) for p, r in zip(prompts, readings) if p.truth is not None]
    out = {}
    for f in (*FIELDS, "background"):
        right = sum(getattr(r, f) == p.truth[f] for p, r in scored)
        low, high = wilson(right, len(scored))
        out[f] = {
            "right": right,
            "n": len(scored),
            "share": right / max(len(scored), 1),
            "low": low,
            "high": high,
            "chance": 1 / len(VALUES[f]),
        }
    out["mean"] = {"share": float(np.mean([out[f]["share"] for f in FIELDS]))}
    out["still"] = {"share": sum(r.motion is None for _, r in scored) / max(len(scored), 1)}
    return out


def table_cells(shares: dict[str, dict]) -> str:
    """One line of `shares`: each field's share and its 95% interval."""
    return "  ".join(
        f"{f} {shares[f]['share']:.0%} [{shares[f]['low']:.0%}, {shares[f]['high']:.0%}]"
        for f in (*FIELDS, "background")
    )


def append_row(path: str | Path, row: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


def train_and_read(args: argparse.Namespace, settings, seed: int | None) -> dict:
    """One row: train (unless --run) with `seed` as train.seed of both runs (None: the config's), read key frames."""
    row: dict = {
        "label": args.label,
        "set": args.set,
        "t2i_steps": args.t2i_steps,
        "t2i_set": args.t2i_set,
        "seed": seed,
    }
    overrides = [*args.set, *([] if seed is None else [f"train.seed={seed}"])]
    if args.t2i_steps and not args.run:
        started = time.monotonic()
        t2i = train_stage(
            settings,
            1,
            load_config(args.config, [*overrides, f"train.steps={args.t2i_steps}", "train.frames=1", *args.t2i_set]),
            restart=True,
        )
        row["t2i"] = {
            "seconds": time.monotonic() - started,
            "val_bits": t2i.val_bits_per_token,
            "tokens_per_s": t2i.tokens_per_s,
        }
        overrides.append(f"train.spatial_from={t2i.run_id}")
    if not args.run:
        started = time.monotonic()
        result = train_stage(settings, 1, load_config(args.config, overrides), restart=True)
        row["stage1"] = {
            "seconds": time.monotonic() - started,
            "val_bits": result.val_bits_per_token,
            "tokens_per_s": result.tokens_per_s,
            "steps": result.steps,
            "run_id": result.run_id,
        }
    else:
        row["stage1"] = {"seconds": 0.0, "val_bits": float("nan"), "tokens_per_s": float("nan"), "run_id": args.run}
    run_id = row["stage1"]["run_id"]

    started = time.monotonic()
    path = stages.find_stage(settings, 1, run_id)
    stage = stages.load_stage(path, 1, run_id, "cpu")
    options = {k: float(v) if "." in v else int(v) for k, v in (s.split("=", 1) for s in args.sample)}
    prompts = diagnosis_prompts(settings, args.prompts)
    row["keyframes"] = read_keyframes(settings, stage, prompts, options)
    row["sample"] = options
    row["eval_seconds"] = time.monotonic() - started

    k = row["keyframes"]
    cells = table_cells(k)
    t2i_text = f"t2i {row['t2i']['seconds']:.0f} s val {row['t2i']['val_bits']:.3f}  " if "t2i" in row else ""
    name = args.label if seed is None else f"{args.label} seed {seed}"
    print(
        f"{name}: {t2i_text}stage 1 {row['stage1']['seconds']:.0f} s val bits {row['stage1']['val_bits']:.3f} "
        f"({row['stage1']['tokens_per_s']:,.0f} tokens/s), eval {row['eval_seconds']:.0f} s  key frames on {k['colour']['n']}: {cells}  mean {k['mean']['share']:.0%}"
    )
    return row


def seed_spread(rows: list[dict]) -> str:
    """Per field, the mean share over the seeds' runs and its range: how far one training run is from another,
    which the per-run intervals (prompts only) do not show."""
    cells = []
    for f in (*FIELDS, "mean"):
        values = [r["keyframes"][f]["share"] for r in rows]
        cells.append(f"{f} {np.mean(values):.0%} [{min(values):.0%}-{max(values):.0%}]")
    return f"over {len(rows)} seeds (mean [lowest-highest] of the runs): " + "  ".join(cells)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", required=True, help="the row's name in the ablation table")
    parser.add_argument("--config", default="demo")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="stage-1 config override")
    parser.add_argument(
        "--t2i-steps",
        type=int,
        default=0,
        help="train a text-to-image run this long first and start stage 1 from its spatial channel",
    )
    parser.add_argument("--t2i-set", action="append", default=[], metavar="KEY=VALUE", help="override for the t2i run")
    parser.add_argument("--prompts", type=int, default=48)
    parser.add_argument(
        "--seeds",
        help="comma-separated training seeds (train.seed of the t2i run and stage 1): one row per seed and their "
        "spread; two runs of one config differ by more than a run's intervals",
    )
    parser.add_argument(
        "--sample",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="sampling override (guidance=1, temperature=0.7, top_k=5); the stage's defaults otherwise",
    )
    parser.add_argument(
        "--run",
        help="read back this stage-1 run (an MLflow run id) instead of training one; "
        "runs:/<id>/model/t2i.pt reads a text-to-image run's images",
    )
    parser.add_argument("--out", help="JSON lines file to append the result to")
    args = parser.parse_args()
    if args.seeds and args.run:
        parser.error("--seeds trains runs; --run reads one")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    settings = load_settings()
    out = args.out or Path(settings.home) / "bench_stage1.jsonl"
    seeds: list[int | None] = [int(x) for x in args.seeds.split(",")] if args.seeds else [None]
    rows = []
    for seed in seeds:
        rows.append(train_and_read(args, settings, seed))
        append_row(out, rows[-1])
    if len(rows) > 1:
        print(f"{args.label}: {seed_spread(rows)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
