"""The `cogflow` command: a thin layer over the flows and the plain functions in pipeline/.

Settings come from the environment (pipeline/settings.py). Options given here override it by setting the
same environment variables for this process, so the flows, their tasks and every library they call
(boto3, pyarrow) see one consistent set of settings.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from pipeline.settings import ENV_LIMITS


def _sample_data(args: argparse.Namespace) -> int:
    from pipeline.sample_data import generate_sample_data

    def progress(done: int, total: int) -> None:
        if sys.stderr.isatty():  # a redrawn line on a terminal; logs get only the result line below
            print(f"\rencoding sample videos {done}/{total}", end="\n" if done == total else "", file=sys.stderr, flush=True)

    manifest = generate_sample_data(args.out_dir, args.videos, seed=args.seed, progress=progress)
    print(f"wrote {args.videos} videos and {manifest}")
    return 0


def _ingest(args: argparse.Namespace) -> int:
    from flows.ingest import run_ingest
    from pipeline.ingest import DataCheckError
    from pipeline.manifest import ManifestError
    from pipeline.settings import load_settings

    settings = load_settings()
    try:
        summary = run_ingest(
            settings,
            manifest=args.manifest,
            lake=settings.lake,
            video_col=args.video_col,
            caption_col=args.caption_col,
            retry_rejects=args.retry_rejects,
        )
    except ManifestError as exc:
        print(f"cogflow ingest: {exc}", file=sys.stderr)
        return 2
    except DataCheckError as exc:
        print(f"cogflow ingest: the lake failed its data checks\n{exc}", file=sys.stderr)
        return 1
    print(summary.text())
    return 0


def _status(args: argparse.Namespace) -> int:
    from pipeline import lake
    from pipeline.settings import load_settings
    from pipeline.storage import Storage, safe_uri

    settings = load_settings()
    counts = lake.row_counts(Storage.at(settings.lake))
    print(f"lake {safe_uri(settings.lake)}")
    width = max(len(name) for name in counts)
    for name, rows in counts.items():
        print(f"  {name:<{width}}  {rows:>10,} rows")
    return 0


def _limit(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or name not in ENV_LIMITS:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE with NAME one of {', '.join(ENV_LIMITS)}")
    return name, value


def apply_options(args: argparse.Namespace) -> None:
    """Command-line options win over the environment: write them into it."""
    chosen = {
        "COGFLOW_HOME": args.home,
        "COGFLOW_LAKE": getattr(args, "lake", None),
        "COGFLOW_PROBE_WORKERS": getattr(args, "workers", None),
        "MLFLOW_TRACKING_URI": args.mlflow_tracking_uri,
        "AWS_ENDPOINT_URL_S3": args.s3_endpoint,
    }
    chosen.update({ENV_LIMITS[name]: value for name, value in args.limit})
    os.environ.update({k: str(v) for k, v in chosen.items() if v is not None})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cogflow", description="Captioned videos in, a CogVideo-style model out.")
    parser.add_argument("--home", help="working folder (default $COGFLOW_HOME or .cogflow)")
    parser.add_argument("--mlflow-tracking-uri", help="default $MLFLOW_TRACKING_URI or sqlite:///$COGFLOW_HOME/mlflow.db")
    parser.add_argument("--s3-endpoint", help="S3-compatible endpoint URL (default $AWS_ENDPOINT_URL_S3 / $AWS_ENDPOINT_URL)")
    parser.add_argument(
        "--limit", type=_limit, action="append", default=[], metavar="NAME=VALUE",
        help=f"override an ingest limit, e.g. max_bytes=1e9 (names: {', '.join(ENV_LIMITS)})",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("sample-data", help="write N synthetic captioned videos and a manifest.csv")
    p.add_argument("out_dir")
    p.add_argument("--videos", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=_sample_data)

    p = commands.add_parser("ingest", help="ingest a manifest (CSV, JSONL, Parquet, SRT, WebVTT) into the lake")
    p.add_argument("manifest", help="local path, file://, s3:// or http(s):// URL")
    p.add_argument("--lake", help="lake root: a folder or s3://bucket/prefix (default $COGFLOW_LAKE or $COGFLOW_HOME/lake)")
    p.add_argument("--video-col", default="video", help="manifest column holding the video (default: video)")
    p.add_argument("--caption-col", default="caption", help="manifest column holding the caption (default: caption)")
    p.add_argument("--workers", type=int, help="videos probed in parallel (default $COGFLOW_PROBE_WORKERS or 4)")
    p.add_argument("--retry-rejects", action="store_true", help="probe again sources rejected by an earlier run")
    p.set_defaults(run=_ingest)

    p = commands.add_parser("status", help="row counts of every lake table")
    p.add_argument("--lake")
    p.set_defaults(run=_status)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    apply_options(args)
    # No telemetry from a local Prefect server on machines without internet, unless the user decided otherwise.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
