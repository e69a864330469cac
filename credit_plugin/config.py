"""The ``credit:`` config section, validated on construction (defaults from ``docs/method.md``)."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from credit_plugin.rewards import AGGREGATES, CENTERINGS, CONTRAST_FORMS

CONFIG_DIR = str(Path(__file__).parent / "conf")
"""Hydra ``--config-path`` holding ``credit_trainer.yaml`` (composes over verl's ``ppo_trainer``)."""

GRANULARITIES = ("token", "logit")
TEACHERS = ("frozen", "current", "ema", "trust_region")
TRUNCATION_SIDES = ("left", "right", "error")
# What a contrast variant swaps in from the negative (docs/method.md, "the other input"): its whole prompt (every
# message, system prompt included) or only the question (its last user turn, in sample i's own messages).
CONTRAST_SWAPS = ("prompt", "question")
# Options of the logit-level loss (``distill.py``); the token path has no use for them.
LOGIT_OPTIONS = ("topk", "alpha", "distillation_add_tail", "is_clip", "topk_source")
TOPK_SOURCES = ("student", "teacher")
# Options that verl already has: one setting, read where verl reads it.
VERL_OPTIONS = {"norm_adv_by_std_in_grpo": "algorithm.norm_adv_by_std_in_grpo"}

DEFAULT_REPROMPT_TEMPLATE = "{prompt}{solution}{feedback}\n\nCorrectly solve the original question."
DEFAULT_SOLUTION_TEMPLATE = "\nCorrect solution:\n\n{successful_previous_attempt}\n\n"
DEFAULT_FEEDBACK_TEMPLATE = "\nThe following is feedback from your unsuccessful earlier attempt:\n\n{feedback_raw}\n\n"


@dataclass
class CreditConfig:
    """Options of CREDIT. ``contrast_coef=0`` is SDPO.

    Attributes mirror the YAML ``credit:`` section of ``credit_plugin/conf/credit_trainer.yaml``.
    """

    # make learn (docs/method.md): lambda = 1 lowered held-out success; 0.25 was the least harmful measured.
    contrast_coef: float = 0.25
    contrast_form: str = "reward"
    contrast_centering: str = "none"
    contrast_swap: str = "prompt"
    num_negatives: int = 1
    negative_aggregate: str = "mean"
    negative_seed: int = 0
    granularity: str = "token"
    topk: int = 100
    distillation_add_tail: bool = True
    alpha: float = 0.5
    is_clip: float | None = None
    # whose top-k ids the logit-level loss distils over: the student's (SDPO's default) or the teacher's
    topk_source: str = "student"
    outcome_mix: float = 0.0
    teacher: str = "ema"
    # tau, SDPO's one option for both teachers that move away from the frozen model: the step of the ``ema``
    # teacher (workers.py) and the logit mix coefficient of the ``trust_region`` teacher (trust_region.py).
    teacher_update_rate: float = 0.05
    success_threshold: float = 0.5
    dont_reprompt_on_self_success: bool = True
    remove_thinking_from_demonstration: bool = True
    include_environment_feedback: bool = True
    feedback_only_without_solution: bool = True
    max_reprompt_len: int = 10240
    reprompt_truncation: str = "right"
    reprompt_template: str = DEFAULT_REPROMPT_TEMPLATE
    solution_template: str = DEFAULT_SOLUTION_TEMPLATE
    feedback_template: str = DEFAULT_FEEDBACK_TEMPLATE
    # token-level credit report (credit_plugin/token_records.py, python -m credit_plugin.report): samples per
    # step whose per-token scores are written to <token_records_dir>/token_records.jsonl; 0 writes nothing.
    token_records: int = 0
    # where; null: the run's trainer.default_local_dir
    token_records_dir: str | None = None

    def __post_init__(self) -> None:
        self._check_choice("negative_aggregate", AGGREGATES)
        self._check_choice("contrast_form", CONTRAST_FORMS)
        self._check_choice("contrast_centering", CENTERINGS)
        self._check_choice("contrast_swap", CONTRAST_SWAPS)
        self._check_choice("granularity", GRANULARITIES)
        self._check_choice("teacher", TEACHERS)
        self._check_choice("reprompt_truncation", TRUNCATION_SIDES)
        self._check_choice("topk_source", TOPK_SOURCES)
        self._check_range("contrast_coef", low=0.0)
        self._check_range("num_negatives", low=1, integer=True)
        self._check_range("topk", low=1, integer=True)
        self._check_range("alpha", low=0.0, high=1.0)
        self._check_range("outcome_mix", low=0.0, high=1.0)
        self._check_range("teacher_update_rate", low=0.0, high=1.0)
        self._check_range("max_reprompt_len", low=1, integer=True)
        self._check_range("token_records", low=0, integer=True)
        if self.token_records_dir is not None and (
            not isinstance(self.token_records_dir, str) or not self.token_records_dir.strip()
        ):
            raise ValueError(f"credit.token_records_dir must be a folder path or null, got {self.token_records_dir!r}")
        if self.is_clip is not None:
            self._check_range("is_clip", low=1.0)
        for name, keys in (
            ("reprompt_template", ("{prompt}", "{solution}", "{feedback}")),
            ("solution_template", ("{successful_previous_attempt}",)),
            ("feedback_template", ("{feedback_raw}",)),
        ):
            missing = [key for key in keys if key not in getattr(self, name)]
            if missing:
                raise ValueError(f"credit.{name} must contain {missing}")
        if self.granularity == "token":
            defaults = {f.name: f.default for f in fields(self)}
            changed = [name for name in LOGIT_OPTIONS if getattr(self, name) != defaults[name]]
            if changed:
                raise ValueError(
                    f"credit.{changed[0]} acts only with credit.granularity=logit, not with token (the sampled-token "
                    "advantage goes through verl's PPO loss, whose ratio clip is actor.clip_ratio_low/high and "
                    "whose rollout/train mismatch correction is algorithm.rollout_correction); leave it unset"
                )

        if self.granularity == "logit":
            self._check_logit_level()

    def _check_logit_level(self) -> None:
        """Refuse the options that have no meaning at logit level (docs/method.md, "CREDIT at logit level")."""
        contrast = self.contrast_coef > 0
        if contrast and self.contrast_form == "pmi":
            raise ValueError(
                "credit.contrast_form=pmi has no logit-level meaning (it needs the student's distribution under every "
                "swapped prompt); with credit.granularity=logit use reward or logprob"
            )
        if contrast and self.contrast_form not in ("reward", "logprob"):
            raise ValueError(
                f"credit.contrast_form={self.contrast_form} is defined on the sampled token only (its floor is SDPO's "
                "token reward, which has no per-candidate analogue in the top-k target); with "
                "credit.granularity=logit use reward or logprob"
            )
        if self.contrast_centering != "none":
            raise ValueError(
                f"credit.contrast_centering={self.contrast_centering} does nothing with credit.granularity=logit "
                "(a constant shift of log q is removed by its renormalisation); leave it none"
            )
        if self.outcome_mix > 0:
            raise ValueError(
                "credit.outcome_mix is not defined with credit.granularity=logit (the distillation loss is not an "
                "advantage to mix with GRPO's); leave it 0 or use credit.granularity=token"
            )
        if contrast and self.topk_source == "teacher":
            raise ValueError(
                "credit.topk_source=teacher with credit.contrast_coef > 0 is not supported at logit level (the "
                "contrastive target needs the old student's log-probs on the support); use topk_source=student"
            )

    def _check_choice(self, name: str, choices: tuple[str, ...]) -> None:
        value = getattr(self, name)
        if value not in choices:
            raise ValueError(f"credit.{name} must be one of {choices}, got {value!r}")

    def _check_range(self, name: str, low: float, high: float | None = None, integer: bool = False) -> None:
        value = getattr(self, name)
        if isinstance(value, bool) or not isinstance(value, int | float) or (integer and not isinstance(value, int)):
            kind = "an integer" if integer else "a number"
            raise ValueError(f"credit.{name} must be {kind}, got {value!r}")
        if value < low or (high is not None and value > high):
            bounds = f"[{low}, {high}]" if high is not None else f">= {low}"
            raise ValueError(f"credit.{name} must be {bounds}, got {value}")

    @property
    def is_sdpo(self) -> bool:
        """True when the contrastive baseline is off (lambda = 0): no negatives are scored."""
        return self.contrast_coef == 0

    @classmethod
    def from_dict(cls, section: Mapping[str, Any] | None) -> CreditConfig:
        """Build from a plain mapping or an OmegaConf node; an unknown key raises, naming a close match."""
        section = dict(section or {})
        known = {f.name for f in fields(cls)}
        for key in section:
            if key in VERL_OPTIONS:
                raise ValueError(f"credit.{key} is verl's option: set {VERL_OPTIONS[key]} instead")
            if key not in known:
                close = difflib.get_close_matches(key, sorted(known), n=1)
                hint = f"; did you mean credit.{close[0]}?" if close else f"; known options: {sorted(known)}"
                raise ValueError(f"unknown option credit.{key}{hint}")
        return cls(**section)
