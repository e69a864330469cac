"""``bench/learn.py`` resumes a bench from its results file: only what is missing runs again."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _learn():
    spec = importlib.util.spec_from_file_location("learn_bench", REPO / "bench/learn.py")
    module = importlib.util.module_from_spec(spec)
    # dataclasses resolve their module through sys.modules
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_earlier_runs_of_the_same_budget_are_kept_and_failed_ones_run_again(tmp_path):
    learn = _learn()
    setting = vars(learn.Setting())
    path = tmp_path / "results.json"
    finished, failed, other = {"seed": 1, "reward": [0.5]}, {"seed": 2, "error": "boom"}, {"seed": 3, "reward": [0.1]}
    path.write_text(json.dumps({"setting": setting, "runs": {"grpo": [finished, failed], "sdpo": [other]}}))

    assert learn._earlier_runs(path, setting) == {"grpo": [finished], "sdpo": [other]}
    assert learn._earlier_runs(path, setting | {"lr": setting["lr"] * 2}) == {}
    assert learn._earlier_runs(tmp_path / "missing.json", setting) == {}
