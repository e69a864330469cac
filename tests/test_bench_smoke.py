"""``make bench`` runs: its quick mode writes every section with finite, positive timings and ratios."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

# runs bench/run.py --quick in a fresh process (about 40 s on 2 cores)
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
K = 4  # the bench's number of negatives, in quick mode too
EXPECTED = {
    "math": {"sdpo_token_rewards", f"credit_token_rewards_mean_K{K}", f"credit_token_rewards_logmeanexp_K{K}"},
    "teacher_build": {"build_sdpo", f"build_credit_K{K}"},
    "teacher_rows": {f"teacher_rows_K{K}"},
    "reward": {"code_serial", "code_parallel_8"},
}


def test_quick_bench_writes_every_section(tmp_path):
    out = tmp_path / "results.json"
    command = [sys.executable, str(REPO / "bench/run.py"), "--quick", "--no-workers", "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())

    results = report["results"]
    assert set(results) == set(EXPECTED), "a section is missing or unexpected"
    assert report["skipped"] == ["teacher_pass", "logit_teacher_pass", "megatron_teacher_pass", "async_step"]
    for section, names in EXPECTED.items():
        assert set(results[section]) == names, section
        for name, row in results[section].items():
            assert math.isfinite(row["ms"]) and row["ms"] > 0, (section, name)
            assert math.isfinite(row["ratio"]) and row["ratio"] > 0, (section, name)
            baseline = results[section][row["baseline"]]
            assert baseline["ratio"] == 1.0, (section, name)
            assert math.isclose(row["ratio"], row["ms"] / baseline["ms"], rel_tol=0.02), (section, name)
            assert f"| {section} | {name} |" in result.stdout

    build = results["teacher_build"]
    # K negatives: 1 + K variants of every sample, each nearly as long as SDPO's single one.
    assert 0.9 * (1 + K) < build[f"build_credit_K{K}"]["tokens_ratio"] < 1.1 * (1 + K)
    assert build["build_sdpo"]["samples"] == build[f"build_credit_K{K}"]["samples"] > 0
    # About half the samples without a context: their 1 + K rows are not sent (one plain row is, for the sanity
    # metric), so the saving is about (1 - context_fraction) of the rows and tokens of all variants.
    rows = results["teacher_rows"][f"teacher_rows_K{K}"]
    assert 0.3 < rows["context_fraction"] < 0.7
    assert rows["rows_all_variants"] == (1 + K) * rows["samples"]
    skipped = round((1 - rows["context_fraction"]) * rows["samples"])
    assert rows["rows_sent"] == rows["rows_all_variants"] - (1 + K) * skipped + 1
    assert rows["tokens_sent"] < rows["tokens_all_variants"]
    assert rows["tokens_saved_fraction"] > 0.8 * (1 - rows["context_fraction"]) - 0.1
    assert report["machine"]["cpus"] >= 1 and report["machine"]["torch"]
    assert all(row["samples"] == 8 and row["samples_per_s"] > 0 for row in results["reward"].values())


def test_sections_runs_only_the_sections_named(tmp_path):
    out = tmp_path / "results.json"
    command = [sys.executable, str(REPO / "bench/run.py"), "--quick", "--sections", "teacher_build", "math"]
    result = subprocess.run([*command, "--out", str(out)], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert list(report["results"]) == ["teacher_build", "math"] and report["skipped"] == []
    refused = subprocess.run([*command[:-2], "teacher_passes"], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert refused.returncode == 2 and "invalid choice: 'teacher_passes'" in refused.stderr
