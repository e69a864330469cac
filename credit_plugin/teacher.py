"""Teacher inputs for one teacher pass: SDPO reprompts, CREDIT's contrast variants, verl's no-padding layout.

Notation: ``B`` samples, ``K`` negatives (0 when ``contrast_coef == 0``), ``V = 1 + K`` variants, ``T``
response tokens. Variant ``v = 0`` of sample ``i`` is its reprompt ``reprompt(x_i, z_i)``; variant
``v = k + 1`` is ``reprompt(x_{sigma_k(i)}, z_i)``: the same messages, solution and feedback blocks,
with only the user prompt swapped for that of the k-th negative row. Every variant is followed by the
sample's *unchanged* response token ids.

Row order of the batch sent to the worker: row ``v * B + i`` is variant ``v`` of sample ``i``
(all originals, then negatives ``k = 0``, ..., ``k = K - 1``), followed by padding rows that make the
row count a multiple of ``row_multiple``.

``contrast_form: pmi`` also needs the policy's scores of each response under the swapped prompts without any
context: :func:`build_student_contrast_batch` lays out those ``K * B`` rows (row ``k * B + i``: the rollout
prompt of negative ``k`` of sample ``i``, then its response) for the actor's own log-prob pass.

Teacher context (SDPO's rules, ``lasgroup/SDPO`` ``ray_trainer.py``, reimplemented):

- demonstration: the first row of the same uid (batch order) whose score is ``>= success_threshold``,
  never the sample itself when ``dont_reprompt_on_self_success``; ``<think>`` blocks removed when
  ``remove_thinking_from_demonstration``.
- feedback: the sample's environment feedback when ``include_environment_feedback`` and it is a
  non-blank string; with ``feedback_only_without_solution`` only when there is no demonstration.
- ``{prompt}`` is the content of the last user turn of ``raw_prompt``; the reprompt replaces that
  content, every other message (system prompt included) is kept.
- a sample with neither gets ``self_distillation_mask = 0`` and its original prompt (its rollout
  ``prompts`` ids when given, else the rendering of ``raw_prompt``), so shapes stay fixed.

``max_reprompt_len`` bounds the prompt part of every row that carries a teacher context. To keep the chat
template, its generation prompt and the question itself intact, only the *solution and feedback text*
is truncated, by tokens (``right`` keeps its start, ``left`` its end), once per sample so that all
``V`` variants of a sample carry the identical context; the budget is set by the longest of them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tensordict import TensorDict
from transformers import PreTrainedTokenizerBase
from verl.utils import tensordict_utils as tu

from credit_plugin.config import CreditConfig
from credit_plugin.negatives import group_ids, sample_negatives

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
) -> TeacherContexts:
    """Choose each sample's demonstration and feedback by SDPO's rules (see the module docstring)."""
    demonstration = select_demonstrations(
        uids, scores, config.success_threshold, exclude_self=config.dont_reprompt_on_self_success
    )
    solution = [None if j < 0 else response_texts[j] for j in demonstration.tolist()]
    if config.remove_thinking_from_demonstration:
        solution = [None if text is None else remove_thinking(text) for text in solution]
    feedback = feedback if feedback is not None else [None] * len(solution)
    available = [
        config.include_environment_feedback and isinstance(text, str) and bool(text.strip()) for text in feedback
    ]
    used = [
        text if ok and not (config.feedback_only_without_solution and sol is not None) else None
        for text, ok, sol in zip(feedback, available, solution, strict=True)
    ]
    return TeacherContexts(demonstration, solution, used, torch.tensor(available, dtype=torch.bool))


def _last_user_turn(messages: Sequence[Mapping[str, Any]], sample: int) -> int:
    for turn in range(len(messages) - 1, -1, -1):
        if messages[turn].get("role") == "user":
            if not isinstance(messages[turn].get("content"), str):
                raise ValueError(
                    f"raw_prompt of sample {sample}: the last user turn has non-text content "
                    f"({type(messages[turn].get('content')).__name__}); multimodal prompts are not supported"
                )
            return turn
    raise ValueError(f"raw_prompt of sample {sample} has no user turn: roles {[m.get('role') for m in messages]}")


def _with_user_content(messages: Sequence[Mapping[str, Any]], turn: int, content: str) -> list[dict[str, Any]]:
    out = [dict(message) for message in messages]
    out[turn]["content"] = content
    return out


def _reprompt(config: CreditConfig, question: str, solution: str | None, feedback: str | None) -> str:
    """SDPO's reprompt: the question, the solution block, the feedback block (each empty when absent)."""
    return config.reprompt_template.format(
        prompt=question,
        solution="" if solution is None else config.solution_template.format(successful_previous_attempt=solution),
        feedback="" if feedback is None else config.feedback_template.format(feedback_raw=feedback),
    )


