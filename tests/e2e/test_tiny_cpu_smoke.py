"""CI smoke: 2 steps of the CREDIT recipe through verl's own ``main_ppo`` on CPU, end to end.

rollout (hf_cpu) -> reward with feedback -> old log-probs -> teacher pass -> CREDIT advantages -> actor
update -> EMA teacher update -> metrics. Checks the metrics were written, the actor's weights moved, and
the teacher followed ``teacher_k = (1 - tau) * teacher_{k-1} + tau * actor_k`` from the initial model.
The same loop with the ``trust_region`` teacher checks the trainer starts the worker it needs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
STEPS, TAU = 2, 0.05


def _demo(root: Path, *overrides: str) -> list[dict]:
    """Run the tiny CPU recipe for STEPS steps; returns the per-step metrics verl's file logger wrote."""
    command = [sys.executable, str(REPO / "recipes/tiny_cpu/demo.py"), "--steps", str(STEPS), "--run-dir", str(root)]
    result = subprocess.run([*command, "--", *overrides], capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return [json.loads(line)["data"] for line in (root / "credit/metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny_cpu_smoke")
    _demo(
        root,
        "trainer.save_freq=1",
        "actor_rollout_ref.actor.checkpoint.save_contents=[model,extra,hf_model]",
        f"credit.teacher_update_rate={TAU}",
    )
    return root


def _weights(path: Path) -> dict[str, torch.Tensor]:
    """Full weights by HF name; a tied ``lm_head.weight`` that a checkpoint left out is the input embedding."""
    weights = {name: tensor.double() for name, tensor in load_file(path).items()}
    weights.setdefault("lm_head.weight", weights["model.embed_tokens.weight"])
    return weights


def test_metrics_show_teacher_pass_baseline_and_update(run_dir):
    records = [json.loads(line)["data"] for line in (run_dir / "credit/metrics.jsonl").read_text().splitlines()]
    assert len(records) == STEPS
    for record in records:
        assert 0 < record["credit/teacher/context_fraction"] <= 1
        assert abs(record["credit/baseline_mean"]) > 0  # the contrast variants were scored
        assert {"credit/pmi_mean", "credit/contrast_gap_mean", "response_length/mean"} <= set(record)
        assert record["actor/grad_norm"] > 0
        assert record["credit/teacher_ema_max_change"] > 0


def test_actor_moved_and_teacher_followed_the_ema_rule(run_dir):
    checkpoints = run_dir / "credit/checkpoints"
    teacher = _weights(run_dir / "assets/model/model.safetensors")
    initial = dict(teacher)
    for step in range(1, STEPS + 1):
        actor = _weights(checkpoints / f"global_step_{step}/actor/huggingface/model.safetensors")
        saved = _weights(checkpoints / f"global_step_{step}/teacher/model.safetensors")
        assert saved.keys() <= actor.keys()
        moved = max(float((actor[name] - initial[name]).abs().max()) for name in saved)
        assert moved > 1e-4, f"the actor did not change by step {step}"
        for name, value in saved.items():
            expected = (1 - TAU) * teacher[name] + TAU * actor[name]
            torch.testing.assert_close(value, expected, rtol=0, atol=1e-5, msg=f"step {step}, {name}")
        teacher = saved


def test_trust_region_teacher_runs_the_loop(tmp_path):
    records = _demo(tmp_path, "credit.teacher=trust_region", "credit.teacher_update_rate=0.5")
    assert len(records) == STEPS
    assert all(record["actor/grad_norm"] > 0 and abs(record["credit/baseline_mean"]) > 0 for record in records)
    assert all(0 < record["credit/teacher/context_fraction"] <= 1 for record in records)
    assert not any("credit/teacher_ema_max_change" in record for record in records)
