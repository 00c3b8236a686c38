"""The repository stands alone: no file points outside it.

Every tracked (or new, not ignored) text file is scanned for a relative path up into a sibling
checkout's shared folder, for the project-level documents that now live in docs/ (contract.md,
stack.md, venues.md, data.md) under their outside names, and for an absolute path into the machine
it was written on (the checkout root). Venue facts are cited as `docs/venues.md §N`, test fixtures
live in tests/fixtures/.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SKIP_DIRS = {".git", ".venv", "node_modules", "__pycache__", ".prefect", ".pytest_cache", ".ruff_cache"}

# Built from pieces so this file does not match itself.
SHARED = "shared"
FORBIDDEN = [
    (re.compile(r"\.\./+(\.\./+)*" + SHARED + r"\b"), "path into a sibling checkout"),
    (re.compile(SHARED + r"/(fixtures|data)\b"), "path into the outside shared folder"),
    (re.compile(r"\b(CONTRACT|STACK|STYLE)\." + "md"), "outside project document (use docs/contract.md, docs/stack.md)"),
    (re.compile(r"(?<![\w.~-])/" + "work" + r"/"), "absolute path of a checkout"),
]


def repo_files() -> list[Path]:
    if shutil.which("git") and (ROOT / ".git").exists():
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             cwd=ROOT, capture_output=True, check=True).stdout
        names = [n for n in out.decode().split("\0") if n]
        return [ROOT / n for n in names if not SKIP_DIRS & set(Path(n).parts) and (ROOT / n).is_file()]
    return [p for p in ROOT.rglob("*") if p.is_file() and not SKIP_DIRS & set(p.relative_to(ROOT).parts)]


def offending_lines(files: list[Path], root: Path = ROOT) -> list[str]:
    hits = []
    for path in files:
        if path.is_symlink():
            continue
        try:
            text = path.read_bytes().decode("utf-8")
        except (UnicodeDecodeError, OSError):
            continue          # binary (parquet, png, duckdb)
        for no, line in enumerate(text.splitlines(), 1):
            for pattern, why in FORBIDDEN:
                if pattern.search(line):
                    hits.append(f"{path.relative_to(root)}:{no}: {why}: {line.strip()[:120]}")
    return hits


def test_the_scan_catches_what_it_should(tmp_path):
    up = ".."
    bad = tmp_path / "x.md"
    bad.write_text(f"see {up}/{SHARED}/fixtures/README.md §1\nok line\ncd /{'work'}/main && make\n"
                   f"docs/venues.md §1 and /usr/bin/make and tests/fixtures/shared_data/x.csv\n")
    hits = offending_lines([bad], root=tmp_path)
    assert [h.split(":")[1] for h in hits] == ["1", "1", "3"]


def test_no_file_points_outside_the_repository():
    files = repo_files()
    if len(files) < 50:
        pytest.skip("not a checkout of the repository")
    assert (ROOT / "docs" / "venues.md").is_file() and (ROOT / "docs" / "contract.md").is_file()
    hits = offending_lines(files)
    assert not hits, "files pointing outside the repository:\n" + "\n".join(hits)
