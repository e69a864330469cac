"""Teacher inputs for one teacher pass: SDPO reprompts, CREDIT's contrast variants, verl's no-padding layout.

Notation: ``B`` samples, ``K`` negatives (0 when ``contrast_coef == 0``), ``V = 1 + K`` variants, ``T``
response tokens. Variant ``v = 0`` of sample ``i`` is its reprompt ``reprompt(x_i, z_i)``; variant
``v = k + 1`` is ``reprompt(x_{sigma_k(i)}, z_i)``: the same solution and feedback blocks with the input of
the k-th negative row (its whole prompt, or only its question: ``credit.contrast_swap``). Every variant is
followed by the sample's *unchanged* response token ids. A sample without teacher context gets no distillation
signal, so none of its variants is scored, except the plain row (variant 0: its original prompt, the rollout
``prompts`` ids when given, else the rendering of ``raw_prompt``) of the first such sample, for the
``credit/teacher_sanity_gap`` check; the worker batch holds only the scored rows and ``TeacherBatch.row_index``
maps them back (skipped entries read back as 0).

:func:`build_teacher_batch` runs the four steps, one module each:

- :mod:`.contexts`: which demonstration and which feedback each sample gets (SDPO's rules);
- :mod:`.prompts`: the reprompted chat messages, rendered as rollout renders them, and truncation to
  ``max_reprompt_len``;
- :mod:`.layout`: verl's no-padding ``TensorDict`` of all ``V * B`` rows (:class:`TeacherBatch`), padded to the
  data-parallel multiple, and the token budget (:func:`fit_token_budget`);
- :mod:`.readback`: the worker's log-probs back into the samples' response layout (:func:`split_teacher_log_probs`).

:mod:`.student` lays out the policy's own pass of ``contrast_form: pmi`` (the swapped rollout prompts, no context).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from credit_plugin.config import CreditConfig
from credit_plugin.negatives import sample_negatives
from credit_plugin.teacher.contexts import (
    TeacherContexts,
    remove_thinking,
    select_demonstrations,
    teacher_contexts,
)
from credit_plugin.teacher.layout import TeacherBatch, assemble, fit_token_budget, token_rows
from credit_plugin.teacher.prompts import TeacherPrompts
from credit_plugin.teacher.readback import split_teacher_log_probs
from credit_plugin.teacher.student import StudentContrastBatch, build_student_contrast_batch, split_student_log_probs

__all__ = [
    "StudentContrastBatch",
    "TeacherBatch",
    "TeacherContexts",
    "build_student_contrast_batch",
    "build_teacher_batch",
    "fit_token_budget",
    "remove_thinking",
    "select_demonstrations",
    "split_student_log_probs",
    "split_teacher_log_probs",
    "teacher_contexts",
]


@torch.no_grad()
def build_teacher_batch(
    *,
    raw_prompt: Sequence[Sequence[Mapping[str, Any]]],
    responses: torch.Tensor | Sequence,
    response_mask: torch.Tensor | Sequence,
    uid: Sequence | np.ndarray,
    scores: torch.Tensor | Sequence[float],
    feedback: Sequence[str | None] | None,
    tokenizer: PreTrainedTokenizerBase,
    config: CreditConfig,
    excluded: Sequence[bool] | None = None,
    response_text: Sequence[str] | None = None,
    prompts: torch.Tensor | Sequence | None = None,
    apply_chat_template_kwargs: Mapping[str, Any] | None = None,
    generator: torch.Generator | None = None,
    temperature: float = 1.0,
    row_multiple: int = 1,
) -> TeacherBatch:
    """Build the teacher pass input of one training batch.

    Args:
        raw_prompt: length B, each sample's chat messages (``{"role", "content"}`` dicts) as verl stores them.
        responses: B rows of response token ids (jagged nested tensor or sequence of 1-D), reused unchanged.
        response_mask: B rows, same lengths as ``responses``.
        uid: length B, prompt group of each sample.
        scores: shape (B,), outcome score per sample.
        feedback: length B environment feedback (None or blank for none), or None for no feedback at all.
        excluded: length B, samples that get no teacher context at all (a failed reward), or None.
        tokenizer: the rollout tokenizer with its chat template.
        config: the ``credit:`` options (templates, thresholds, ``num_negatives``, ``max_reprompt_len``...).
        response_text: length B decoded responses (the demonstrations); decoded with
            ``skip_special_tokens=True`` when omitted.
        prompts: B rows of rollout prompt ids; when given, samples without teacher context use them as
            their teacher prompt, so a ``current`` teacher reproduces ``old_log_probs`` on those rows.
        apply_chat_template_kwargs: the rollout's ``data.apply_chat_template_kwargs`` (e.g. ``enable_thinking``).
        generator: randomness of the negatives (see ``credit_plugin.negatives.negatives_generator``).
        temperature: the rollout temperature; the worker divides logits by it, as for ``old_log_probs``.
        row_multiple: pad the row count to a multiple of it: the data-parallel size, times
            ``infer_micro_batch_size_per_gpu`` when dynamic batch size is off.

    Returns:
        The :class:`TeacherBatch`; read the worker output back with :func:`split_teacher_log_probs`.

    Raises:
        ValueError: inconsistent inputs (naming the sample), too few prompt groups for K negatives, or a
            teacher prompt over ``max_reprompt_len`` with ``reprompt_truncation='error'`` (naming sample and lengths).
    """
    batch_size = len(raw_prompt)
    if row_multiple < 1:
        raise ValueError(f"row_multiple must be >= 1, got {row_multiple}")
    response_rows = token_rows("responses", responses, batch_size)
    mask_rows = token_rows("response_mask", response_mask, batch_size)
    for index, (row, mask) in enumerate(zip(response_rows, mask_rows, strict=True)):
        if row.numel() != mask.numel():
            raise ValueError(
                f"sample {index}: response_mask has {mask.numel()} entries for {row.numel()} response tokens"
            )
    prompt_rows = token_rows("prompts", prompts, batch_size) if prompts is not None else None
    scores = torch.as_tensor(scores, dtype=torch.float32).reshape(-1).cpu()
    named = (("uid", uid), ("scores", scores), ("feedback", feedback), ("excluded", excluded))
    for name, value in (*named, ("response_text", response_text)):
        if value is not None and len(value) != batch_size:
            raise ValueError(f"{name} has {len(value)} entries, expected {batch_size} (one per sample)")
    if response_text is None:
        response_text = tokenizer.batch_decode([row.tolist() for row in response_rows], skip_special_tokens=True)

    contexts = teacher_contexts(uid, scores, feedback, response_text, config, excluded)
    num_negatives = 0 if config.is_sdpo else config.num_negatives
    negatives = (
        sample_negatives(uid, num_negatives, generator)
        if num_negatives
        else torch.empty(batch_size, 0, dtype=torch.long)
    )
    has_context = contexts.mask.bool().tolist()
    # One plain row of a sample without context is scored for the sanity metric; its other rows are not.
    sanity = [index for index in range(batch_size) if not has_context[index]][:1]
    sources = torch.cat([torch.arange(batch_size)[:, None], negatives], dim=1).tolist()  # (B, V) prompt rows
    renderer = TeacherPrompts(raw_prompt, has_context, tokenizer, config, apply_chat_template_kwargs)
    # teacher prompt ids per scored (sample, variant), None where not scored; rendered in one batch, rollout
    # prompts reused where allowed
    teacher_prompts: list[list[list[int] | None]] = [[None] * (1 + num_negatives) for _ in range(batch_size)]
    pending = []
    for index in range(batch_size):
        if not has_context[index] and index not in sanity:
            continue
        for variant, source in enumerate(sources[index]):
            if not has_context[index] and variant > 0:
                break
            if variant == 0 and not has_context[index] and prompt_rows is not None:
                teacher_prompts[index][0] = prompt_rows[index].tolist()
            else:
                pending.append((index, variant, source))
    rendered = renderer.render([(i, s, contexts.solution[i], contexts.feedback[i]) for i, _, s in pending])
    for (index, variant, _), ids in zip(pending, rendered, strict=True):
        teacher_prompts[index][variant] = ids

    truncated = torch.zeros(batch_size, dtype=torch.bool)
    limit = config.max_reprompt_len
    for index in range(batch_size):
        if not has_context[index]:
            continue
        longest = max(len(ids) for ids in teacher_prompts[index])
        if longest <= limit:
            continue
        if config.reprompt_truncation == "error":
            raise ValueError(
                f"teacher prompt of sample {index} has {longest} tokens (longest of its {1 + num_negatives} "
                f"variants), over credit.max_reprompt_len={limit}; raise credit.max_reprompt_len or set "
                f"credit.reprompt_truncation to 'left' or 'right'"
            )
        teacher_prompts[index] = renderer.truncate(
            index, sources[index], contexts.solution[index], contexts.feedback[index], longest
        )
        truncated[index] = True

    return assemble(
        teacher_prompts, response_rows, mask_rows, contexts, negatives, truncated, tokenizer, temperature, row_multiple
    )
