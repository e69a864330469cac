"""The ``credit:`` section is validated on construction with errors that name the option."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from credit_plugin.config import CreditConfig


def test_defaults_are_the_method_defaults():
    config = CreditConfig()
    assert (config.contrast_coef, config.num_negatives, config.negative_aggregate) == (1.0, 1, "mean")
    assert (config.granularity, config.topk, config.outcome_mix) == ("token", 100, 0.0)
    assert (config.teacher, config.teacher_update_rate, config.success_threshold) == ("ema", 0.05, 0.5)
    assert config.max_reprompt_len == 10240 and config.is_clip == 2.0
    assert config.reprompt_template == "{prompt}{solution}{feedback}\n\nCorrectly solve the original question."
    assert not config.is_sdpo and CreditConfig(contrast_coef=0).is_sdpo


def test_from_omegaconf_section():
    section = OmegaConf.create({"contrast_coef": 0.5, "num_negatives": 4, "teacher": "frozen"})
    config = CreditConfig.from_dict(section)
    assert (config.contrast_coef, config.num_negatives, config.teacher) == (0.5, 4, "frozen")


def test_misspelt_option_names_the_close_match():
    with pytest.raises(ValueError, match=r"unknown option credit.contrast_coeff; did you mean credit.contrast_coef\?"):
        CreditConfig.from_dict({"contrast_coeff": 1.0})


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("num_negatives", -1, "credit.num_negatives must be >= 1"),
        ("num_negatives", 1.5, "credit.num_negatives must be an integer"),
        ("contrast_coef", -0.1, "credit.contrast_coef must be >= 0"),
        ("alpha", 1.5, r"credit.alpha must be \[0.0, 1.0\]"),
        ("outcome_mix", 2, "credit.outcome_mix"),
        ("teacher", "ema2", "credit.teacher must be one of"),
        ("granularity", "sequence", "credit.granularity must be one of"),
        ("negative_aggregate", "max", "credit.negative_aggregate must be one of"),
        ("reprompt_truncation", "middle", "credit.reprompt_truncation must be one of"),
        ("is_clip", 0.5, "credit.is_clip must be >= 1.0"),
        ("max_reprompt_len", 0, "credit.max_reprompt_len must be >= 1"),
        ("topk", True, "credit.topk must be an integer"),
        ("reprompt_template", "{prompt} only", "credit.reprompt_template must contain"),
    ],
)
def test_out_of_range_values_name_the_option(option, value, message):
    with pytest.raises(ValueError, match=message):
        CreditConfig.from_dict({option: value})


def test_plugin_yaml_composes_over_verl_ppo_trainer_and_mirrors_the_dataclass():
    from dataclasses import fields

    from hydra import compose, initialize_config_dir

    from credit_plugin.config import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        config = compose(config_name="credit_trainer", overrides=["credit.contrast_coef=0"])
    assert config.algorithm.adv_estimator == "credit"
    assert config.trainer.v1.trainer_mode == "credit"
    assert config.reward.reward_manager.name == "credit"
    assert config.actor_rollout_ref.rollout.n == 1 and "ppo_mini_batch_size" in config.actor_rollout_ref.actor
    credit = CreditConfig.from_dict(config.credit)
    assert credit.is_sdpo
    defaults = CreditConfig()
    template_fields = {"reprompt_template", "solution_template", "feedback_template"}
    assert set(config.credit) == {f.name for f in fields(CreditConfig)} - template_fields
    for key in set(config.credit) - {"contrast_coef"}:
        assert getattr(credit, key) == getattr(defaults, key), key
