"""``make bench`` runs: its quick mode writes every section with finite, positive timings and ratios."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_quick_bench_writes_every_section(tmp_path):
    out = tmp_path / "results.json"
    command = [sys.executable, str(REPO / "bench/run.py"), "--quick", "--no-workers", "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report["results"]) == {"math", "teacher_build"}
    assert {"credit_token_rewards_mean_K2", "credit_token_rewards_logmeanexp_K2"} <= set(report["results"]["math"])
    build = report["results"]["teacher_build"]
    # K = 2 contrast variants: about three times the tokens of SDPO's single variant.
    assert 2.5 < build["build_credit_K2"]["tokens_ratio"] <= 3.0
    for rows in report["results"].values():
        for name, row in rows.items():
            assert math.isfinite(row["ms"]) and row["ms"] > 0, name
            assert math.isfinite(row["ratio"]) and row["ratio"] > 0, name
    assert "| math | sdpo_token_rewards |" in result.stdout