def _keep_tokens(ids: list[int], keep: int, side: str) -> list[int]:
    return ids[:keep] if side == "right" else ids[len(ids) - keep :]


@dataclass
class TeacherBatch:
    """One teacher pass: the worker input and what is needed to read its output back.

    Attributes:
        data: the ``compute_log_prob`` input, ``num_rows`` rows in verl's no-padding layout: jagged
            ``input_ids`` (prompt ++ response), ``position_ids``, ``prompts``, ``responses``,
            ``response_mask``, ``loss_mask``; metadata ``temperature``, ``calculate_entropy``,
            ``compute_loss``, ``max_seq_len``, ``max_response_len``.
        negatives: shape (B, K), the batch row whose prompt variant ``k + 1`` uses.
        self_distillation_mask: shape (B,) float, 1 where the sample has a teacher context.
        has_solution, uses_feedback, feedback_available, truncated: shape (B,) bool.
        prompt_lengths: shape (V, B), token length of each variant's teacher prompt.
        response_mask: shape (B, T) float, the samples' response mask, right-padded.
        num_padding_rows: rows appended after the ``V * B`` real rows (dropped when reading back).
    """

    data: TensorDict
    negatives: torch.LongTensor
    self_distillation_mask: torch.FloatTensor
    has_solution: torch.BoolTensor
    uses_feedback: torch.BoolTensor
    feedback_available: torch.BoolTensor
    truncated: torch.BoolTensor
    prompt_lengths: torch.LongTensor
    response_mask: torch.FloatTensor
    num_padding_rows: int

    @property
    def num_samples(self) -> int:
        return self.negatives.shape[0]

    @property
    def num_negatives(self) -> int:
        return self.negatives.shape[1]

    @property
    def num_rows(self) -> int:
        return len(self.data)

    def metrics(self, prefix: str = "credit/teacher") -> dict[str, float]:
        """Fractions of samples with a teacher context, a solution, used feedback; prompt lengths."""
        if self.num_samples == 0:
            return {}
        lengths = self.prompt_lengths.float()
        return {
            f"{prefix}/context_fraction": self.self_distillation_mask.mean().item(),
            f"{prefix}/solution_fraction": self.has_solution.float().mean().item(),
            f"{prefix}/feedback_fraction": self.uses_feedback.float().mean().item(),
            f"{prefix}/feedback_available_fraction": self.feedback_available.float().mean().item(),
            f"{prefix}/truncated_fraction": self.truncated.float().mean().item(),
            f"{prefix}/prompt_len_mean": lengths[0].mean().item(),
            f"{prefix}/prompt_len_max": lengths.max().item(),
        }


def _rows(name: str, value: torch.Tensor | Sequence, batch_size: int) -> list[torch.Tensor]:
    """Per-row 1-D tensors from a jagged nested tensor or a sequence of 1-D tensors/lists."""
    if isinstance(value, torch.Tensor) and not value.is_nested:
        raise ValueError(
            f"{name} must be a jagged nested tensor or a sequence of 1-D rows: a padded tensor does not say "
            "where each row ends"
        )
    rows = list(value.unbind(0)) if isinstance(value, torch.Tensor) else list(value)
    if len(rows) != batch_size:
        raise ValueError(f"{name} has {len(rows)} rows, expected {batch_size} (one per sample)")
    rows = [torch.as_tensor(row, dtype=torch.long) for row in rows]
    for index, row in enumerate(rows):
        if row.dim() != 1:
            raise ValueError(f"{name} of sample {index} must be 1-D token ids, got shape {tuple(row.shape)}")
    return rows


