"""A batched KV-cache decode loop over a ``transformers`` causal LM, each row with its own sampling spec."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Literal

import torch
from torch.nn.utils.rnn import pad_sequence

from credit_plugin.dev.rollout.sampling import LOGPROBS_MODES, SamplingSpec, choose_tokens, processed_logits

FinishReason = Literal["stop", "length", "abort"]


@dataclass(frozen=True)
class Completion:
    """One request's generated tokens (a stop token is kept) and their log-probs."""

    token_ids: list[int]
    log_probs: list[float]
    finish_reason: FinishReason


@torch.no_grad()
def generate_batch(
    model: torch.nn.Module,
    prompts: list[list[int]],
    specs: list[SamplingSpec],
    *,
    pad_token_id: int,
    logprobs_mode: str,
    generator: torch.Generator,
    abort: threading.Event | None = None,
) -> list[Completion]:
    """Decode all prompts together, left-padded, until every row stopped or ran out of tokens.

    A row stops at the first of its ``stop_token_ids`` (kept in the output) or after its
    ``max_tokens``. When ``abort`` is set the loop ends after the current step and the unfinished rows
    return what they have with ``finish_reason="abort"``. Finished rows keep being fed (their outputs are
    discarded) so the batch keeps one shape and one cache.

    Args:
        prompts: ``bs`` lists of token ids, each non-empty.
        specs: ``bs`` sampling specs, one per prompt.
        logprobs_mode: ``processed_logprobs`` or ``raw_logprobs`` (see :mod:`.sampling`).

    Returns:
        ``bs`` completions, in prompt order.
    """
    if logprobs_mode not in LOGPROBS_MODES:
        raise ValueError(f"hf_cpu rollout: rollout.logprobs_mode={logprobs_mode!r} is not one of {LOGPROBS_MODES}")
    bs = len(prompts)
    prompt_lens = torch.tensor([len(p) for p in prompts])
    input_ids = pad_sequence(
        [torch.tensor(p, dtype=torch.long) for p in prompts],
        batch_first=True,
        padding_value=pad_token_id,
        padding_side="left",
    )
    width = input_ids.shape[1]
    # (bs, width): 1 on prompt tokens; columns are appended as tokens are generated.
    attention_mask = (torch.arange(width)[None, :] >= (width - prompt_lens)[:, None]).long()
    position_ids = (attention_mask.cumsum(dim=-1) - 1).clamp(min=0)

    temperature = torch.tensor([s.temperature for s in specs], dtype=torch.float32)
    top_k = torch.tensor([s.top_k for s in specs], dtype=torch.long)
    top_p = torch.tensor([s.top_p for s in specs], dtype=torch.float32)
    greedy = torch.tensor([s.greedy for s in specs])
    max_tokens = torch.tensor([s.max_tokens for s in specs], dtype=torch.long)
    # (bs, n_stop) padded with -1, which no sampled id equals.
    stop_ids = pad_sequence(
        [torch.tensor(s.stop_token_ids or (-1,), dtype=torch.long) for s in specs], batch_first=True, padding_value=-1
    )

    steps = int(max_tokens.max())
    tokens = torch.zeros(bs, steps, dtype=torch.long)
    token_log_probs = torch.zeros(bs, steps, dtype=torch.float32)
    lengths = torch.zeros(bs, dtype=torch.long)
    active = torch.ones(bs, dtype=torch.bool)
    stopped = torch.zeros(bs, dtype=torch.bool)
    aborted = torch.zeros(bs, dtype=torch.bool)

    out = model(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=True, logits_to_keep=1
    )
    for step in range(steps):
        logits = out.logits[:, -1].float()
        processed = processed_logits(logits, temperature, top_k, top_p)
        next_tokens = choose_tokens(processed, greedy, generator)
        scored = processed if logprobs_mode == "processed_logprobs" else logits
        tokens[:, step] = next_tokens
        token_log_probs[:, step] = scored.log_softmax(dim=-1).gather(-1, next_tokens[:, None])[:, 0]

        lengths += active.long()
        hit_stop = active & (next_tokens[:, None] == stop_ids).any(dim=-1)
        stopped |= hit_stop
        active &= ~hit_stop & (lengths < max_tokens)
        if not active.any():
            break
        if abort is not None and abort.is_set():
            aborted = active
            break

        attention_mask = torch.cat([attention_mask, torch.ones(bs, 1, dtype=torch.long)], dim=-1)
        position_ids = position_ids[:, -1:] + 1
        out = model(
            input_ids=next_tokens[:, None],
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=out.past_key_values,
            use_cache=True,
        )

    finish: list[FinishReason] = [
        "abort" if a else "stop" if s else "length" for a, s in zip(aborted.tolist(), stopped.tolist(), strict=True)
    ]
    return [
        Completion(token_ids=tokens[row, :n].tolist(), log_probs=token_log_probs[row, :n].tolist(), finish_reason=f)
        for row, (n, f) in enumerate(zip(lengths.tolist(), finish, strict=True))
    ]
