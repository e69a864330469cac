"""The product's import path loads no development code (``credit_plugin.dev``) unless asked for."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = """
import sys
import verl  # loads the plugin through its verl.plugins entry point
from verl.trainer.ppo import core_algos
from verl.workers.rollout.base import _ROLLOUT_REGISTRY

assert "credit_plugin" in sys.modules, "the verl.plugins entry point did not load credit_plugin"
assert {"credit", "sdpo"} <= set(core_algos.ADV_ESTIMATOR_REGISTRY), "estimators not registered"
assert ("hf_cpu", "async") in _ROLLOUT_REGISTRY, "the hf_cpu rollout is not resolvable by name"
dev = sorted(name for name in sys.modules if name == "credit_plugin.dev" or name.startswith("credit_plugin.dev."))
print("DEV", dev)
"""


@pytest.mark.slow  # a fresh process importing verl (about 15 s)
def test_import_verl_without_dev_settings_loads_no_dev_module(tmp_path):
    env = {key: value for key, value in os.environ.items() if key not in ("VERL_PLATFORM", "VERL_USE_EXTERNAL_MODULES")}
    result = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "DEV []", result.stdout[-2000:]


def test_the_demo_task_is_not_in_the_production_scorer_table():
    from credit_plugin import scorers

    with pytest.raises(ValueError, match="no CREDIT scorer for data_source 'credit_tiny'"):
        scorers.scorer_for("credit_tiny")


WITHOUT_VERL = """
import sys
sys.modules["verl"] = None  # as if verl were not installed: importlib.util.find_spec("verl") answers None
from credit_plugin import credit_token_rewards, scorers
result = scorers.compute_score("sciknoweval", "Answer: B", "B")
assert result["score"] == 1.0, result
loaded = sorted(name for name in sys.modules if name.startswith("verl.") or name.startswith("credit_plugin.dev"))
print("LOADED", loaded)
"""


def test_the_math_and_the_scorers_import_without_verl(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_VERL], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "LOADED []", result.stdout[-2000:]


def _imports(path, package_root) -> set[str]:
    """The ``credit_plugin`` modules a file imports anywhere in it (function-level imports included)."""
    import ast

    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in names if name.split(".")[0] == package_root}


def test_the_package_has_no_import_circle():
    """No module of credit_plugin imports, directly or through others, a module that imports it back (the package
    ``__init__`` files, which re-export, aside)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "credit_plugin"
    modules = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        if parts[-1] != "__init__":
            modules[".".join(parts)] = path
    graph = {
        name: {m for m in _imports(path, "credit_plugin") if m in modules and m != name}
        for name, path in modules.items()
    }

    def reaches(start: str) -> set[str]:
        seen, todo = set(), list(graph[start])
        while todo:
            name = todo.pop()
            if name not in seen:
                seen.add(name)
                todo.extend(graph[name])
        return seen

    circles = sorted(name for name in graph if name in reaches(name))
    assert circles == [], f"modules on an import circle: {circles}"
