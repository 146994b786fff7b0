"""The `cogflow` command: a thin layer over the flows and the plain functions in pipeline/.

Settings come from the environment (pipeline/settings.py). Options given here override it by setting the
same environment variables for this process, so the flows, their tasks and every library they call
(boto3, pyarrow) see one consistent set of settings.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import NoReturn

from cogflow.pipeline.settings import (
    ENV_LIMITS,
    FIELD_BY_PATH,
    SettingError,
    Settings,
    lake_problem,
    limit_field,
)


def _sample_data(args: argparse.Namespace) -> int:
    from cogflow.pipeline.sample_data import generate_sample_data

    def progress(done: int, total: int) -> None:
        if sys.stderr.isatty():  # a redrawn line on a terminal; logs get only the result line below
            print(f"\rencoding sample videos {done}/{total}", end="\n" if done == total else "", file=sys.stderr, flush=True)

    manifest = generate_sample_data(args.out_dir, args.videos, seed=args.seed, progress=progress,
                                    min_duration_s=args.min_duration, max_duration_s=args.max_duration)
    print(f"wrote {args.videos} videos and {manifest}")
    return 0


def _report(command: str, run: Callable[[], object], usage_errors: tuple[type[Exception], ...] = (),
            failures: tuple[type[Exception], ...] = ()) -> int:
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


def _ingest(args: argparse.Namespace) -> int:
    from cogflow.flows.ingest import run_ingest
    from cogflow.pipeline.manifest import ManifestError
    from cogflow.pipeline.settings import load_settings

    settings = load_settings()
    return _report("ingest", lambda: run_ingest(
        settings, manifest=args.manifest, lake=settings.lake, video_col=args.video_col,
        caption_col=args.caption_col, retry_rejects=args.retry_rejects, encoding=args.encoding,
    ), usage_errors=(ManifestError,))


def _split(args: argparse.Namespace) -> int:
    from cogflow.flows.split import run_split
    from cogflow.pipeline.settings import load_settings

    settings = load_settings()
    return _report("split", lambda: run_split(
        settings, task_runner=args.task_runner, lake=settings.lake, stage=args.stage, retry_rejects=args.retry_rejects,
    ))


def _tokenize(args: argparse.Namespace) -> int:
    from cogflow.flows.launch import ChildFailed
    from cogflow.flows.tokenize import tokenize_flow
    from cogflow.pipeline.settings import load_settings

    settings = load_settings()
    code = _report("tokenize", lambda: tokenize_flow(
        lake=settings.lake, steps=args.what, vocab_size=args.vocab_size, frame_config=args.config,
        frame_overrides=args.set, nproc=args.nproc, restart=args.restart, frame_tokenizer_version=args.frame_tokenizer,
        text_tokenizer_version=args.text_tokenizer, batch_clips=args.batch_clips,
    ), usage_errors=(ValueError,), failures=(ChildFailed,))
    return code


def _train(args: argparse.Namespace) -> int:
    from cogflow.flows.launch import ChildFailed
    from cogflow.flows.train import train_flow
    from cogflow.pipeline.settings import load_settings

    settings = load_settings()
    return _report("train", lambda: train_flow(
        stage=args.stage, config=args.config, overrides=args.set, lake=settings.lake, nproc=args.nproc,
        frame_tokenizer_version=args.frame_tokenizer, restart=args.restart, resume=args.resume,
    ), usage_errors=(ValueError,), failures=(ChildFailed,))


def _evaluation(args: argparse.Namespace) -> object:
    from cogflow.flows.register import EvaluationParams

    chosen = {"prompts": args.prompts, "seed": args.eval_seed, "temperature": args.temperature, "top_k": args.top_k,
              "guidance": args.guidance, "min_caption_accuracy": args.min_caption_accuracy}
    return EvaluationParams(**{k: v for k, v in chosen.items() if v is not None})


def _register(args: argparse.Namespace) -> int:
    from cogflow.flows.register import register_flow
    from cogflow.pipeline.settings import load_settings

    settings = load_settings()
    return _report("register", lambda: register_flow(stage1=args.stage1, stage2=args.stage2, lake=settings.lake,
                                                     evaluation=_evaluation(args)), usage_errors=(ValueError,))


def _diagnose(args: argparse.Namespace) -> int:
    from cogflow.model.evaluation.diagnose import DiagnoseConfig, run_diagnosis
    from cogflow.pipeline.settings import load_settings

    settings = load_settings()
    chosen = {"prompts": args.prompts, "clips": args.clips, "seed": args.seed, "val_rows": args.val_rows,
              "full_sweep": args.full_sweep, "variants": args.variants and tuple(args.variants.split(",")),
              "parts": args.parts and tuple(args.parts.split(","))}
    return _report("diagnose", lambda: run_diagnosis(
        settings, args.stage1, args.stage2, DiagnoseConfig(**{k: v for k, v in chosen.items() if v is not None}),
        device=args.device, log=lambda line: print(line, flush=True)), usage_errors=(ValueError,))


def _pipeline(args: argparse.Namespace) -> int:
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
    return _report("pipeline", lambda: data_to_model_flow(
        lake=settings.lake, ingest=IngestParams(manifest=args.manifest),
        tokenizer=TokenizerParams(config=args.tokenizer_config, overrides=args.tokenizer_set, vocab_size=args.vocab_size),
        training=TrainingParams(config=args.config, stage1=args.stage1_set, stage2=args.stage2_set, nproc=args.nproc),
        evaluation=_evaluation(args),
    ), usage_errors=(ValueError, ManifestError), failures=(ChildFailed,))


DEMO_PROMPT = "一个红色的圆形在米色背景上从左向右移动。"  # "a red circle moves from left to right on a beige background"


def _demo(args: argparse.Namespace) -> int:
    """The main job on one machine: sample videos -> the whole pipeline -> a registered champion -> a video."""
    from pathlib import Path

    from cogflow.flows.data_to_model import (
        IngestParams,
        TokenizerParams,
        TrainingParams,
        data_to_model_flow,
    )
    from cogflow.model.serving.generate import generate_from_model
    from cogflow.pipeline.settings import load_settings
    from cogflow.pipeline.storage import safe_uri

    plan = QUALITY if args.quality else DEMO
    if args.quality:  # $COGFLOW_HOME/quality, so the two demos' lakes and models never mix
        os.environ["COGFLOW_HOME"] = str(Path(os.environ.get("COGFLOW_HOME", ".cogflow")) / "quality")
    for name, value in plan.env.items():  # the demo's sizes, unless the user chose others
        os.environ.setdefault(name, value)
    settings = load_settings()
    home = Path(settings.home)
    sample = home / "sample"
    videos = args.videos or plan.videos
    if not (sample / "manifest.csv").exists():
        _sample_data(argparse.Namespace(out_dir=sample, videos=videos, seed=0, min_duration=plan.seconds[0],
                                        max_duration=plan.seconds[1]))
    print(f"the whole pipeline on {videos} sample videos (ingest, split, tokenize, train both stages, evaluate "
          f"{plan.prompts} held-out prompts, register); it shows its progress and takes about {plan.minutes} minutes "
          f"on 2 cores", flush=True)
    if args.min_caption_accuracy is None:
        args.min_caption_accuracy = plan.min_caption_accuracy
    if args.prompts is None:
        args.prompts = plan.prompts
    summary = data_to_model_flow(
        lake=settings.lake, ingest=IngestParams(manifest=str(sample / "manifest.csv")),
        tokenizer=TokenizerParams(config=plan.tokenizer_config),
        training=TrainingParams(config=plan.training_config, stage2=list(plan.stage2)),
        evaluation=_evaluation(args))
    print(summary.text())
    register = summary.register
    alias = "champion" if register.champion else "candidate"
    uri = f"models:/cogflow-t2v@{alias}"
    out = home / "demo.mp4"
    made = generate_from_model(settings, uri, args.prompt, out, frames_out=home / "demo.png", progress=False)
    tracking_uri = settings.mlflow_tracking_uri
    print()
    print(f"registered: cogflow-t2v v{register.versions['cogflow-t2v']} "
          + ("is the champion" if register.promoted else f"did not pass the gate ({'; '.join(register.reasons)})"))
    print(f"video:      {made.path} ({made.frames} frames at {made.fps:g} fps) for \"{args.prompt}\", "
          f"made by {uri}; every frame in {made.frames_out}")
    if register.evaluation is not None:
        print(f"evaluation: {len(register.evaluation.videos)} videos for held-out prompts in "
              f"{register.evaluation_dir} (sheet.png)")
    e = register.evaluation
    if e is not None and e.following is not None:
        f = e.following
        fields = ", ".join(f"{k} {v:.0%} (chance {f.chance[k]:.0%})" for k, v in f.accuracy.items())
        print(f"caption following: {f.mean:.0%} against {f.mean_chance:.0%} by chance ({fields}), "
              f"read back from {f.n} generated videos")
    elif (following := register.caption_following()) is not None:
        print(f"caption following: {following[0]:.0%} against {following[1]:.0%} by chance (recorded when "
              f"v{register.versions['cogflow-t2v']} was registered)")
    print(f"            the gate asks for {args.min_caption_accuracy:.0%}; `cogflow diagnose` says why a model does or "
          f"does not follow its captions")
    if tracking_uri.startswith("sqlite:"):
        print(f"MLflow UI:  {sys.executable.rsplit('/', 1)[0]}/mlflow ui --backend-store-uri {tracking_uri} "
              f"--port 5000, then open http://127.0.0.1:5000")
    else:
        print(f"MLflow UI:  {safe_uri(tracking_uri)}")
    return 0


@dataclass(frozen=True)
class DemoPlan:
    """What a demo runs: the sample data, the configs of the tokenizer and both stages, the evaluation and its gate."""

    videos: int
    seconds: tuple[float, float]  # sample video durations
    env: dict[str, str]  # settings the demo sets unless the user did
    tokenizer_config: str  # model/configs/frame_tokenizer/<name>.toml
    training_config: str  # model/configs/cogvideo/<name>.toml
    stage2: tuple[str, ...]  # overrides for stage 2 (it starts from stage 1, so it needs fewer steps)
    prompts: int  # held-out prompts the registration makes a video for and reads back
    min_caption_accuracy: float  # the gate
    minutes: int  # about how long it takes on 2 cores, install excluded


# The demo: 4 to 7.5 s videos, so every caption's key-frame clip is at 1 fps, the rate stage 1 generates at (a 5-frame
# window at 1 fps spans 4 s; a span of 8 s or more would take 0.5 fps instead). One interpolation window per rate and
# caption. 96 held-out prompts: a share read back from 96 videos is known to about +-10 points. The gate asks for a
# mean of 30% (chance 19%): the demo reached 41% (colour 88%) from a fresh clone; what it reaches is in the README.
DEMO = DemoPlan(videos=288, seconds=(4.0, 7.5), env={"COGFLOW_STAGE2_WINDOWS": "1"}, tokenizer_config="demo",
                training_config="demo", stage2=("train.steps=200",), prompts=96, min_caption_accuracy=0.3, minutes=12)
# The longer run (`cogflow demo --quality`): more videos, and the tokenizer and both stages trained longer. It reached
# a mean of 69% (colour 93%, shape 76%, motion 40%) in 47 minutes from a fresh clone; the gate asks for 50%.
QUALITY = DemoPlan(videos=576, seconds=(4.0, 7.5), env={"COGFLOW_STAGE2_WINDOWS": "1"}, tokenizer_config="quality",
                   training_config="quality", stage2=("train.steps=1000",), prompts=96, min_caption_accuracy=0.5, minutes=47)


def _add_evaluation_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompts", type=_positive, help="held-out prompts to make a video for (default 24)")
    p.add_argument("--eval-seed", type=int, help="seed of the evaluation videos (default 0)")
    p.add_argument("--temperature", type=float, help="sampling temperature (default: each stage's [generate] table)")
    p.add_argument("--top-k", type=int, help="sampling top-k (default: each stage's [generate] table)")
    p.add_argument("--guidance", type=float, help="stage-1 classifier-free guidance (default: the stage's table)")
    p.add_argument("--min-caption-accuracy", type=float,
                   help="gate: mean caption-following accuracy needed to become champion (default 0.3; chance is 0.19)")


def _generate(args: argparse.Namespace) -> int:
    from cogflow.model.serving.generate import main as generate_main

    return generate_main(args.generate_argv, prog="cogflow generate")


def _preview(args: argparse.Namespace) -> int:
    from cogflow.pipeline.preview import find_font, write_preview
    from cogflow.pipeline.settings import load_settings
    from cogflow.pipeline.storage import Storage

    store = Storage.at(load_settings().lake)
    try:
        out, clips = write_preview(store, args.output, clip_ids=args.clip_id, random_n=args.random, stage=args.stage, seed=args.seed)
    except (KeyError, LookupError) as exc:
        print(f"cogflow preview: {exc.args[0]}", file=sys.stderr)
        return 2
    for clip in clips:
        print(f"{clip['clip_id']}  stage {clip['stage']}  {clip['fps_token']:<10}  {clip['caption']}")
    if any(ord(ch) > 0x2E7F for clip in clips for ch in clip["caption"]) and "dejavu" in str(find_font()).lower():
        print("note: no CJK font found, Chinese shows as boxes (install fonts-wqy-microhei or set COGFLOW_FONT)", file=sys.stderr)
    print(f"wrote {len(clips)} clips to {out}")
    return 0


def _repair(args: argparse.Namespace) -> int:
    from botocore.exceptions import BotoCoreError, ClientError
    from cogflow.pipeline.lease import LeaseLost
    from cogflow.pipeline.repair import NoLake, repair
    from cogflow.pipeline.settings import load_settings
    from cogflow.pipeline.storage import Storage
    from pyarrow import ArrowException

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


def _status(args: argparse.Namespace) -> int:
    """The lake's tables and trained stages; a bad setting is reported in one line (exit 2) without hiding the rest,
    unless it is the lake or home itself."""
    from cogflow.pipeline import lake
    from cogflow.pipeline.settings import read_settings
    from cogflow.pipeline.contract import fps_token
    from cogflow.pipeline.split import clip_counts
    from cogflow.pipeline.storage import Storage, safe_uri

    problems = _setting_problems(args)
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
    found = [(stage, tracking.latest_run({"cogflow.kind": f"stage{stage}", "cogflow.complete": "true"})) for stage in (1, 2)]
    if any(run_id for _, run_id in found):
        print("newest complete trainings (what `cogflow generate` uses)")
    for stage, run_id in found:
        if run_id:
            tags = tracking.run_tags(run_id)
            print(f"  stage {stage}  MLflow run {run_id}  {tags.get('cogflow.eval_split', 'val')} bits per token "
                  f"{float(tags.get('cogflow.val_bits_per_token', 'nan')):.3f}  (tokens/v{tags.get('cogflow.frame_tokenizer_version', '?')})")


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, not {text!r}")
    return int(text)


def _limit(text: str) -> tuple[str, str]:
    """NAME=VALUE, the value checked as its setting accepts it (units: max_bytes=2GB, max_duration_s=2h)."""
    name, sep, value = text.partition("=")
    if not sep or name not in ENV_LIMITS:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE with NAME one of {', '.join(ENV_LIMITS)}, not {text!r}")
    field = limit_field(name)
    try:
        return name, str(field.parse(value))
    except SettingError:
        raise argparse.ArgumentTypeError(f"{name}: expected {field.accepts()}, not {value!r}") from None


def _setting(path: str) -> Callable[[str], int]:
    """An argparse type that checks an option as its setting (pipeline/settings.py FIELDS) accepts it."""
    field = FIELD_BY_PATH[path]

    def parse(text: str) -> int:
        try:
            return field.parse(text)
        except SettingError:
            raise argparse.ArgumentTypeError(f"expected {field.accepts()}, not {text!r}") from None

    return parse


def _lake_option(text: str) -> str:
    if (why := lake_problem(text)) is not None:
        raise argparse.ArgumentTypeError(f"expected a folder or s3://bucket/prefix, but {why}")
    return text


def _setting_problems(args: argparse.Namespace) -> dict[str, str]:
    """Every setting that holds a value it does not accept, one line each (by environment variable); and for a
    command that uses the lake, whether an S3 lake's bucket can be reached."""
    from cogflow.pipeline.settings import check_lake_reachable, read_settings

    settings, problems = read_settings()
    if "COGFLOW_LAKE" not in problems and ("lake" in vars(args) or args.command == "demo"):
        if (why := check_lake_reachable(settings.lake)) is not None:
            problems["COGFLOW_LAKE"] = f"{'--lake' if getattr(args, 'lake', None) else 'COGFLOW_LAKE'}: {why}"
    return problems


