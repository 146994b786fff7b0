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
from datetime import UTC, datetime
from typing import TYPE_CHECKING, NoReturn

from cogflow.flows import commands as command
from cogflow.pipeline.settings import (
    ENV_LIMITS,
    FIELD_BY_PATH,
    SettingError,
    lake_problem,
    limit_field,
)

if TYPE_CHECKING:  # the flows load when a command runs, not when the command line is parsed
    pass


def _add_evaluation_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompts", type=_positive, help="held-out prompts to make a video for (default 24)")
    p.add_argument("--eval-seed", type=int, help="seed of the evaluation videos (default 0)")
    p.add_argument("--temperature", type=float, help="sampling temperature (default: each stage's [generate] table)")
    p.add_argument("--top-k", type=int, help="sampling top-k (default: each stage's [generate] table)")
    p.add_argument("--guidance", type=float, help="stage-1 classifier-free guidance (default: the stage's table)")
    p.add_argument(
        "--min-caption-accuracy",
        type=float,
        help="gate: mean caption-following accuracy needed to become champion (default 0.3; chance is 0.19)",
    )


def _lake_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--lake",
        type=_lake_option,
        help="lake root: a folder or s3://bucket/prefix (default $COGFLOW_LAKE or $COGFLOW_HOME/lake)",
    )


