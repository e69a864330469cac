"""A broken install of the plugin says what broke and how to see it, where verl's entry-point loader hides it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir

from credit_plugin.config import CONFIG_DIR

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


def test_a_broken_plugin_import_names_the_error_and_the_setting_that_shows_it():
    result = _run(BROKEN_IMPORT)
    assert "VERL SAYS: Unknown trainer 'credit'" in result.stdout, result.stdout + result.stderr
    assert "credit_plugin could not be imported: ModuleNotFoundError" in result.stderr
    assert "credit_plugin.reward_manager" in result.stderr, "the real error, not only verl's 'unknown trainer'"
    assert "VERL_USE_EXTERNAL_MODULES=credit_plugin" in result.stderr
    # With that setting the import fails loudly, with the traceback.
    loud = _run(BROKEN_IMPORT, VERL_USE_EXTERNAL_MODULES="credit_plugin")
    assert loud.returncode != 0 and "Traceback" in loud.stderr and "credit_plugin.reward_manager" in loud.stderr


def test_every_recipe_imports_the_plugin_loudly_in_ray_workers():
    """The plugin's defaults (composed by credit_trainer.yaml and every recipe) pass the setting to Ray."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        config = compose(config_name="credit_trainer")
    assert config.ray_kwargs.ray_init.runtime_env.env_vars.VERL_USE_EXTERNAL_MODULES == "credit_plugin"
    recipes = [path for path in sorted(RECIPES.rglob("*.yaml")) if "- ppo_trainer" in path.read_text()]
    assert len(recipes) >= 5
    for recipe in recipes:
        assert "- credit_defaults" in recipe.read_text(), f"{recipe} does not compose credit_defaults"
