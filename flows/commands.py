"""What each `cogflow` command does once its options are parsed (cli.py parses them): call a flow or a plain
function, print its summary, and turn a user's mistake into one line and exit code 2."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cogflow.pipeline.settings import (
    Settings,
)

if TYPE_CHECKING:  # the flows load when a command runs, not when the command line is parsed
    from cogflow.flows.register import EvaluationParams
    from cogflow.pipeline.storage import Storage


def run_sample_data(args: argparse.Namespace) -> int:
    from cogflow.flows.demo import sample_progress
    from cogflow.pipeline.sample_data import generate_sample_data

    manifest = generate_sample_data(
        args.out_dir,
        args.videos,
        seed=args.seed,
        progress=sample_progress,
        min_duration_s=args.min_duration,
        max_duration_s=args.max_duration,
    )
    print(f"wrote {args.videos} videos and {manifest}")
    return 0


def _report(
    command: str,
    run: Callable[[], object],
    usage_errors: tuple[type[Exception], ...] = (),
    failures: tuple[type[Exception], ...] = (),
) -> int:
    """Run a flow and print its summary; a usage error is exit 2, a lake that fails its data checks (or another
    expected failure, such as a training child that crashed) exit 1."""
    from cogflow.pipeline.checks import DataCheckError

    try:
        summary = run()
    except usage_errors as exc:
        print(f"cogflow {command}: {exc}", file=sys.stderr)
        return 2
    except DataCheckError as exc:
        print(f"cogflow {command}: the lake failed its data checks\n{exc}", file=sys.stderr)
        return 1
    except failures as exc:
        print(f"cogflow {command}: {exc}", file=sys.stderr)
        return 1
    print(summary.text())  # type: ignore[attr-defined]
    return 0


def run_ingest(args: argparse.Namespace) -> int:
    from cogflow.flows.ingest import run_ingest
    from cogflow.pipeline.manifest import ManifestError
    from cogflow.pipeline.settings import load_settings

    settings = load_settings()
    return _report(
        "ingest",
        lambda: run_ingest(
            settings,
            task_runner=args.task_runner,
            manifest=args.manifest,
            lake=settings.lake,
            video_col=args.video_col,
            caption_col=args.caption_col,
            retry_rejects=args.retry_rejects,
            encoding=args.encoding,
        ),
        usage_errors=(ManifestError,),
    )


def run_split(args: argparse.Namespace) -> int:
    from cogflow.flows.split import run_split
    from cogflow.pipeline.settings import load_settings

    settings = load_settings()
    return _report(
        "split",
        lambda: run_split(
            settings,
            task_runner=args.task_runner,
            lake=settings.lake,
            stage=args.stage,
            retry_rejects=args.retry_rejects,
        ),
    )


def run_tokenize(args: argparse.Namespace) -> int:
    from cogflow.flows.launch import ChildFailed
    from cogflow.flows.runners import on_runner
    from cogflow.flows.tokenize import tokenize_flow
    from cogflow.pipeline.settings import load_settings

    settings = load_settings()
    code = _report(
        "tokenize",
        # the runner is made inside: an unknown one is then a one-line usage error, not a traceback
        lambda: on_runner(tokenize_flow, args.task_runner, args.encode_workers)(
            lake=settings.lake,
            steps=args.what,
            vocab_size=args.vocab_size,
            frame_config=args.config,
            frame_overrides=args.set,
            nproc=args.nproc,
            restart=args.restart,
            frame_tokenizer_version=args.frame_tokenizer,
            text_tokenizer_version=args.text_tokenizer,
            batch_clips=args.batch_clips,
            encode_workers=args.encode_workers,
            nnodes=args.nnodes,
            node_rank=args.node_rank,
            rdzv_endpoint=args.rdzv_endpoint,
        ),
        usage_errors=(ValueError,),
        failures=(ChildFailed,),
    )
    return code


def run_train(args: argparse.Namespace) -> int:
    from cogflow.flows.launch import ChildFailed
    from cogflow.flows.train import train_flow
    from cogflow.pipeline.settings import load_settings

    settings = load_settings()
    return _report(
        "train",
        lambda: train_flow(
            stage=args.stage,
            config=args.config,
            overrides=args.set,
            lake=settings.lake,
            nproc=args.nproc,
            frame_tokenizer_version=args.frame_tokenizer,
            restart=args.restart,
            resume=args.resume,
            nnodes=args.nnodes,
            node_rank=args.node_rank,
            rdzv_endpoint=args.rdzv_endpoint,
        ),
        usage_errors=(ValueError,),
        failures=(ChildFailed,),
    )


def _evaluation(args: argparse.Namespace) -> EvaluationParams:
    from cogflow.flows.register import EvaluationParams

    chosen = {
        "prompts": args.prompts,
        "seed": args.eval_seed,
        "temperature": args.temperature,
        "top_k": args.top_k,
        "guidance": args.guidance,
        "min_caption_accuracy": args.min_caption_accuracy,
    }
    return EvaluationParams(**{k: v for k, v in chosen.items() if v is not None})


def run_register(args: argparse.Namespace) -> int:
    from cogflow.flows.register import register_flow
    from cogflow.pipeline.settings import load_settings

    settings = load_settings()
    return _report(
        "register",
        lambda: register_flow(stage1=args.stage1, stage2=args.stage2, lake=settings.lake, evaluation=_evaluation(args)),
        usage_errors=(ValueError,),
    )


def run_diagnose(args: argparse.Namespace) -> int:
    from cogflow.model.evaluation.diagnose import DiagnoseConfig, run_diagnosis
    from cogflow.pipeline.settings import load_settings

    settings = load_settings()
    chosen = {
        "prompts": args.prompts,
        "clips": args.clips,
        "seed": args.seed,
        "val_rows": args.val_rows,
        "full_sweep": args.full_sweep,
        "variants": args.variants and tuple(args.variants.split(",")),
        "parts": args.parts and tuple(args.parts.split(",")),
    }
    return _report(
        "diagnose",
        lambda: run_diagnosis(
            settings,
            args.stage1,
            args.stage2,
            DiagnoseConfig(**{k: v for k, v in chosen.items() if v is not None}),
            device=args.device,
            log=lambda line: print(line, flush=True),
        ),
        usage_errors=(ValueError,),
    )


def run_pipeline(args: argparse.Namespace) -> int:
    from cogflow.flows.data_to_model import (
        IngestParams,
        TokenizerParams,
        TrainingParams,
        data_to_model_flow,
    )
    from cogflow.flows.launch import ChildFailed
    from cogflow.pipeline.manifest import ManifestError
    from cogflow.pipeline.settings import load_settings

    settings = load_settings()
    return _report(
        "pipeline",
        lambda: data_to_model_flow(
            lake=settings.lake,
            ingest=IngestParams(manifest=args.manifest),
            tokenizer=TokenizerParams(
                config=args.tokenizer_config, overrides=args.tokenizer_set, vocab_size=args.vocab_size
            ),
            training=TrainingParams(
                config=args.config, stage1=args.stage1_set, stage2=args.stage2_set, nproc=args.nproc
            ),
            evaluation=_evaluation(args),
            task_runner=args.task_runner,
        ),
        usage_errors=(ValueError, ManifestError),
        failures=(ChildFailed,),
    )


def run_demo(args: argparse.Namespace) -> int:
    """The main job on one machine: sample videos -> the whole pipeline -> a registered champion -> a video."""
    from cogflow.flows.demo import DEMO, QUALITY, run_demo

    plan = QUALITY if args.quality else DEMO
    if args.min_caption_accuracy is None:
        args.min_caption_accuracy = plan.min_caption_accuracy
    if args.prompts is None:
        args.prompts = plan.prompts
    for line in run_demo(plan, args.videos, args.prompt, _evaluation(args)):
        print(line, flush=True)
    return 0


def run_generate(args: argparse.Namespace) -> int:
    from cogflow.model.serving.generate import main as generate_main

    return generate_main(args.generate_argv, prog="cogflow generate")


def run_preview(args: argparse.Namespace) -> int:
    from cogflow.pipeline.preview import write_preview
    from cogflow.pipeline.settings import load_settings
    from cogflow.pipeline.storage import Storage

    store = Storage.at(load_settings().lake)
    try:
        out, clips = write_preview(
            store, args.output, clip_ids=args.clip_id, random_n=args.random, stage=args.stage, seed=args.seed
        )
    except (KeyError, LookupError) as exc:
        print(f"cogflow preview: {exc.args[0]}", file=sys.stderr)
        return 2
    for clip in clips:
        print(f"{clip['clip_id']}  stage {clip['stage']}  {clip['fps_token']:<10}  {clip['caption']}")
    print(f"wrote {len(clips)} clips to {out}")
    return 0


def _on_lake(command: str, work: Callable[[Storage], Any]) -> int:
    """Run `work` on the settings' lake and print its summary. No lake there (a typo in --lake must not give a
    report of nothing): one line and exit 2; a part that is no Parquet file, S3 failing or an output that cannot be
    written: one line and exit 1."""
    from botocore.exceptions import BotoCoreError, ClientError
    from pyarrow import ArrowException

    from cogflow.pipeline.settings import load_settings
    from cogflow.pipeline.sources import safe_uri
    from cogflow.pipeline.storage import Storage

    store = Storage.at(load_settings().lake)
    try:
        if not store.list_files(""):
            print(f"cogflow {command}: no lake at {safe_uri(store.root)}: nothing to {command}", file=sys.stderr)
            return 2
        summary = work(store)
    except ArrowException as exc:  # its message names the part
        print(f"cogflow {command}: cannot read the lake: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    except (BotoCoreError, ClientError, OSError) as exc:
        print(f"cogflow {command}: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    print(summary.text())
    return 0


def run_report(args: argparse.Namespace) -> int:
    from cogflow.pipeline.report import write_report

    return _on_lake("report", lambda store: write_report(store, args.output, seed=args.seed))


def run_export(args: argparse.Namespace) -> int:
    from cogflow.pipeline.export import export_webdataset

    return _on_lake(
        "export",
        lambda store: export_webdataset(
            store, Path(args.output), stage=args.stage, split=args.split, shard_mb=args.shard_mb
        ),
    )


def run_repair(args: argparse.Namespace) -> int:
    from botocore.exceptions import BotoCoreError, ClientError
    from pyarrow import ArrowException

    from cogflow.pipeline.lease import LeaseLost
    from cogflow.pipeline.repair import NoLake, repair
    from cogflow.pipeline.settings import load_settings
    from cogflow.pipeline.storage import Storage

    try:
        summary = repair(Storage.at(load_settings().lake))
    except NoLake as exc:
        print(f"cogflow repair: {exc}", file=sys.stderr)
        return 2
    except ArrowException as exc:  # a part that is no Parquet file (its path is in the message): not repair's to fix
        print(f"cogflow repair: cannot read the lake: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    except (LeaseLost, BotoCoreError, ClientError) as exc:
        print(f"cogflow repair: {exc}", file=sys.stderr)
        return 1
    print(summary.text())
    return 1 if summary.check_failure else 0


def run_status(args: argparse.Namespace) -> int:
    """The lake's tables and trained stages; a bad setting is reported in one line (exit 2) without hiding the rest,
    unless it is the lake or home itself."""
    from cogflow.pipeline import lake
    from cogflow.pipeline.contract import fps_token
    from cogflow.pipeline.settings import read_settings
    from cogflow.pipeline.sources import safe_uri
    from cogflow.pipeline.split import clip_counts
    from cogflow.pipeline.storage import Storage

    problems = setting_problems(args)
    for line in problems.values():
        print(f"cogflow status: {line}", file=sys.stderr)
    if {"COGFLOW_LAKE", "COGFLOW_HOME"} & problems.keys():
        return 2
    settings, _ = read_settings()
    store = Storage.at(settings.lake)
    counts = lake.row_counts(store)
    print(f"lake {safe_uri(settings.lake)}")
    width = max(len(name) for name in counts)
    for name, rows in counts.items():
        print(f"  {name:<{width}}  {rows:>10,} rows")
    clips = clip_counts(store)
    if clips:
        print("clips of finished shards")
        for (stage, fps), n in sorted(clips.items()):
            print(f"  stage {stage}  {fps_token(fps):<10}  {n:>10,}")
    records = lake.token_records(store).to_pylist()
    if records:
        print("encoded clips of finished token files")
        encoded: dict[tuple[str, str, int], int] = {}
        for r in records:
            key = (r["frame_tokenizer_version"], r["text_tokenizer_version"], r["stage"])
            encoded[key] = encoded.get(key, 0) + r["clips"]
        for (frames, text, stage), n in sorted(encoded.items()):
            print(f"  tokens/v{frames}  stage {stage}  (text tokenizer v{text})  {n:>10,}")
    _status_stages(settings)
    return 2 if problems else 0


def _status_stages(settings: Settings) -> None:
    """The newest complete training of each stage: what `cogflow generate` uses when not told otherwise."""
    from pathlib import Path

    uri = settings.mlflow_tracking_uri
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        return  # nothing tracked yet (and no database to create just for looking)
    from cogflow.model import tracking

    tracking.use(uri, settings.home)
    found = [
        (stage, tracking.latest_run({"cogflow.kind": f"stage{stage}", "cogflow.complete": "true"})) for stage in (1, 2)
    ]
    if any(run_id for _, run_id in found):
        print("newest complete trainings (what `cogflow generate` uses)")
    for stage, run_id in found:
        if run_id:
            tags = tracking.run_tags(run_id)
            print(
                f"  stage {stage}  MLflow run {run_id}  {tags.get('cogflow.eval_split', 'val')} bits per token "
                f"{float(tags.get('cogflow.val_bits_per_token', 'nan')):.3f}  (tokens/v{tags.get('cogflow.frame_tokenizer_version', '?')})"
            )


def setting_problems(args: argparse.Namespace) -> dict[str, str]:
    """Every setting that holds a value it does not accept, one line each (by environment variable); and for a
    command that uses the lake, whether an S3 lake's bucket can be reached."""
    from cogflow.pipeline.settings import check_lake_reachable, read_settings

    settings, problems = read_settings()
    if "COGFLOW_LAKE" not in problems and ("lake" in vars(args) or args.command == "demo"):
        if (why := check_lake_reachable(settings.lake)) is not None:
            problems["COGFLOW_LAKE"] = f"{'--lake' if getattr(args, 'lake', None) else 'COGFLOW_LAKE'}: {why}"
    return problems
