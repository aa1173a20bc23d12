"""scripts/bench_report.py renders docs/benchmarks.md from benchmark JSON, reports or not."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location("bench_report", ROOT / "scripts" / "bench_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_report_tables_notes_plots_and_benchmarks_without_report(tmp_path: Path) -> None:
    src = tmp_path / "benchmarks"
    src.mkdir()
    machine = {"cpu_model": "Test CPU", "cpu_count": 2, "torch": "2.14.1"}
    report = {"title": "Ours vs peer", "columns": ["N", "ours s", "peer s", "peer/ours"],
              "rows": [{"N": 1_000_000, "ours s": 0.5, "peer s": 2.0, "peer/ours": 4.0},
                       {"N": 10, "ours s": 1.0, "peer s": None, "peer/ours": None}],
              "notes": ["peer beats us on ARI at N=10", "machine was loaded"], "plots": ["a.png"]}
    (src / "a.json").write_text(json.dumps({"command": "a.py --x", "machine": machine, "created_utc": "T",
                                            "report": report}))
    (src / "b.json").write_text(json.dumps({"command": "b.py --quick", "machine": machine, "rows": []}))
    (src / "c.json").write_text("{not json")
    out = tmp_path / "benchmarks.md"
    text = _module().render(src, out)
    assert out.read_text() == text
    assert "## Ours vs peer" in text
    assert "- command: `python benchmarks/a.py --x`" in text
    assert "Test CPU; 2 CPU cores" in text
    assert "| N | ours s | peer s | peer/ours |" in text
    assert "| 1,000,000 | 0.5 | 2 | 4 |" in text
    assert "| 10 | 1 | - | - |" in text
    assert "- **Peer wins / goal missed:** peer beats us on ARI at N=10" in text
    assert "- machine was loaded" in text
    assert "![a.png](benchmarks/a.png)" in text
    assert "`b`: `python benchmarks/b.py --quick` - no `report` key yet" in text
    assert "[benchmarks/b.json](benchmarks/b.json)" in text
    assert "`c`: unreadable JSON" in text


def test_reports_list_gives_one_section_each(tmp_path: Path) -> None:
    src = tmp_path / "benchmarks"
    src.mkdir()
    reports = [{"title": f"T{i}", "columns": ["x"], "rows": [{"x": i}]} for i in range(2)]
    (src / "m.json").write_text(json.dumps({"command": "m.py", "reports": reports}))
    text = _module().render(src, tmp_path / "benchmarks.md")
    assert "## T0" in text and "## T1" in text and "without a report" not in text