def _task_runner_option(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument(
        "--task-runner",
        default="threads",
        help=f"{default}, processes, dask or ray; dask://HOST:PORT or ray://HOST:PORT for a running cluster",
    )


def _node_options(p: argparse.ArgumentParser) -> None:
    """A training over several machines: the same command on each, with its --node-rank (torchrun's c10d rendezvous)."""
    p.add_argument("--nnodes", type=_positive, default=1, help="machines in the training job (default 1)")
    p.add_argument("--node-rank", type=int, default=0, help="this machine's place among them, 0..nnodes-1")
    p.add_argument(
        "--rdzv-endpoint", metavar="HOST:PORT", help="where the machines meet: node 0's address and a free port"
    )


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
                open_ = (
                    client.post("/task_runs/count", json={"flow_runs": flow_runs, "task_runs": unfinished})
                    .raise_for_status()
                    .json()
                )
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
    parser.add_argument(
        "--mlflow-tracking-uri", help="default $MLFLOW_TRACKING_URI or sqlite:///$COGFLOW_HOME/mlflow.db"
    )
    parser.add_argument(
        "--s3-endpoint", help="S3-compatible endpoint URL (default $AWS_ENDPOINT_URL_S3 / $AWS_ENDPOINT_URL)"
    )
    parser.add_argument(
        "--limit",
        type=_limit,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help=f"override an ingest limit, e.g. max_bytes=2GB or max_duration_s=2h (names: {', '.join(ENV_LIMITS)})",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("sample-data", help="write N synthetic captioned videos and a manifest.csv")
    p.add_argument("out_dir")
    p.add_argument("--videos", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-duration", type=float, default=2.0, help="shortest video in seconds (default 2)")
    p.add_argument("--max-duration", type=float, default=12.0, help="longest video in seconds (default 12)")
    p.set_defaults(run=command.run_sample_data)

    p = commands.add_parser(
        "ingest", help="ingest a manifest (CSV, JSONL, Parquet, SRT, WebVTT, or WebDataset tars) into the lake"
    )
    p.add_argument(
        "manifest", help="local path, file://, s3:// or http(s):// URL; a folder or s3://.../ prefix of WebDataset tars"
    )
    _lake_argument(p)
    p.add_argument("--video-col", default="video", help="manifest column holding the video (default: video)")
    p.add_argument("--caption-col", default="caption", help="manifest column holding the caption (default: caption)")
    p.add_argument(
        "--workers",
        type=_setting("probe_workers"),
        help="videos probed in parallel (default $COGFLOW_PROBE_WORKERS or 4)",
    )
    p.add_argument("--retry-rejects", action="store_true", help="probe again sources rejected by an earlier run")
    p.add_argument(
        "--encoding",
        help="a CSV/JSONL manifest's text encoding, any Python codec name such as gb18030 "
        "(default: UTF-8, or UTF-16 by its byte order mark)",
    )
    _task_runner_option(p, "threads (default; each probe runs in its own process)")
    p.set_defaults(run=command.run_ingest)

    p = commands.add_parser("split", help="cut the lake's captioned videos into 5-frame 160x160 clips")
    p.add_argument("--lake", type=_lake_option, help="lake root: a folder or s3://bucket/prefix")
    p.add_argument(
        "--stage", default="all", choices=["1", "2", "all"], help="plan windows for stage 1, 2 or both (default)"
    )
    p.add_argument(
        "--workers",
        dest="split_workers",
        type=_setting("split.workers"),
        help="shards split at once (default $COGFLOW_SPLIT_WORKERS or the cores)",
    )
    _task_runner_option(p, "threads (default; each shard decodes in its own process)")
    p.add_argument(
        "--retry-rejects",
        action="store_true",
        help="plan again the clips that failed to decode (missing files, timeouts, ...)",
    )
    p.set_defaults(run=command.run_split)

    p = commands.add_parser(
        "tokenize", help="train the tokenizers from the lake, register them in MLflow, encode every clip"
    )
    p.add_argument(
        "what",
        nargs="?",
        default="all",
        help="all (default), or any of text, frames, encode (comma-separated): text trains the SentencePiece "
        "caption tokenizer, frames the VQ-VAE frame tokenizer, encode writes tokens/<version>/ rows",
    )
    p.add_argument("--lake", type=_lake_option)
    p.add_argument(
        "--vocab-size",
        type=_positive,
        default=16000,
        help="text pieces wanted (a small corpus gets fewer; default 16000)",
    )
    p.add_argument(
        "--config", default="demo", help="frame tokenizer config: debug, demo, base or a .toml file (default demo)"
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a frame tokenizer config key, e.g. train.steps=600",
    )
    p.add_argument(
        "--nproc", type=_positive, default=1, help="training processes (torchrun --standalone when more than 1)"
    )
    p.add_argument("--restart", action="store_true", help="ignore a checkpoint of the same frame tokenizer training")
    p.add_argument(
        "--frame-tokenizer",
        help="encode with this version of cogflow-frame-tokenizer (default: trained now, or newest)",
    )
    p.add_argument(
        "--text-tokenizer", help="encode with this version of cogflow-text-tokenizer (default: trained now, or newest)"
    )
    p.add_argument("--batch-clips", type=_positive, default=16, help="clips per frame tokenizer batch when encoding")
    p.add_argument(
        "--encode-workers", type=_positive, default=1, help="workers sharing out the clip files to encode (default 1)"
    )
    _task_runner_option(p, "threads (default)")
    _node_options(p)
    p.set_defaults(run=command.run_tokenize)

    p = commands.add_parser(
        "train", help="train CogVideo stage 1 (key frames) or 2 (interpolation) on the lake's token shards"
    )
    p.add_argument("--stage", type=int, choices=[1, 2], required=True)
    p.add_argument("--config", default="demo", help="debug, demo, base, paper or a .toml file (default demo)")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key, e.g. train.steps=600"
    )
    p.add_argument("--lake", type=_lake_option)
    p.add_argument(
        "--nproc",
        type=_positive,
        help="training processes (torchrun --standalone when more than 1; default: one per GPU, or 1)",
    )
    p.add_argument("--frame-tokenizer", help="train on the tokens of this frame tokenizer version (default: newest)")
    p.add_argument(
        "--resume", action="store_true", help="continue this training from its checkpoint (an error when there is none)"
    )
    p.add_argument("--restart", action="store_true", help="ignore a checkpoint of this training and start over")
    _node_options(p)
    p.set_defaults(run=command.run_train)

    p = commands.add_parser(
        "register",
        help="evaluate a trained pair of stages, register them in MLflow, make them champion if they pass the gate",
    )
    p.add_argument("--stage1", help="MLflow run of stage 1 (default: the newest complete one)")
    p.add_argument("--stage2", help="MLflow run of stage 2 (default: the newest complete one)")
    p.add_argument("--lake", type=_lake_option)
    _add_evaluation_options(p)
    p.set_defaults(run=command.run_register)

    p = commands.add_parser(
        "diagnose",
        help="why a trained pair does or does not follow its captions: caption "
        "following with intervals, a sampling sweep, the frame tokenizer's "
        "ceiling, baselines, background bits, a layout check",
    )
    p.add_argument("--stage1", help="stage 1 as for `cogflow generate` (default: the newest complete run)")
    p.add_argument("--stage2", help="the same for stage 2")
    p.add_argument("--lake", type=_lake_option)
    p.add_argument(
        "--prompts",
        type=_positive,
        help="prompts to make videos for, half val captions, half unseen sample-world captions (default 96)",
    )
    p.add_argument("--clips", type=_positive, help="real stage-1 clips for the frame tokenizer's ceiling (default 48)")
    p.add_argument(
        "--variants",
        help="comma-separated sampling variants, each 'default' or KEY=VALUE[+KEY=VALUE] "
        "(default: default,guidance=3,temperature=0.3)",
    )
    p.add_argument(
        "--full-sweep",
        action="store_true",
        help="33-frame videos for every variant (default: the first only, stage 1's key frames for the others)",
    )
    p.add_argument("--seed", type=int, help="sampling seed (default 0)")
    p.add_argument(
        "--val-rows", type=_positive, help="val token rows per stage for the teacher-forced parts (default 64)"
    )
    p.add_argument(
        "--parts", help="comma-separated subset of following,tokenizer,neighbour,retrieval,bits,layout (default: all)"
    )
    p.add_argument("--device", help="cpu or cuda (default: cuda when there is one)")
    p.set_defaults(run=command.run_diagnose)

    p = commands.add_parser(
        "pipeline",
        help="the whole data-to-model flow: ingest, split, tokenize, train both "
        "stages, evaluate and register (each step skips work already done)",
    )
    p.add_argument("manifest", nargs="?", help="a manifest to ingest first (default: work on what the lake holds)")
    p.add_argument("--lake", type=_lake_option)
    p.add_argument("--config", default="demo", help="CogVideo config of both stages (default demo)")
    p.add_argument(
        "--stage1-set", action="append", default=[], metavar="KEY=VALUE", help="override a stage-1 config key"
    )
    p.add_argument(
        "--stage2-set", action="append", default=[], metavar="KEY=VALUE", help="override a stage-2 config key"
    )
    p.add_argument("--tokenizer-config", default="demo", help="frame tokenizer config (default demo)")
    p.add_argument(
        "--tokenizer-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a frame tokenizer config key",
    )
    p.add_argument("--vocab-size", type=_positive, default=16000, help="text pieces wanted (default 16000)")
    p.add_argument("--nproc", type=_positive, help="training processes (default: one per GPU, or 1)")
    _add_evaluation_options(p)
    _task_runner_option(p, "threads (default): what ingest's probes and split's shards fan out on")
    p.set_defaults(run=command.run_pipeline)

    p = commands.add_parser(
        "demo",
        help="the main job: sample videos through the whole pipeline to a registered "
        "champion and a generated video (about 12 minutes on 2 cores)",
    )
    from cogflow.flows.demo import DEMO, DEMO_PROMPT, QUALITY

    p.add_argument(
        "--videos",
        type=_positive,
        help=f"sample videos to write (default {DEMO.videos}, {QUALITY.videos} with --quality)",
    )
    p.add_argument(
        "--quality",
        action="store_true",
        help=f"the longer run (about {QUALITY.minutes} minutes on 2 cores, in "
        f"$COGFLOW_HOME/quality): more videos, longer training",
    )
    p.add_argument("--prompt", default=DEMO_PROMPT, help="the caption of the video made at the end")
    _add_evaluation_options(p)
    p.set_defaults(run=command.run_demo)

    # Its options are model.generate's own (`cogflow generate --help`), passed through untouched.
    p = commands.add_parser(
        "generate", help="a video from a sentence, with the newest trained stages (or the ones named)", add_help=False
    )
    p.set_defaults(run=command.run_generate)

    p = commands.add_parser("preview", help="write a contact sheet of clips (frames in a row, caption beneath)")
    p.add_argument("--lake", type=_lake_option)
    p.add_argument("--clip-id", action="append", help="a clip to show (repeatable)")
    p.add_argument(
        "--random", type=_positive, help="show N clips drawn at random, from every stage and rate in turn (default 8)"
    )
    p.add_argument("--stage", type=int, choices=[1, 2], help="draw only from this stage")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", default="clips.png", help="image file to write (PNG or JPEG)")
    p.set_defaults(run=command.run_preview)

    p = commands.add_parser(
        "report",
        help="write a dataset report: one HTML file with the lake's distributions (videos, captions, rejects, "
        "motion, shots, clips, letterbox) and a contact sheet",
    )
    _lake_argument(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the contact sheet's clips (default 0)")
    p.add_argument("-o", "--output", default="report.html", help="HTML file to write (default report.html)")
    p.set_defaults(run=command.run_report)

    p = commands.add_parser(
        "export",
        help="write the lake's clips for other trainers: WebDataset tar shards of KEY.mp4 (the 5 frames, lossless), "
        "KEY.txt (the caption) and KEY.json (everything else)",
    )
    _lake_argument(p)
    p.add_argument("--format", choices=["webdataset"], default="webdataset")
    p.add_argument("-o", "--output", required=True, help="folder to write the shards into (shard-000000.tar, ...)")
    p.add_argument("--stage", type=int, choices=[1, 2], help="only this stage's clips")
    p.add_argument("--split", choices=["train", "val"], help="only this split's clips")
    p.add_argument("--shard-mb", type=float, default=1000.0, help="about this many megabytes a shard (default 1000)")
    p.set_defaults(run=command.run_export)

    p = commands.add_parser(
        "repair",
        help="remove what a failed or raced write left in the lake: duplicate keys, files "
        "without a completion record, orphan .tmp-* files (each removal printed)",
    )
    p.add_argument("--lake", type=_lake_option, help="lake root: a folder or s3://bucket/prefix")
    p.set_defaults(run=command.run_repair)

    p = commands.add_parser(
        "status", help="row counts of every lake table, clips per stage and frame rate, tokens, trained stages"
    )
    p.add_argument("--lake", type=_lake_option)
    p.set_defaults(run=command.run_status)
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
        problems = command.setting_problems(args)
        for line in problems.values():
            print(f"cogflow {args.command}: {line}", file=sys.stderr)
        if problems:
            return 2
    started = datetime.now(UTC)
    code = args.run(args)
    _settle_prefect_events(started)
    return code


if __name__ == "__main__":
    sys.exit(main())
