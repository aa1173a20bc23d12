"""`make gpu-check` runs on a CPU-only machine, exits 0 and marks the GPU figures missing; with the
optional libraries hidden it still runs, each missing one a "skipped" row (issue 10, item 7)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
OPTIONAL = ("ray", "umap", "faiss", "cuml", "cuvs", "timm", "yaml")

#: A sitecustomize that makes the optional libraries unimportable, as on a bare GPU image with only torch,
#: numpy, scipy and scikit-learn.
HIDE = '''
import sys
HIDDEN = {hidden!r}

class _Hide:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HIDDEN:
            raise ModuleNotFoundError(f"No module named {{name!r}} (hidden by the test)", name=name)
        return None

sys.meta_path.insert(0, _Hide())
'''

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only behaviour")]


def _run(tmp_path: Path, hidden: tuple[str, ...]) -> tuple[subprocess.CompletedProcess, dict]:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(HIDE.format(hidden=set(hidden)))
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--quick", "--json", str(out)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    return proc, json.loads(out.read_text())


def test_gpu_check_with_only_the_required_libraries(tmp_path: Path) -> None:
    proc, doc = _run(tmp_path, OPTIONAL)
    rows = {r["check"]: r for r in doc["rows"]}
    for name in OPTIONAL:
        assert rows[f"library {name}"]["status"] == "skipped", name
    assert not [r for r in doc["rows"] if r["status"] == "FAIL"]
    missing = [r for r in doc["rows"] if r["status"] == "missing"]
    assert missing and all(r["device"] == "cuda" for r in missing)
    gridshift = [r for r in doc["rows"] if r["check"].startswith("GridShift") and r["status"] == "ok"]
    assert len(gridshift) == 2 and all("equal labels: yes" in r["result"] for r in gridshift)
    assert rows["kNN faiss-cpu recall"]["status"] == "skipped"
    assert doc["report"]["columns"] == ["check", "device", "result", "seconds", "status"]
    assert len(doc["report"]["rows"]) == len(doc["rows"]) and doc["report"]["notes"]
    assert "GPU figure(s) missing" in proc.stdout


def test_gpu_check_with_everything_installed_here(tmp_path: Path) -> None:
    _, doc = _run(tmp_path, ())
    statuses = {r["check"]: r["status"] for r in doc["rows"]}
    assert not [c for c, s in statuses.items() if s == "FAIL"], statuses
    assert sum(c.startswith("AMP step ") and s == "ok" for c, s in statuses.items()) == 5
    assert statuses["checkpoint round trip (BYOL+NRCC)"] == "ok"
    assert statuses["SGHMC input gradient bf16 vs float32"] == "ok"
