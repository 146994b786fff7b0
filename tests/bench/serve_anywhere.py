"""Serve anywhere: a registered text-to-video version loads and generates in a fresh virtualenv built only from its
own requirements.txt, in a folder outside the checkout, as a registry user would load it.

    COGFLOW_HOME=.cogflow .venv/bin/python tests/bench/serve_anywhere.py [--model models:/cogflow-t2v@champion]

After `make demo` (or any run that registered a champion). Steps, each timed:
1. download the version's requirements.txt and make a virtualenv in a temporary folder from it alone (`pip install
   -r requirements.txt`; no cogflow, no checkout on its path);
2. in that environment, from a folder outside the checkout, `mlflow.pyfunc.load_model(URI)` and `predict` one
   caption with seed 0;
3. here, the same caption and seed through `TextToVideo.from_registry`: both must give the same frames.
Exit 0 when the frames match; the environment is removed afterwards (`--keep` keeps it).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import numpy as np

from cogflow.model import tracking
from cogflow.model.serving.text_to_video import TextToVideo
from cogflow.pipeline.settings import load_settings

CAPTION = "一个红色的圆形在米色背景上从左向右移动。"

LOAD = """
import importlib.util, json, sys, time
import numpy as np
assert importlib.util.find_spec("cogflow") is None, "cogflow is installed in the serving environment"
import mlflow, pandas as pd
started = time.monotonic()
model = mlflow.pyfunc.load_model(sys.argv[1])
loaded = time.monotonic()
frames = model.predict(pd.DataFrame({"caption": [sys.argv[2]]}), params={"seed": 0})
np.save(sys.argv[3], frames)
import cogflow
print(json.dumps({"load_s": loaded - started, "predict_s": time.monotonic() - loaded, "shape": list(frames.shape),
                  "cogflow_from": cogflow.__file__}))
"""


def _absolute(uri: str) -> str:
    """The tracking URI as another process in another folder reaches it (a relative sqlite path made absolute)."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).absolute())
    return uri


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models:/cogflow-t2v@champion")
    parser.add_argument("--keep", action="store_true", help="keep the virtualenv (its folder is printed)")
    args = parser.parse_args()
    settings = load_settings()
    tracking.use(settings.mlflow_tracking_uri, settings.home)
    uri = _absolute(settings.mlflow_tracking_uri)

    work = Path(tempfile.mkdtemp(prefix="cogflow-serve-"))
    requirements = Path(mlflow.artifacts.download_artifacts(f"{args.model}/requirements.txt", dst_path=str(work)))
    print(f"{args.model}: requirements.txt\n  " + "\n  ".join(requirements.read_text().split()))
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", str(work / "venv")], check=True)
    python = work / "venv" / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "-r", str(requirements)], check=True)
    built = time.monotonic() - started
    print(f"virtualenv from requirements.txt alone: {built:.0f} s ({work / 'venv'})")

    env = {k: v for k, v in os.environ.items() if not k.startswith(("COGFLOW_", "PYTHON"))}
    env["MLFLOW_TRACKING_URI"] = uri
    done = subprocess.run(
        [str(python), "-c", LOAD, args.model, CAPTION, str(work / "served.npy")],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        print(done.stderr[-4000:], file=sys.stderr)
        return 1
    served = json.loads(done.stdout.strip().splitlines()[-1])
    print(
        f"loaded in {served['load_s']:.1f} s, one video in {served['predict_s']:.1f} s, shape {served['shape']}; "
        f"cogflow came from {served['cogflow_from']}"
    )

    t2v = TextToVideo.from_registry(settings, args.model, "cpu")
    _, here = t2v.generate(CAPTION, seed=0)
    same = np.array_equal(np.load(work / "served.npy")[0], here)
    print(f"the same frames as TextToVideo.from_registry in the checkout's environment: {same}")
    if not args.keep:
        subprocess.run(["rm", "-rf", str(work)], check=False)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
