"""A broken install of the plugin says what broke and how to see it, where verl's entry-point loader hides it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

RECIPES = Path(__file__).resolve().parents[1] / "recipes"

# verl imports the plugin through its ``verl.plugins`` entry point (debug-level log on failure); a module of the
# plugin that cannot be imported stands for a broken install (a missing dependency, a bad file).
BROKEN_IMPORT = """
import sys
sys.modules["credit_plugin.reward_manager"] = None  # importing it now raises ImportError
import verl  # loads the entry point; verl swallows the error
from verl.trainer.ppo.v1 import get_trainer_cls
try:
    get_trainer_cls("credit")
except ValueError as error:
    print("VERL SAYS:", error)
"""


def _run(code: str, **env: str) -> subprocess.CompletedProcess:
    environment = {key: value for key, value in os.environ.items() if key != "VERL_USE_EXTERNAL_MODULES"}
    return subprocess.run(
        [sys.executable, "-c", code], env={**environment, **env}, capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow  # two fresh interpreters importing verl (about 15 s each here)
def test_a_broken_plugin_import_names_the_error_and_the_setting_that_shows_it():
    result = _run(BROKEN_IMPORT)
    assert "VERL SAYS: Unknown trainer 'credit'" in result.stdout, result.stdout + result.stderr
    assert "credit_plugin could not be imported: ModuleNotFoundError" in result.stderr
    assert "credit_plugin.reward_manager" in result.stderr, "the real error, not only verl's 'unknown trainer'"
    assert "VERL_USE_EXTERNAL_MODULES=credit_plugin" in result.stderr
    # With that setting the import fails loudly, with the traceback.
    loud = _run(BROKEN_IMPORT, VERL_USE_EXTERNAL_MODULES="credit_plugin")
    assert loud.returncode != 0 and "Traceback" in loud.stderr and "credit_plugin.reward_manager" in loud.stderr


def test_every_recipe_launch_gives_the_setting_that_shows_the_import_error():
    """Launchers set it for the driver and Ray's workers; recipes launched by hand show it in their command."""
    setting = "VERL_USE_EXTERNAL_MODULES"
    for launcher in ("paper/launch.py", "tiny_cpu/demo.py"):
        text = (RECIPES / launcher).read_text()
        assert f'"{setting}": "credit_plugin"' in text, launcher
    for recipe in (*sorted(RECIPES.glob("megatron/credit_*.yaml")), RECIPES / "tiny_cpu/credit.yaml"):
        header = recipe.read_text().split("\nhydra:")[0]
        assert f"{setting}=credit_plugin python -m verl.trainer.main_ppo" in header, recipe
        assert f"+ray_kwargs.ray_init.runtime_env.env_vars.{setting}=credit_plugin" in header, recipe
    readme = (RECIPES.parent / "README.md").read_text()
    assert f"{setting}=credit_plugin" in readme and "credit_plugin could not be imported" in readme
