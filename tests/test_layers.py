"""The layer contracts (pyproject [tool.importlinter]) hold, and they do catch a backward import."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINT = Path(sys.executable).with_name("lint-imports")


def lint() -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_the_tree_keeps_every_contract():
    res = lint()
    assert res.returncode == 0, res.stdout[-3000:]
    assert "Layers: imports only point down KEPT" in res.stdout
    assert "The simulator is an oracle" in res.stdout and "BROKEN" not in res.stdout


def test_a_backward_import_fails_the_contract():
    probe = ROOT / "warehouse" / f"_probe_{uuid.uuid4().hex[:8]}.py"
    probe.write_text('"""probe: storage reaching up into the ingest engine (forbidden)."""\n'
                     "from perpwatch.ingest import pipeline  # noqa: F401\n")
    try:
        res = lint()
    finally:
        probe.unlink()
    assert res.returncode != 0
    assert "Layers: imports only point down BROKEN" in res.stdout
    assert f"perpwatch.warehouse.{probe.stem} -> perpwatch.ingest.pipeline" in res.stdout