def _jagged(values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Jagged nested tensor of rows of ``lengths`` packed in ``values``.

    The min/max row lengths are cached on it: without them ``to_padded_tensor`` pads to the total length.
    """
    return torch.nested.nested_tensor_from_jagged(
        values,
        offsets=torch.nn.functional.pad(lengths.cumsum(0), (1, 0)),
        min_seqlen=int(lengths.min()),
        max_seqlen=int(lengths.max()),
    )


def _jagged_rows(rows: list[torch.Tensor]) -> torch.Tensor:
    return _jagged(torch.cat(rows), torch.tensor([row.numel() for row in rows], dtype=torch.long))


class _Renderer:
    """Chat-template rendering and tokenisation exactly as rollout does it (text, then ids without extras)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, chat_template_kwargs: Mapping[str, Any] | None):
        self.tokenizer = tokenizer
        self.kwargs = dict(chat_template_kwargs or {})

    def __call__(self, conversations: list[list[dict[str, Any]]]) -> list[list[int]]:
        if not conversations:
            return []
        texts = self.tokenizer.apply_chat_template(
            conversations, tokenize=False, add_generation_prompt=True, **self.kwargs
        )
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"]


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
    response_rows = _rows("responses", responses, batch_size)
    mask_rows = _rows("response_mask", response_mask, batch_size)
    for index, (row, mask) in enumerate(zip(response_rows, mask_rows, strict=True)):
        if row.numel() != mask.numel():
            raise ValueError(
                f"sample {index}: response_mask has {mask.numel()} entries for {row.numel()} response tokens"
            )
    prompt_rows = _rows("prompts", prompts, batch_size) if prompts is not None else None
    scores = torch.as_tensor(scores, dtype=torch.float32).reshape(-1).cpu()
    for name, value in (("uid", uid), ("scores", scores), ("feedback", feedback), ("response_text", response_text)):
        if value is not None and len(value) != batch_size:
            raise ValueError(f"{name} has {len(value)} entries, expected {batch_size} (one per sample)")
    if response_text is None:
        response_text = tokenizer.batch_decode([row.tolist() for row in response_rows], skip_special_tokens=True)

    contexts = teacher_contexts(uid, scores, feedback, response_text, config)
    num_negatives = 0 if config.is_sdpo else config.num_negatives
    negatives = (
        sample_negatives(uid, num_negatives, generator)
        if num_negatives
        else torch.empty(batch_size, 0, dtype=torch.long)
    )
    turns = [_last_user_turn(messages, index) for index, messages in enumerate(raw_prompt)]
    questions = [raw_prompt[index][turn]["content"] for index, turn in enumerate(turns)]
    has_context = contexts.mask.bool().tolist()
    sources = torch.cat([torch.arange(batch_size)[:, None], negatives], dim=1).tolist()  # (B, V) prompt rows

    def conversation(index: int, source: int, solution: str | None, feedback_text: str | None) -> list[dict]:
        """Sample ``index``'s messages with the question of row ``source`` and the given context."""
        content = questions[source]
        if has_context[index]:
            content = _reprompt(config, content, solution, feedback_text)
        return _with_user_content(raw_prompt[index], turns[index], content)

    render = _Renderer(tokenizer, apply_chat_template_kwargs)
    # teacher prompt ids per (sample, variant); rendered in one batch, rollout prompts reused where allowed
    teacher_prompts: list[list[list[int] | None]] = [[None] * (1 + num_negatives) for _ in range(batch_size)]
    pending = []
    for index in range(batch_size):
        for variant, source in enumerate(sources[index]):
            if variant == 0 and not has_context[index] and prompt_rows is not None:
                teacher_prompts[index][0] = prompt_rows[index].tolist()
            else:
                pending.append((index, variant, source))
    rendered = render([conversation(i, s, contexts.solution[i], contexts.feedback[i]) for i, _, s in pending])
    for (index, variant, _), ids in zip(pending, rendered, strict=True):
        teacher_prompts[index][variant] = ids

    truncated = torch.zeros(batch_size, dtype=torch.bool)
    limit = config.max_reprompt_len
    for index in range(batch_size):
        longest = max(len(ids) for ids in teacher_prompts[index])
        if not has_context[index] or longest <= limit:
            continue
        if config.reprompt_truncation == "error":
            raise ValueError(
                f"teacher prompt of sample {index} has {longest} tokens (longest of its {1 + num_negatives} "
                f"variants), over credit.max_reprompt_len={limit}; raise credit.max_reprompt_len or set "
                f"credit.reprompt_truncation to 'left' or 'right'"
            )
        teacher_prompts[index] = _truncate_context(
            index, sources[index], contexts, tokenizer, render, conversation, longest, limit, config.reprompt_truncation
        )
        truncated[index] = True

    return _assemble(
        teacher_prompts, response_rows, mask_rows, contexts, negatives, truncated, tokenizer, temperature, row_multiple
    )


