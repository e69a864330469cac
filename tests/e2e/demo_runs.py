"""The tiny CPU recipe's demo script as the end-to-end tests run it."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "recipes/tiny_cpu/demo.py"


def run_demo(root: Path, assets: Path, *overrides: str, steps: int, options: tuple[str, ...] = ()) -> list[dict]:
    """Run the tiny CPU recipe (CREDIT) for ``steps`` steps; returns the per-step metrics verl's file logger wrote.

    ``options`` go to the demo script (e.g. ``--megatron-tp 2``), ``overrides`` to ``main_ppo``.
    """
    command = [sys.executable, str(DEMO), "--steps", str(steps), "--run-dir", str(root), "--assets", str(assets)]
    result = subprocess.run([*command, *options, "--", *overrides], capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return training_metrics(root / "credit")


def training_metrics(run: Path) -> list[dict]:
    """The training steps' metrics that verl's file logger wrote in ``run`` (a step 0 record, the validation before
    training, is left out)."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [record["data"] for record in records if record["step"] > 0]


def assert_logit_level_trained(records: list[dict]) -> None:
    """Each training step's metrics of a run at ``credit.granularity=logit``: the distillation loss trained the
    actor, and the teacher's top-k mass, the tail clamp and the support's movement were logged in range."""
    for record in records:
        assert math.isfinite(record["actor/grad_norm"]) and record["actor/grad_norm"] > 0
        assert record["actor/credit/logit/divergence"] > 0, "the logit-level loss trained the actor"
        assert 0 < record["credit/logit/teacher_topk_mass"] < 1
        assert 0 <= record["actor/credit/logit/tail_clamp_fraction"] <= 1
        assert 0 < record["actor/credit/logit/support_overlap"] <= 1
        assert 0 < record["credit/teacher/context_fraction"] <= 1
