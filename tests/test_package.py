"""The installed package: one `cogflow` namespace over the repository's folders, and a light public API."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _python(tmp_path: Path, code: str) -> str:
    """Run `code` in a fresh interpreter outside the checkout (so the checkout is not on its path)."""
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_one_namespace_and_no_generic_top_level_packages(tmp_path: Path) -> None:
    out = _python(
        tmp_path,
        """
import importlib.util, json, sys
import cogflow
light = not any(m in sys.modules for m in ("torch", "prefect", "mlflow", "duckdb"))
tops = {name: importlib.util.find_spec(name) is not None for name in ("model", "pipeline", "flows", "sql")}
import cogflow.model.cogvideo.train, cogflow.pipeline.split, cogflow.flows.cli, cogflow.sql
print(json.dumps({"light": light, "tops": tops, "all": [callable(getattr(cogflow, n)) for n in cogflow.__all__],
                  "file": cogflow.model.cogvideo.train.__file__}))
""",
    )
    got = json.loads(out)
    assert got["light"], "import cogflow must not load torch, Prefect, MLflow or DuckDB"
    assert not any(got["tops"].values()), got["tops"]
    assert all(got["all"])
    assert Path(got["file"]).resolve() == ROOT / "model" / "cogvideo" / "train.py"


def test_every_source_folder_is_a_listed_package() -> None:
    """pyproject.toml lists the packages by name (a mapped package cannot be found by folder): a new folder with
    code, SQL or configs must be listed, or an installed (non-editable) cogflow would lack it."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert config["package-dir"] == {"cogflow": "."}
    listed = set(config["packages"])
    folders = {"cogflow"}
    for top in ("flows", "pipeline", "model", "sql"):
        for path in (ROOT / top).rglob("*"):
            if path.suffix in (".py", ".sql", ".toml") and "__pycache__" not in path.parts:
                folders.add("cogflow." + ".".join(path.parent.relative_to(ROOT).parts))
    assert folders == listed