def _truncate_context(
    index: int,
    sources: list[int],
    contexts: TeacherContexts,
    tokenizer: PreTrainedTokenizerBase,
    render: _Renderer,
    conversation: Callable[[int, int, str | None, str | None], list[dict]],
    longest: int,
    limit: int,
    side: str,
) -> list[list[int]]:
    """Cut sample ``index``'s solution and feedback text (as one token stream) until all its variants fit.

    Re-tokenising decoded text can shift counts at the cut by a token or two, so the cut is re-measured
    and tightened until the longest variant fits; ``keep`` strictly decreases, so this terminates.
    """
    solution, feedback = contexts.solution[index], contexts.feedback[index]
    solution_ids = tokenizer(solution or "", add_special_tokens=False)["input_ids"]
    feedback_ids = tokenizer(feedback or "", add_special_tokens=False)["input_ids"]
    stream = solution_ids + feedback_ids
    keep = len(stream) - (longest - limit)
    while keep >= 0:
        kept = _keep_tokens(stream, keep, side)
        # positions of the kept tokens in the stream tell which part each came from
        start = 0 if side == "right" else len(stream) - len(kept)
        cut = max(0, min(len(solution_ids) - start, len(kept)))
        new_solution = None if solution is None else tokenizer.decode(kept[:cut])
        new_feedback = None if feedback is None else tokenizer.decode(kept[cut:])
        prompts = render([conversation(index, source, new_solution, new_feedback) for source in sources])
        longest = max(len(ids) for ids in prompts)
        if longest <= limit:
            return prompts
        keep -= longest - limit
    raise ValueError(
        f"teacher prompt of sample {index} does not fit credit.max_reprompt_len={limit} even with its solution "
        f"and feedback text removed ({longest} tokens of prompt and templates); raise credit.max_reprompt_len"
    )


def _assemble(
    teacher_prompts: list[list[list[int]]],
    response_rows: list[torch.Tensor],
    mask_rows: list[torch.Tensor],
    contexts: TeacherContexts,
    negatives: torch.LongTensor,
    truncated: torch.BoolTensor,
    tokenizer: PreTrainedTokenizerBase,
    temperature: float,
    row_multiple: int,
) -> TeacherBatch:
    """Lay the ``V * B`` rows out variant-major, pad the row count, and build the :class:`TeacherBatch`."""
    batch_size, num_variants = len(teacher_prompts), 1 + negatives.shape[1]
    prompt_rows = [
        torch.tensor(teacher_prompts[index][variant], dtype=torch.long)
        for variant in range(num_variants)
        for index in range(batch_size)
    ]
    data, num_padding = _no_padding_rows(prompt_rows, response_rows, mask_rows, tokenizer, temperature, row_multiple)
    return TeacherBatch(
        data=data,
        negatives=negatives,
        self_distillation_mask=contexts.mask,
        has_solution=contexts.has_solution,
        uses_feedback=contexts.uses_feedback,
        feedback_available=contexts.feedback_available,
        truncated=truncated,
        prompt_lengths=torch.tensor(
            [[len(teacher_prompts[i][v]) for i in range(batch_size)] for v in range(num_variants)], dtype=torch.long
        ).reshape(num_variants, batch_size),
        response_mask=_jagged_rows(mask_rows).to_padded_tensor(0).float(),
        num_padding_rows=num_padding,
    )