def _settle_prefect_events(started: datetime, timeout_s: float = 30.0) -> None:
    """Before this process exits and with it Prefect's temporary server, wait until that server has recorded the
    task runs of this command.

    Task-run states reach the server as events, which it writes one by one; under load it falls behind the flow.
    At exit Prefect stops the temporary server, cancelling the write in flight ("Error flushing events" and a
    traceback on a successful run) and dropping the events still queued (task runs left Running in its history).
    So: send the events still buffered here, then poll the server until the task runs of this command's flow runs
    are all final and their count stops changing (or nothing changes for a second, as when a crash left some
    unfinished). Nothing to do when no temporary server was started (a Prefect server at PREFECT_API_URL keeps
    running, and commands without flows start none)."""
    server_module = sys.modules.get("prefect.server.api.server")
    servers = getattr(getattr(server_module, "SubprocessASGIServer", None), "_instances", {})
    server = next((s for s in servers.values() if s.running and s.server_process is not None), None)
    if server is None:
        return
    import httpx
    from prefect.events.worker import EventsWorker

    EventsWorker.drain_all()
    unfinished = {"state": {"type": {"any_": ["SCHEDULED", "PENDING", "RUNNING", "PAUSED", "CANCELLING"]}}}
    flow_runs = {"start_time": {"after_": started.isoformat()}}
    seen: list[tuple[int, int]] = []
    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=server.api_url, timeout=5) as client:
        while time.monotonic() < deadline:
            try:
                total = client.post("/task_runs/count", json={"flow_runs": flow_runs}).raise_for_status().json()
                open_ = client.post("/task_runs/count", json={"flow_runs": flow_runs, "task_runs": unfinished}
                                    ).raise_for_status().json()
            except (httpx.HTTPError, ValueError):
                return  # the server is gone or answers otherwise: nothing to wait for
            if not isinstance(total, int) or not isinstance(open_, int):
                return
            seen.append((total, open_))
            if (open_ == 0 and seen[-2:] == [seen[-1]] * 2) or seen[-5:] == [seen[-1]] * 5:
                return
            time.sleep(0.2)


