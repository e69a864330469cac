"""``make learn`` in quick mode: two short main_ppo runs, held-out success before/after, table and plot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

# two main_ppo runs (and the tiny model, if no test built it before): over pytest.ini's 600 s on a busy machine
pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(1800)]

REPO = Path(__file__).resolve().parents[2]


def test_quick_learning_bench_measures_held_out_success_before_and_after(tmp_path, tiny_task_model):
    learn = [sys.executable, str(REPO / "bench/learn.py")]
    command = [*learn, "--quick", "--out", str(tmp_path), "--model-dir", str(tiny_task_model)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=1500, cwd=REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "results.json").read_text())
    assert set(report["runs"]) == {"grpo", "credit"}
    for name, runs in report["runs"].items():
        (run,) = runs
        assert "error" not in run, run.get("error")
        assert run["val_key"].startswith("val-core/credit_tiny/") and run["val_key"].endswith("@4")
        for key in ("sampled_before", "sampled_after", "greedy_before", "greedy_after"):
            assert 0.0 <= run[key] <= 1.0, (name, key)
        assert len(run["reward"]) == len(run["entropy"]) == report["setting"]["steps"] == 2
        assert all(value > 0 for value in run["entropy"])
    credit = report["runs"]["credit"][0]
    assert all(isinstance(value, float) for value in credit["advantage_token_mean"])
    assert all(0.0 <= value <= 1.0 for value in credit["advantage_positive_fraction"])
    table = (tmp_path / "results.md").read_text()
    assert "| grpo | 1 |" in table and "| credit | 1 |" in table
    assert (tmp_path / "learning.png").stat().st_size > 1000


def test_quick_testbed_measures_shortcut_rate_and_credit_on_shortcut_and_answer_tokens(tmp_path):
    """``bench/learn.py --testbed --quick``: SDPO and CREDIT for 2 steps on the controlled testbed (a 100-step
    pre-trained model: the pipeline, not the measurement)."""
    command = [sys.executable, str(REPO / "bench/learn.py"), "--testbed", "--quick", "--out", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=1500, cwd=REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "results.json").read_text())
    assert report["testbed"] is True and set(report["runs"]) == {"sdpo", "credit"}
    for name, runs in report["runs"].items():
        (run,) = runs
        assert "error" not in run, run.get("error")
        assert run["val_key"].startswith("val-core/credit_tiny_testbed/")
        for stage in ("eval_before", "eval_after"):
            for key in ("success_greedy", "success_sampled", "shortcut_greedy", "shortcut_sampled"):
                assert 0.0 <= run[stage][key] <= 1.0, (name, stage, key)
        assert len(run["shortcut_rate"]) == 2 and all(0.0 <= value <= 1.0 for value in run["shortcut_rate"])
        records = [json.loads(line) for line in (tmp_path / name / "seed1" / name / "token_records.jsonl").open()]
        assert [record["step"] for record in records] == [1] * 16 + [2] * 16, "every sample's records"
        scored = [record for record in records if record["has_context"]]
        assert scored, "failed samples get the narrowing feedback as teacher context"
        assert all(record["solution"] is None and record["feedback"] for record in scored)
        assert all((record["credit"] is None) == (name == "sdpo") for record in scored)
    assert all(value is None for value in report["runs"]["sdpo"][0]["credit_answer"])  # SDPO has no contrast
    table = (tmp_path / "results.md").read_text()
    assert "| sdpo | 1 |" in table and "held-out shortcut rate" in table
    assert (tmp_path / "testbed.png").stat().st_size > 1000