def _no_padding_rows(
    prompt_rows: list[torch.Tensor],
    response_rows: list[torch.Tensor],
    mask_rows: list[torch.Tensor],
    tokenizer: PreTrainedTokenizerBase,
    temperature: float,
    row_multiple: int,
) -> tuple[TensorDict, int]:
    """verl's jagged ``compute_log_prob`` input of ``V * B`` rows: row ``v * B + i`` is prompt ``prompt_rows[v * B
    + i]`` followed by response ``i``; padding rows make the count a multiple of ``row_multiple``.

    Returns:
        (the TensorDict, the number of padding rows appended).
    """
    num_variants = len(prompt_rows) // len(response_rows)
    prompt_rows = list(prompt_rows)
    responses = response_rows * num_variants
    masks = [mask.long() for mask in mask_rows] * num_variants
    num_padding = -len(prompt_rows) % row_multiple
    if num_padding:
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        # the shortest legal row (verl needs a non-empty prompt); its zero loss_mask keeps it out of any loss
        pad = torch.tensor([pad_id], dtype=torch.long)
        prompt_rows += [pad] * num_padding
        responses += [pad] * num_padding
        masks += [torch.zeros(1, dtype=torch.long)] * num_padding

    sequences = [t for pair in zip(prompt_rows, responses, strict=True) for t in pair]
    lengths = torch.tensor([p.numel() + r.numel() for p, r in zip(prompt_rows, responses, strict=True)])
    starts = lengths.cumsum(0) - lengths
    positions = torch.arange(int(lengths.sum())) - torch.repeat_interleave(starts, lengths)
    data = tu.get_tensordict(
        {
            "input_ids": _jagged(torch.cat(sequences), lengths),
            "position_ids": _jagged(positions, lengths),
            "prompts": _jagged_rows(prompt_rows),
            "responses": _jagged_rows(responses),
            "response_mask": _jagged_rows(masks),
            "loss_mask": _jagged_rows(masks),
        },
        non_tensor_dict={
            "temperature": float(temperature),
            "calculate_entropy": False,
            "compute_loss": False,
            "max_seq_len": int(lengths.max()),
            "max_response_len": max(r.numel() for r in responses),
        },
    )
    return data, num_padding


def fit_token_budget(data: TensorDict, max_token_len_per_gpu: int | None) -> TensorDict:
    """Raise the worker's per-micro-batch token budget (dynamic batch size) to fit the longest row of ``data``.

    Reprompts make teacher rows longer than the rollout's, and verl refuses a row over the budget.

    Args:
        data: a no-padding batch (jagged ``input_ids``), changed in place.
        max_token_len_per_gpu: the engine's configured ``log_prob_max_token_len_per_gpu`` (None: unset).

    Returns:
        ``data``, with the non-tensor ``max_token_len_per_gpu`` set.
    """
    longest = int(data["input_ids"].offsets().diff().max())
    tu.assign_non_tensor(data, max_token_len_per_gpu=max(int(max_token_len_per_gpu or 0), longest))
    return data


def _variant_log_probs(
    log_probs: torch.Tensor, data: TensorDict, response_mask: torch.Tensor, num_variants: int, width: int | None
) -> torch.Tensor:
    """The worker's per-position log-probs of a variant-major batch, read back per response token.

    The worker returns, for every row, one value per sequence position ``p`` (prompt ++ response):
    ``log p(input_ids[p + 1] | input_ids[:p + 1])``, so response token ``t`` of a row whose sequence
    ends at ``e`` with ``R`` response tokens sits at position ``e - R - 1 + t`` (as verl's
    ``response_from_nested``). Padding rows are dropped.

    Args:
        log_probs: jagged nested tensor, one row per row of ``data`` (the worker output's ``log_probs``).
        data: the jagged batch the worker scored (row ``v * B + i``, then padding rows).
        response_mask: shape (B, T0), the samples' response mask.
        num_variants: V.
        width: response width T of the result (>= T0); default T0.

    Returns:
        shape (V, B, T), 0 where the sample's ``response_mask`` is 0.
    """
    if not (isinstance(log_probs, torch.Tensor) and log_probs.is_nested):
        raise ValueError("log_probs must be the worker's jagged nested tensor (one value per sequence position)")
    expected = data["input_ids"].offsets().diff()
    got = log_probs.offsets().diff().to(expected.device)
    if got.shape != expected.shape or not torch.equal(got, expected):
        raise ValueError(
            f"log_probs rows do not match the teacher batch: {got.numel()} rows vs {expected.numel()} expected, "
            "or different sequence lengths (was the output reordered or padded rows dropped?)"
        )
    num_samples = response_mask.shape[0]
    width = response_mask.shape[1] if width is None else width
    if width < response_mask.shape[1]:
        raise ValueError(f"width={width} is shorter than the longest response ({response_mask.shape[1]} tokens)")
    mask = torch.nn.functional.pad(response_mask, (0, width - response_mask.shape[1]))

    values = log_probs.values()
    real = num_variants * num_samples
    ends = log_probs.offsets()[1 : real + 1].to(values.device)
    response_lengths = data["responses"].offsets().diff()[:real].to(values.device)
    position = torch.arange(width, device=values.device)
    index = (ends - response_lengths - 1)[:, None] + position
    inside = position < response_lengths[:, None]
    gathered = torch.where(inside, values[index.clamp(0, max(values.numel() - 1, 0))], 0.0)
    # where, not a product: a masked position may hold -inf (0 * -inf is NaN)
    return torch.where(mask.bool(), gathered.reshape(num_variants, num_samples, width), 0.0)


