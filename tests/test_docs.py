"""The repository documents itself: every README's file map matches the tree, and no reference points outside it."""

from __future__ import annotations

import fnmatch
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAPS = ["README.md", "flows/README.md", "pipeline/README.md", "model/README.md", "sql/README.md", "tests/README.md"]
ROOMS = ("flows", "pipeline", "model", "sql", "tests")


def _repository_files() -> list[str]:
    """Tracked files, and new ones git does not ignore inside the package and test folders (a log or scratch file at
    the top of a checkout is nobody's to document)."""

    def listed(*flags: str) -> list[str]:
        out = subprocess.run(["git", "ls-files", *flags], cwd=ROOT, check=True, capture_output=True, text=True).stdout
        return out.splitlines()

    new = [p for p in listed("--others", "--exclude-standard") if p.split("/", 1)[0] in ROOMS]
    return sorted(p for p in {*listed("--cached"), *new} if (ROOT / p).is_file())


def _mapped(readme: str) -> list[str]:
    """The paths (or globs) a README's `## Files` block lists, one per line, first word."""
    text = (ROOT / readme).read_text(encoding="utf-8")
    block = text.split("## Files", 1)[1].split("```")[1]
    return [line.split()[0] for line in block.splitlines() if line.strip()]


def test_every_file_is_in_its_folders_file_map_and_every_mapped_path_exists() -> None:
    """A file under flows/, pipeline/, model/, sql/ or tests/ is listed in that folder's README; any other file in
    the top README's."""
    files = _repository_files()
    mapped = {readme: _mapped(readme) for readme in MAPS}

    def room(name: str) -> str:
        top = name.split("/", 1)[0]
        return f"{top}/README.md" if f"{top}/README.md" in mapped else "README.md"

    missing = [f for f in files if not any(fnmatch.fnmatch(f, p) for p in mapped[room(f)])]
    assert not missing, f"files their folder's README does not list: {missing}"
    stale = [
        (readme, p)
        for readme, listed in mapped.items()
        for p in listed
        if not any(fnmatch.fnmatch(f, p) for f in files)
    ]
    assert not stale, f"file map entries with no such file: {stale}"


def test_the_top_readme_links_every_room() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    for readme in MAPS[1:] + ["infra/README.md"]:
        assert f"({readme})" in text, f"README.md does not link {readme}"


def test_links_resolve_and_nothing_points_outside_the_repository() -> None:
    outside = re.compile(r"\.\./shared|DESIGN\.md|reference/(cogvideo|ecosystem|video-data-pipelines)\.md")
    for name in _repository_files():
        path = ROOT / name
        if path.suffix not in (".py", ".md", ".toml", ".yaml", ".sql", ".txt", "") or name == "tests/test_docs.py":
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        assert not outside.search(text), f"{name} points outside the repository: {outside.search(text).group(0)}"
        if path.suffix == ".md":
            for target in re.findall(r"\]\(([^)#\s]+)\)", text):
                if not target.startswith(("http://", "https://", "mailto:")):
                    assert (path.parent / target).exists(), f"{name} links {target}, which does not exist"
