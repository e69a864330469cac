"""``make learn`` in quick mode: two short main_ppo runs, held-out success before/after, table and plot.

The quick arms also carry the FSDP end-to-end runs of the logit level (docs/method.md, "Logit level") and of the
trust-region teacher: CREDIT at logit level with the EMA teacher in the learning bench, SDPO at logit level and
CREDIT with the trust-region teacher in the testbed (their Megatron runs: tests/e2e/test_megatron_smoke.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from demo_runs import assert_logit_level_trained, training_metrics

# two main_ppo runs (and the tiny model, if no test built it before): over pytest.ini's 600 s on a busy machine
pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(1800)]

REPO = Path(__file__).resolve().parents[2]
TRUST_REGION = ("credit.teacher=trust_region", "credit.teacher_update_rate=0.5")


def test_quick_learning_bench_measures_held_out_success_before_and_after(tmp_path, tiny_task_model):
    learn = [sys.executable, str(REPO / "bench/learn.py")]
    command = [*learn, "--quick", "--out", str(tmp_path), "--model-dir", str(tiny_task_model)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=1500, cwd=REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "results.json").read_text())
    assert set(report["runs"]) == {"grpo", "credit_logit"}
    for name, runs in report["runs"].items():
        (run,) = runs
        assert "error" not in run, run.get("error")
        assert run["val_key"].startswith("val-core/credit_tiny/") and run["val_key"].endswith("@4")
        for key in ("sampled_before", "sampled_after", "greedy_before", "greedy_after"):
            assert 0.0 <= run[key] <= 1.0, (name, key)
        assert len(run["reward"]) == len(run["entropy"]) == report["setting"]["steps"] == 2
        assert all(value > 0 for value in run["entropy"])
    credit = report["runs"]["credit_logit"][0]
    assert all(isinstance(value, float) for value in credit["advantage_token_mean"])
    assert all(0.0 <= value <= 1.0 for value in credit["advantage_positive_fraction"])
    records = training_metrics(tmp_path / "credit_logit/seed1/credit")
    assert len(records) == 2
    assert_logit_level_trained(records)
    assert all(abs(record["credit/baseline_mean"]) > 0 for record in records), "the contrast variants were scored"
    assert all(record["credit/teacher_ema_max_change"] > 0 for record in records), "the EMA teacher moved"
    table = (tmp_path / "results.md").read_text()
    assert "| grpo | 1 |" in table and "| credit_logit | 1 |" in table
    assert (tmp_path / "learning.png").stat().st_size > 1000


def test_quick_testbed_measures_shortcut_rate_and_credit_on_shortcut_and_answer_tokens(tmp_path):
    """``bench/learn.py --testbed --quick``: SDPO at logit level and CREDIT for 2 steps on the controlled testbed (a
    100-step pre-trained model: the pipeline, not the measurement), both with the trust-region teacher."""
    learn = [sys.executable, str(REPO / "bench/learn.py")]
    command = [*learn, "--testbed", "--quick", "--out", str(tmp_path), *TRUST_REGION]
    result = subprocess.run(command, capture_output=True, text=True, timeout=1500, cwd=REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "results.json").read_text())
    assert report["testbed"] is True and set(report["runs"]) == {"sdpo_logit", "credit"}
    for name, runs in report["runs"].items():
        (run,) = runs
        assert "error" not in run, run.get("error")
        assert run["val_key"].startswith("val-core/credit_tiny_testbed/")
        for stage in ("eval_before", "eval_after"):
            for key in ("success_greedy", "success_sampled", "shortcut_greedy", "shortcut_sampled"):
                assert 0.0 <= run[stage][key] <= 1.0, (name, stage, key)
        assert len(run["shortcut_rate"]) == 2 and all(0.0 <= value <= 1.0 for value in run["shortcut_rate"])
        algo = "sdpo" if name == "sdpo_logit" else name
        run_dir = tmp_path / name / "seed1" / algo
        records = [json.loads(line) for line in (run_dir / "token_records.jsonl").open()]
        assert [record["step"] for record in records] == [1] * 16 + [2] * 16, "every sample's records"
        scored = [record for record in records if record["has_context"]]
        assert scored, "failed samples get the narrowing feedback as teacher context"
        assert all(record["solution"] is None and record["feedback"] for record in scored)
        assert all((record["credit"] is None) == (algo == "sdpo") for record in scored)
        steps = training_metrics(run_dir)
        assert all(("credit/baseline_mean" in step) == (algo == "credit") for step in steps)
        assert not any("credit/teacher_ema_max_change" in step for step in steps), "no EMA state in the trust region"
        assert all(step["actor/grad_norm"] > 0 and 0 < step["credit/teacher/context_fraction"] <= 1 for step in steps)
    assert_logit_level_trained(training_metrics(tmp_path / "sdpo_logit/seed1/sdpo"))
    assert all(value is None for value in report["runs"]["sdpo_logit"][0]["credit_answer"])  # SDPO has no contrast
    table = (tmp_path / "results.md").read_text()
    assert "| sdpo_logit | 1 |" in table and "held-out shortcut rate" in table
    assert (tmp_path / "testbed.png").stat().st_size > 1000