def split_teacher_log_probs(
    log_probs: torch.Tensor, batch: TeacherBatch, width: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Read the worker's per-token log-probs of a :class:`TeacherBatch` back into the samples' padded layout.

    Args:
        log_probs: jagged nested tensor with ``batch.num_rows`` rows (the worker output's ``log_probs``).
        batch: the :class:`TeacherBatch` the worker scored.
        width: response width T of the result; default the longest response.

    Returns:
        teacher_log_probs: shape (B, T), ``log pi_ref(y_t | reprompt(x_i, z_i), y_<t)``.
        contrast_log_probs: shape (B, K, T), ``log pi_ref(y_t | reprompt(x_{sigma_k(i)}, z_i), y_<t)``.
        Both are 0 where the sample's ``response_mask`` is 0.
    """
    gathered = _variant_log_probs(log_probs, batch.data, batch.response_mask, 1 + batch.num_negatives, width)
    return gathered[0], gathered[1:].transpose(0, 1)


@dataclass(frozen=True)
class StudentContrastBatch:
    """The student's side of ``contrast_form: pmi``: every sample's response under the rollout prompts of its
    K negatives, without feedback, scored by the policy (``log pi_theta(y_t | x_{sigma_k(i)}, y_<t)``).

    Attributes:
        data: the ``compute_log_prob`` input: row ``k * B + i`` is the rollout prompt of row ``negatives[i, k]``
            followed by sample ``i``'s response, then ``num_padding_rows`` padding rows.
        negatives: shape (B, K), the teacher batch's negatives (the same swapped prompts).
        response_mask: shape (B, T) float, the samples' response mask, right-padded.
        num_padding_rows: rows appended after the ``K * B`` real rows.
    """

    data: TensorDict
    negatives: torch.LongTensor
    response_mask: torch.FloatTensor
    num_padding_rows: int

    @property
    def num_rows(self) -> int:
        return len(self.data)


def build_student_contrast_batch(
    *,
    prompts: torch.Tensor | Sequence,
    responses: torch.Tensor | Sequence,
    response_mask: torch.Tensor | Sequence,
    negatives: torch.LongTensor,
    tokenizer: PreTrainedTokenizerBase,
    temperature: float = 1.0,
    row_multiple: int = 1,
) -> StudentContrastBatch:
    """The student pass of ``contrast_form: pmi`` over the negatives of a :class:`TeacherBatch`.

    Args:
        prompts: B rows of rollout prompt ids (what the policy saw for each sample).
        responses: B rows of response token ids, reused unchanged.
        response_mask: B rows, same lengths as ``responses``.
        negatives: shape (B, K), ``TeacherBatch.negatives``.
        tokenizer: the rollout tokenizer (its pad id fills the padding rows).
        temperature: the rollout temperature, as for ``old_log_probs``.
        row_multiple: pad the row count to a multiple of it (see :func:`build_teacher_batch`).
    """
    batch_size = negatives.shape[0]
    if row_multiple < 1:
        raise ValueError(f"row_multiple must be >= 1, got {row_multiple}")
    prompt_rows = _rows("prompts", prompts, batch_size)
    response_rows = _rows("responses", responses, batch_size)
    mask_rows = _rows("response_mask", response_mask, batch_size)
    swapped = [prompt_rows[int(source)] for source in negatives.T.reshape(-1)]  # row k * B + i
    data, num_padding = _no_padding_rows(swapped, response_rows, mask_rows, tokenizer, temperature, row_multiple)
    return StudentContrastBatch(
        data=data,
        negatives=negatives,
        response_mask=_jagged_rows(mask_rows).to_padded_tensor(0).float(),
        num_padding_rows=num_padding,
    )


def split_student_log_probs(
    log_probs: torch.Tensor, batch: StudentContrastBatch, width: int | None = None
) -> torch.Tensor:
    """``student_contrast_log_probs``: shape (B, K, T), ``log pi_theta(y_t | x_{sigma_k(i)}, y_<t)``, 0 where the
    sample's ``response_mask`` is 0; ``log_probs`` is the worker output's jagged ``log_probs`` of ``batch``."""
    gathered = _variant_log_probs(log_probs, batch.data, batch.response_mask, batch.negatives.shape[1], width)
    return gathered.transpose(0, 1)
