"""``recipes/paper/report.py`` on synthetic verl file-logger JSONL: the table's numbers and the plot."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import matplotlib.image
import pytest

REPORT = Path(__file__).resolve().parents[1] / "recipes" / "paper" / "report.py"


@pytest.fixture(scope="module")
def report():
    spec = importlib.util.spec_from_file_location("paper_report", REPORT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _write(path: Path, step_s: float, accs: list[tuple[float, float]], teacher_s: float | None = None) -> Path:
    """verl's FileLogger lines: validation before training at step 0, then 4 steps validated at 2 and 4."""
    lines = [{"step": 0, "data": {"val-core/sciknoweval/chemistry/acc/mean@16": accs[0][0],
                                  "val-core/sciknoweval/physics/acc/mean@16": accs[0][1]}}]  # fmt: skip
    for step in range(1, 5):
        data = {"timing_s/step": step_s, "critic/score/mean": 0.5}
        if teacher_s is not None:
            data["timing_s/teacher"] = teacher_s
        if step % 2 == 0:
            chem, phys = accs[step // 2]
            data |= {
                "val-core/sciknoweval/chemistry/acc/mean@16": chem,
                "val-core/sciknoweval/physics/acc/mean@16": phys,
            }
            data["val-aux/sciknoweval/chemistry/acc/std@16"] = 9.0  # not a validation accuracy
        lines.append({"step": step, "data": data})
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return path


def test_runs_become_a_side_by_side_table_and_plot(report, tmp_path):
    logs = [
        _write(tmp_path / "grpo.jsonl", 100.0, [(0.4, 0.2), (0.5, 0.3), (0.6, 0.4)]),
        _write(tmp_path / "sdpo.jsonl", 120.0, [(0.4, 0.2), (0.6, 0.4), (0.7, 0.5)], teacher_s=18.0),
        _write(tmp_path / "credit.jsonl", 132.0, [(0.4, 0.2), (0.7, 0.5), (0.6, 0.6)], teacher_s=33.0),
    ]
    credit = report.load_run(logs[2])
    assert credit.validations == [(0, 0.0, pytest.approx(0.3)), (2, 264.0, pytest.approx(0.6)), (4, 528.0, 0.6)]
    report.main([*map(str, logs), "--out", str(tmp_path / "out")])
    rows = (tmp_path / "out" / "table.md").read_text().splitlines()
    assert rows[2] == "| grpo | 0.3000 | 0.5000 | 0.5000 | 4 | 0.11 | 100.0 | 1.00 | 0.00 |"
    assert rows[3] == "| sdpo | 0.3000 | 0.6000 | 0.6000 | 4 | 0.13 | 120.0 | 1.20 | 0.15 |"
    assert rows[4] == "| credit | 0.3000 | 0.6000 | 0.6000 | 4 | 0.15 | 132.0 | 1.32 | 0.25 |"
    image = matplotlib.image.imread(tmp_path / "out" / "accuracy.png")
    assert image.shape[0] > 300 and image.shape[1] > 1000 and image.std() > 0.05


def test_a_line_that_is_not_a_verl_record_names_the_line(report, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"step": 1, "data": {}}) + "\n" + json.dumps({"metrics": 1}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not a verl file-logger record"):
        report.load_run(path)
