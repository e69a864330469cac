"""The ``credit:`` section is validated on construction with errors that name the option."""

from __future__ import annotations

from dataclasses import fields

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from credit_plugin.config import CONFIG_DIR, CreditConfig


def test_defaults_are_the_method_defaults():
    config = CreditConfig()
    assert (config.contrast_coef, config.num_negatives, config.negative_aggregate) == (0.25, 1, "mean")
    assert (config.contrast_form, config.contrast_centering) == ("reward", "none")
    assert (config.granularity, config.topk, config.outcome_mix) == ("token", 100, 0.0)
    assert (config.teacher, config.teacher_update_rate, config.success_threshold) == ("ema", 0.05, 0.5)
    assert config.max_reprompt_len == 10240 and config.is_clip is None
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
        ("token_records", -1, "credit.token_records must be >= 0"),
        ("token_records", 2.5, "credit.token_records must be an integer"),
        ("token_records", True, "credit.token_records must be an integer"),
        ("token_records_dir", "  ", "credit.token_records_dir must be a folder path or null"),
        ("token_records_dir", 3, "credit.token_records_dir must be a folder path or null"),
    ],
)
def test_out_of_range_values_name_the_option(option, value, message):
    with pytest.raises(ValueError, match=message):
        CreditConfig.from_dict({option: value})


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return compose(config_name="credit_trainer", overrides=list(overrides))


def test_plugin_yaml_composes_over_verl_ppo_trainer():
    config = _compose("credit.contrast_coef=0")
    assert config.algorithm.adv_estimator == "credit"
    assert config.trainer.v1.trainer_mode == "credit"
    assert config.reward.reward_manager.name == "credit"
    assert config.actor_rollout_ref.rollout.n == 1 and "ppo_mini_batch_size" in config.actor_rollout_ref.actor
    assert CreditConfig.from_dict(config.credit).is_sdpo


# A legal non-default value for every option, written as on main_ppo's command line.
COMMAND_LINE_VALUES = {
    "contrast_coef": ("0.5", 0.5),
    "contrast_form": ("logprob", "logprob"),
    "contrast_centering": ("batch", "batch"),
    "contrast_swap": ("question", "question"),
    "num_negatives": ("3", 3),
    "negative_aggregate": ("logmeanexp", "logmeanexp"),
    "negative_seed": ("7", 7),
    "granularity": ("logit", "logit"),
    "topk": ("20", 20),
    "distillation_add_tail": ("false", False),
    "alpha": ("0.25", 0.25),
    "is_clip": ("2.0", 2.0),
    "topk_source": ("teacher", "teacher"),
    "outcome_mix": ("0.1", 0.1),
    "teacher": ("frozen", "frozen"),
    "teacher_update_rate": ("0.2", 0.2),
    "success_threshold": ("0.9", 0.9),
    "dont_reprompt_on_self_success": ("false", False),
    "remove_thinking_from_demonstration": ("false", False),
    "include_environment_feedback": ("false", False),
    "feedback_only_without_solution": ("false", False),
    "max_reprompt_len": ("512", 512),
    "reprompt_truncation": ("left", "left"),
    "reprompt_template": ("'Q: {prompt}{solution}{feedback} Again.'", "Q: {prompt}{solution}{feedback} Again."),
    "solution_template": ("'Solved: {successful_previous_attempt}'", "Solved: {successful_previous_attempt}"),
    "feedback_template": ("'Feedback: {feedback_raw}'", "Feedback: {feedback_raw}"),
    "token_records": ("3", 3),
    "token_records_dir": ("/tmp/records", "/tmp/records"),
}


def test_yaml_defaults_are_the_dataclass_defaults():
    section = _compose().credit
    assert set(section) == {field.name for field in fields(CreditConfig)}, "every option is in credit_defaults.yaml"
    assert CreditConfig.from_dict(section) == CreditConfig()


# Options that exclude each other: the logit level's own, and those it refuses (token level only).
LOGIT_ONLY = {"granularity", "topk", "distillation_add_tail", "alpha", "is_clip", "topk_source"}
TOKEN_ONLY = {"contrast_centering", "outcome_mix", "contrast_coef"}


@pytest.mark.parametrize("left_out", [LOGIT_ONLY, TOKEN_ONLY])
def test_every_option_is_settable_from_the_command_line(left_out):
    assert set(COMMAND_LINE_VALUES) == {field.name for field in fields(CreditConfig)}
    values = {name: pair for name, pair in COMMAND_LINE_VALUES.items() if name not in left_out}
    # topk_source=teacher is SDPO-only (contrast_coef 0)
    extra = ["credit.contrast_coef=0.0"] if "granularity" in values else []
    config = _compose(*(f"credit.{name}={text}" for name, (text, _) in values.items()), *extra)
    credit = CreditConfig.from_dict(config.credit)
    for name, (_, value) in values.items():
        assert getattr(credit, name) == value, name


@pytest.mark.parametrize(
    ("option", "value"),
    [("topk", 20), ("alpha", 0.1), ("distillation_add_tail", False), ("is_clip", 2.0), ("topk_source", "teacher")],
)
def test_logit_only_options_are_refused_with_token_granularity(option, value):
    with pytest.raises(ValueError, match=f"credit.{option} acts only with credit.granularity=logit"):
        CreditConfig.from_dict({option: value})
    logit = {option: value, "granularity": "logit", "contrast_coef": 0.0}
    assert getattr(CreditConfig.from_dict(logit), option) == value


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"contrast_form": "pmi"}, "credit.contrast_form=pmi has no logit-level meaning"),
        ({"contrast_form": "bounded"}, "credit.contrast_form=bounded is defined on the sampled token only"),
        ({"contrast_centering": "batch"}, "credit.contrast_centering=batch does nothing with credit.granularity=logit"),
        ({"outcome_mix": 0.5}, "credit.outcome_mix is not defined with credit.granularity=logit"),
        ({"topk_source": "teacher"}, "credit.topk_source=teacher with credit.contrast_coef > 0"),
    ],
)
def test_options_without_a_logit_level_meaning_are_refused_there(options, message):
    with pytest.raises(ValueError, match=message):
        CreditConfig.from_dict({"granularity": "logit", "contrast_coef": 0.5, **options})
    CreditConfig.from_dict({"granularity": "token", "contrast_coef": 0.5, **options, "topk_source": "student"})
