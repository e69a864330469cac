"""Which demonstration and which feedback go into each sample's teacher context: SDPO's rules.

SDPO's rules (``lasgroup/SDPO`` ``ray_trainer.py``, reimplemented):

- demonstration: the first row of the same uid (batch order) whose score is ``>= success_threshold``,
  never the sample itself when ``dont_reprompt_on_self_success``; ``<think>`` blocks removed when
  ``remove_thinking_from_demonstration``.
- feedback: the sample's environment feedback when ``include_environment_feedback`` and it is a
  non-blank string; with ``feedback_only_without_solution`` only when there is no demonstration.
- a sample with neither gets ``self_distillation_mask = 0``.

Text level only: no tokenizer, no verl.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from credit_plugin.config import CreditConfig
from credit_plugin.negatives import group_ids

_THINK_BLOCK = re.compile(r"<think>.*?</think>\s*", flags=re.DOTALL)


def remove_thinking(text: str) -> str:
    """Drop ``<think>...</think>`` blocks from a demonstration.

    A ``</think>`` left without its opening tag (templates that put ``<think>`` in the generation prompt)
    ends a reasoning part that started the response: it is dropped too.
    """
    text = _THINK_BLOCK.sub("", text)
    if "</think>" in text:
        text = text.split("</think>", 1)[1].lstrip()
    return text


def select_demonstrations(
    uids: Sequence | np.ndarray, scores: torch.Tensor, success_threshold: float, exclude_self: bool
) -> torch.LongTensor:
    """For each row, the first successful row of its uid group, or -1.

    Args:
        uids: length B, prompt group of each row.
        scores: shape (B,), outcome score of each row.
        success_threshold: a score at or above it makes a row a demonstration.
        exclude_self: a row is never its own demonstration (``dont_reprompt_on_self_success``).

    Returns:
        LongTensor of shape (B,): batch index of the demonstration, -1 where there is none.
    """
    groups = group_ids(uids)
    batch_size = groups.numel()
    num_groups = int(groups.max()) + 1 if batch_size else 0
    rows = torch.arange(batch_size)
    none = torch.full((num_groups,), batch_size)
    # first and second successful row of each group: two masked scatter-min passes
    key = torch.where(scores >= success_threshold, rows, batch_size)
    first = none.scatter_reduce(0, groups, key, reduce="amin")
    key = torch.where(key == first[groups], batch_size, key)
    second = none.scatter_reduce(0, groups, key, reduce="amin")
    demo = first[groups]
    if exclude_self:
        demo = torch.where(demo == rows, second[groups], demo)
    return torch.where(demo == batch_size, -1, demo)


@dataclass(frozen=True)
class TeacherContexts:
    """What goes into each sample's teacher context (text level).

    Attributes:
        demonstration: shape (B,), batch index of the sibling whose response is the solution, -1 for none.
        solution: length B, the demonstration text (thinking removed as configured) or None.
        feedback: length B, the feedback text that is *used*, or None.
        feedback_available: shape (B,) bool, a non-blank feedback exists and feedback is enabled.
    """

    demonstration: torch.LongTensor
    solution: list[str | None]
    feedback: list[str | None]
    feedback_available: torch.BoolTensor

    @property
    def has_solution(self) -> torch.BoolTensor:
        return self.demonstration >= 0

    @property
    def uses_feedback(self) -> torch.BoolTensor:
        return torch.tensor([text is not None for text in self.feedback], dtype=torch.bool)

    @property
    def mask(self) -> torch.FloatTensor:
        """``self_distillation_mask``, shape (B,): 1 where the sample has a teacher context."""
        return (self.has_solution | self.uses_feedback).float()


def teacher_contexts(
    uids: Sequence | np.ndarray,
    scores: torch.Tensor,
    feedback: Sequence[str | None] | None,
    response_texts: Sequence[str],
    config: CreditConfig,
    excluded: Sequence[bool] | None = None,
) -> TeacherContexts:
    """Choose each sample's demonstration and feedback by SDPO's rules (see the module docstring).

    ``excluded`` (length B): samples that get no context whatever their group and feedback (a sample whose
    scoring failed: its score and feedback say nothing about the response).
    """
    demonstration = select_demonstrations(
        uids, scores, config.success_threshold, exclude_self=config.dont_reprompt_on_self_success
    )
    if excluded is not None:
        demonstration = torch.where(torch.as_tensor(list(excluded), dtype=torch.bool), -1, demonstration)
    solution = [None if j < 0 else response_texts[j] for j in demonstration.tolist()]
    if config.remove_thinking_from_demonstration:
        solution = [None if text is None else remove_thinking(text) for text in solution]
    feedback = feedback if feedback is not None else [None] * len(solution)
    if excluded is not None:
        feedback = [None if out else text for text, out in zip(feedback, excluded, strict=True)]
    available = [
        config.include_environment_feedback and isinstance(text, str) and bool(text.strip()) for text in feedback
    ]
    used = [
        text if ok and not (config.feedback_only_without_solution and sol is not None) else None
        for text, ok, sol in zip(feedback, available, solution, strict=True)
    ]
    return TeacherContexts(demonstration, solution, used, torch.tensor(available, dtype=torch.bool))