def apply_options(args: argparse.Namespace) -> None:
    """Command-line options win over the environment: write them into it."""
    chosen = {
        "COGFLOW_HOME": args.home,
        "COGFLOW_LAKE": getattr(args, "lake", None),
        "COGFLOW_PROBE_WORKERS": getattr(args, "workers", None),
        "COGFLOW_SPLIT_WORKERS": getattr(args, "split_workers", None),
        "MLFLOW_TRACKING_URI": args.mlflow_tracking_uri,
        "AWS_ENDPOINT_URL_S3": args.s3_endpoint,
    }
    chosen.update({ENV_LIMITS[name]: value for name, value in args.limit})
    os.environ.update({k: str(v) for k, v in chosen.items() if v is not None})


class _Parser(argparse.ArgumentParser):
    """A usage error is one line (what is wrong, where to read more) and exit code 2, like every user error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="cogflow", description="Captioned videos in, a CogVideo-style model out.")
    parser.add_argument("--home", help="working folder (default $COGFLOW_HOME or .cogflow)")
    parser.add_argument("--mlflow-tracking-uri", help="default $MLFLOW_TRACKING_URI or sqlite:///$COGFLOW_HOME/mlflow.db")
    parser.add_argument("--s3-endpoint", help="S3-compatible endpoint URL (default $AWS_ENDPOINT_URL_S3 / $AWS_ENDPOINT_URL)")
    parser.add_argument(
        "--limit", type=_limit, action="append", default=[], metavar="NAME=VALUE",
        help=f"override an ingest limit, e.g. max_bytes=2GB or max_duration_s=2h (names: {', '.join(ENV_LIMITS)})",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("sample-data", help="write N synthetic captioned videos and a manifest.csv")
    p.add_argument("out_dir")
    p.add_argument("--videos", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-duration", type=float, default=2.0, help="shortest video in seconds (default 2)")
    p.add_argument("--max-duration", type=float, default=12.0, help="longest video in seconds (default 12)")
    p.set_defaults(run=_sample_data)

    p = commands.add_parser("ingest", help="ingest a manifest (CSV, JSONL, Parquet, SRT, WebVTT) into the lake")
    p.add_argument("manifest", help="local path, file://, s3:// or http(s):// URL")
    p.add_argument("--lake", type=_lake_option, help="lake root: a folder or s3://bucket/prefix (default $COGFLOW_LAKE or $COGFLOW_HOME/lake)")
    p.add_argument("--video-col", default="video", help="manifest column holding the video (default: video)")
    p.add_argument("--caption-col", default="caption", help="manifest column holding the caption (default: caption)")
    p.add_argument("--workers", type=_setting("probe_workers"), help="videos probed in parallel (default $COGFLOW_PROBE_WORKERS or 4)")
    p.add_argument("--retry-rejects", action="store_true", help="probe again sources rejected by an earlier run")
    p.add_argument("--encoding", help="a CSV/JSONL manifest's text encoding, any Python codec name such as gb18030 "
                   "(default: UTF-8, or UTF-16 by its byte order mark)")
    p.set_defaults(run=_ingest)

    p = commands.add_parser("split", help="cut the lake's captioned videos into 5-frame 160x160 clips")
    p.add_argument("--lake", type=_lake_option, help="lake root: a folder or s3://bucket/prefix")
    p.add_argument("--stage", default="all", choices=["1", "2", "all"], help="plan windows for stage 1, 2 or both (default)")
    p.add_argument("--workers", dest="split_workers", type=_setting("split.workers"), help="shards split at once (default $COGFLOW_SPLIT_WORKERS or the cores)")
    p.add_argument(
        "--task-runner", default="threads",
        help="threads (default; each shard decodes in its own process), processes, dask or ray; "
        "dask://HOST:PORT or ray://HOST:PORT for a running cluster",
    )
    p.add_argument("--retry-rejects", action="store_true", help="plan again the clips that failed to decode (missing files, timeouts, ...)")
    p.set_defaults(run=_split)

    p = commands.add_parser("tokenize", help="train the tokenizers from the lake, register them in MLflow, encode every clip")
    p.add_argument("what", nargs="?", default="all",
                   help="all (default), or any of text, frames, encode (comma-separated): text trains the SentencePiece "
                        "caption tokenizer, frames the VQ-VAE frame tokenizer, encode writes tokens/<version>/ rows")
    p.add_argument("--lake", type=_lake_option)
    p.add_argument("--vocab-size", type=_positive, default=16000, help="text pieces wanted (a small corpus gets fewer; default 16000)")
    p.add_argument("--config", default="demo", help="frame tokenizer config: debug, demo, base or a .toml file (default demo)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a frame tokenizer config key, e.g. train.steps=600")
    p.add_argument("--nproc", type=_positive, default=1, help="training processes (torchrun --standalone when more than 1)")
    p.add_argument("--restart", action="store_true", help="ignore a checkpoint of the same frame tokenizer training")
    p.add_argument("--frame-tokenizer", help="encode with this version of cogflow-frame-tokenizer (default: trained now, or newest)")
    p.add_argument("--text-tokenizer", help="encode with this version of cogflow-text-tokenizer (default: trained now, or newest)")
    p.add_argument("--batch-clips", type=_positive, default=16, help="clips per frame tokenizer batch when encoding")
    p.set_defaults(run=_tokenize)

    p = commands.add_parser("train", help="train CogVideo stage 1 (key frames) or 2 (interpolation) on the lake's token shards")
    p.add_argument("--stage", type=int, choices=[1, 2], required=True)
    p.add_argument("--config", default="demo", help="debug, demo, base, paper or a .toml file (default demo)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key, e.g. train.steps=600")
    p.add_argument("--lake", type=_lake_option)
    p.add_argument("--nproc", type=_positive, help="training processes (torchrun --standalone when more than 1; default: one per GPU, or 1)")
    p.add_argument("--frame-tokenizer", help="train on the tokens of this frame tokenizer version (default: newest)")
    p.add_argument("--resume", action="store_true", help="continue this training from its checkpoint (an error when there is none)")
    p.add_argument("--restart", action="store_true", help="ignore a checkpoint of this training and start over")
    p.set_defaults(run=_train)

    p = commands.add_parser("register", help="evaluate a trained pair of stages, register them in MLflow, "
                                             "make them champion if they pass the gate")
    p.add_argument("--stage1", help="MLflow run of stage 1 (default: the newest complete one)")
    p.add_argument("--stage2", help="MLflow run of stage 2 (default: the newest complete one)")
    p.add_argument("--lake", type=_lake_option)
    _add_evaluation_options(p)
    p.set_defaults(run=_register)

    p = commands.add_parser("diagnose", help="why a trained pair does or does not follow its captions: caption "
                                             "following with intervals, a sampling sweep, the frame tokenizer's "
                                             "ceiling, baselines, background bits, a layout check")
    p.add_argument("--stage1", help="stage 1 as for `cogflow generate` (default: the newest complete run)")
    p.add_argument("--stage2", help="the same for stage 2")
    p.add_argument("--lake", type=_lake_option)
    p.add_argument("--prompts", type=_positive, help="prompts to make videos for, half val captions, half unseen "
                                                    "sample-world captions (default 96)")
    p.add_argument("--clips", type=_positive, help="real stage-1 clips for the frame tokenizer's ceiling (default 48)")
    p.add_argument("--variants", help="comma-separated sampling variants, each 'default' or KEY=VALUE[+KEY=VALUE] "
                                      "(default: default,guidance=3,temperature=0.3)")
    p.add_argument("--full-sweep", action="store_true", help="33-frame videos for every variant (default: the first "
                                                             "only, stage 1's key frames for the others)")
    p.add_argument("--seed", type=int, help="sampling seed (default 0)")
    p.add_argument("--val-rows", type=_positive, help="val token rows per stage for the teacher-forced parts (default 64)")
    p.add_argument("--parts", help="comma-separated subset of following,tokenizer,neighbour,retrieval,bits,layout "
                                   "(default: all)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when there is one)")
    p.set_defaults(run=_diagnose)

    p = commands.add_parser("pipeline", help="the whole data-to-model flow: ingest, split, tokenize, train both "
                                             "stages, evaluate and register (each step skips work already done)")
    p.add_argument("manifest", nargs="?", help="a manifest to ingest first (default: work on what the lake holds)")
    p.add_argument("--lake", type=_lake_option)
    p.add_argument("--config", default="demo", help="CogVideo config of both stages (default demo)")
    p.add_argument("--stage1-set", action="append", default=[], metavar="KEY=VALUE", help="override a stage-1 config key")
    p.add_argument("--stage2-set", action="append", default=[], metavar="KEY=VALUE", help="override a stage-2 config key")
    p.add_argument("--tokenizer-config", default="demo", help="frame tokenizer config (default demo)")
    p.add_argument("--tokenizer-set", action="append", default=[], metavar="KEY=VALUE", help="override a frame tokenizer config key")
    p.add_argument("--vocab-size", type=_positive, default=16000, help="text pieces wanted (default 16000)")
    p.add_argument("--nproc", type=_positive, help="training processes (default: one per GPU, or 1)")
    _add_evaluation_options(p)
    p.set_defaults(run=_pipeline)

    p = commands.add_parser("demo", help="the main job: sample videos through the whole pipeline to a registered "
                                         "champion and a generated video (about 12 minutes on 2 cores)")
    p.add_argument("--videos", type=_positive, help=f"sample videos to write (default {DEMO.videos}, "
                                                   f"{QUALITY.videos} with --quality)")
    p.add_argument("--quality", action="store_true", help=f"the longer run (about {QUALITY.minutes} minutes on 2 cores, in "
                                                          f"$COGFLOW_HOME/quality): more videos, longer training")
    p.add_argument("--prompt", default=DEMO_PROMPT, help="the caption of the video made at the end")
    _add_evaluation_options(p)
    p.set_defaults(run=_demo)

    # Its options are model.generate's own (`cogflow generate --help`), passed through untouched.
    p = commands.add_parser("generate", help="a video from a sentence, with the newest trained stages (or the ones named)", add_help=False)
    p.set_defaults(run=_generate)

    p = commands.add_parser("preview", help="write a contact sheet of clips (frames in a row, caption beneath)")
    p.add_argument("--lake", type=_lake_option)
    p.add_argument("--clip-id", action="append", help="a clip to show (repeatable)")
    p.add_argument("--random", type=_positive, help="show N clips drawn at random, from every stage and rate in turn (default 8)")
    p.add_argument("--stage", type=int, choices=[1, 2], help="draw only from this stage")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", default="clips.png", help="image file to write (PNG or JPEG)")
    p.set_defaults(run=_preview)

    p = commands.add_parser("repair", help="remove what a failed or raced write left in the lake: duplicate keys, files "
                                           "without a completion record, orphan .tmp-* files (each removal printed)")
    p.add_argument("--lake", type=_lake_option, help="lake root: a folder or s3://bucket/prefix")
    p.set_defaults(run=_repair)

    p = commands.add_parser("status", help="row counts of every lake table, clips per stage and frame rate, tokens, trained stages")
    p.add_argument("--lake", type=_lake_option)
    p.set_defaults(run=_status)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "generate":
        args.generate_argv = extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    apply_options(args)
    # No telemetry from a local Prefect server on machines without internet, unless the user decided otherwise.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # Every setting is checked before any work: a bad one is a line naming it, not a traceback after an hour.
    # `status` reports them among what it shows; sample-data reads none.
    if args.command not in ("sample-data", "status"):
        problems = _setting_problems(args)
        for line in problems.values():
            print(f"cogflow {args.command}: {line}", file=sys.stderr)
        if problems:
            return 2
    started = datetime.now(timezone.utc)
    code = args.run(args)
    _settle_prefect_events(started)
    return code


if __name__ == "__main__":
    sys.exit(main())
