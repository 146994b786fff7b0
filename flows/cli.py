"""The `cogflow` command: a thin layer over the flows and the plain functions in pipeline/.

Settings come from the environment (pipeline/settings.py); options given here override them.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence


def _sample_data(args: argparse.Namespace) -> int:
    from pipeline.sample_data import generate_sample_data

    def progress(done: int, total: int) -> None:
        print(f"\rencoding sample videos {done}/{total}", end="\n" if done == total else "", file=sys.stderr, flush=True)

    manifest = generate_sample_data(args.out_dir, args.videos, seed=args.seed, progress=progress)
    print(f"wrote {args.videos} videos and {manifest}")
    return 0


def _ingest(args: argparse.Namespace) -> int:
    from flows.ingest import run_ingest
    from pipeline.ingest import DataCheckError
    from pipeline.manifest import ManifestError
    from pipeline.settings import load_settings

    settings = load_settings(lake=args.lake, probe_workers=args.workers)
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

    settings = load_settings(lake=args.lake)
    counts = lake.row_counts(Storage.at(settings.lake))
    print(f"lake {safe_uri(settings.lake)}")
    width = max(len(name) for name in counts)
    for name, rows in counts.items():
        print(f"  {name:<{width}}  {rows:>10,} rows")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cogflow", description="Captioned videos in, a CogVideo-style model out.")
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
    # No telemetry from a local Prefect server on machines without internet, unless the user decided otherwise.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
