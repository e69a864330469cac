"""The docs stay true: the configuration reference is regenerated from ``CreditConfig`` and compared with the
committed file, every option appears in it, and the side-by-side table matches the composed recipes."""

from __future__ import annotations

import dataclasses
import importlib.util
import re
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from credit_plugin.config import CreditConfig

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def generator():
    spec = importlib.util.spec_from_file_location("gen_config_doc", REPO / "scripts" / "gen_config_doc.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_configuration_reference_is_current_and_covers_every_option(generator):
    committed = (REPO / "docs" / "configuration.md").read_text()
    assert generator.main(["--check"]) == 0, "docs/configuration.md is stale: run python scripts/gen_config_doc.py"
    for field in dataclasses.fields(CreditConfig):
        assert f"| `credit.{field.name}` |" in committed


def test_a_new_option_without_a_description_stops_the_generator(generator, monkeypatch):
    @dataclasses.dataclass
    class Extended(CreditConfig):
        new_option: int = 3

    monkeypatch.setattr(generator, "CreditConfig", Extended)
    with pytest.raises(SystemExit, match=r"describe credit.\['new_option'\]"):
        generator.render()
    monkeypatch.setitem(generator.DESCRIPTIONS, "new_option", "a | b")
    assert "| `credit.new_option` | int | `3` | a \\| b |" in generator.render()


def test_side_by_side_table_matches_the_recipes():
    text = (REPO / "docs" / "algorithms.md").read_text()
    rows = dict(re.findall(r"^\| `([a-z_.0-9]+)`[^|]*\| (.+) \|$", text, flags=re.MULTILINE))
    algos = ("grpo", "sdpo", "credit")
    with initialize_config_dir(config_dir=str(REPO / "recipes" / "paper"), version_base=None):
        configs = [compose(config_name="sciknoweval", overrides=[f"algo={algo}"]) for algo in algos]
    for key in ("algorithm.adv_estimator", "trainer.v1.trainer_mode", "reward.reward_manager.name"):
        cells = [cell.strip().strip("`") for cell in rows[key].split("|")]
        assert cells == [str(OmegaConf.select(config, key)) for config in configs], key
    sdpo_cell = rows["credit.contrast_coef"].split("|")[1].strip()
    assert sdpo_cell == f"`{configs[1].credit.contrast_coef}`" == "`0.0`"
