"""Sampling parameters and next-token choice with vLLM's semantics, as verl's agent loop expects them.

The agent loop sends vLLM-style parameters (``temperature``, ``top_p``, ``top_k``, ``repetition_penalty``,
``logprobs``; its client adds ``max_tokens``) and trains on the returned per-token log-probs. With verl's
default ``rollout.logprobs_mode=processed_logprobs`` vLLM returns the log-probability of each sampled token
under the distribution it was drawn from: logits divided by the temperature, restricted by top-k then
top-p, renormalised. A greedy request (temperature below vLLM's 1e-5) is scored under the unscaled,
unrestricted logits. ``raw_logprobs`` scores every request under the unscaled, unrestricted logits.
With top-k and top-p off both modes equal the actor's ``log_softmax(logits / temperature)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

GREEDY_TEMPERATURE = 1e-5
LOGPROBS_MODES = ("processed_logprobs", "raw_logprobs")
SUPPORTED_PARAMS = frozenset(
    {
        "temperature",
        "top_p",
        "top_k",
        "max_tokens",
        "max_new_tokens",
        "logprobs",
        "repetition_penalty",
        "ignore_eos",
        "stop_token_ids",
        "n",
    }
)


@dataclass(frozen=True)
class SamplingSpec:
    """One request's decoding parameters after defaults and validation.

    ``top_k`` is 0 when off; ``stop_token_ids`` already include the EOS ids unless ``ignore_eos``.
    """

    max_tokens: int
    temperature: float
    top_k: int
    top_p: float
    stop_token_ids: tuple[int, ...]
    return_log_probs: bool

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_TEMPERATURE


@dataclass(frozen=True)
class SamplingDefaults:
    """What the server fills in for parameters a request leaves out (from ``RolloutConfig`` and the model)."""

    temperature: float
    top_k: int
    top_p: float
    prompt_length: int
    response_length: int
    max_model_len: int
    ignore_eos: bool
    eos_token_ids: tuple[int, ...]


def resolve_sampling_params(
    params: dict[str, Any], prompt_len: int, defaults: SamplingDefaults, request_id: str
) -> SamplingSpec:
    """Validate a request's ``sampling_params`` and fill defaults the way verl's vLLM server does.

    ``max_tokens`` (or sglang's ``max_new_tokens``) defaults to
    ``min(response_length, prompt_length + response_length - prompt_len)`` and is clamped to
    ``[1, max_model_len - prompt_len]``.
    """
    unknown = sorted(set(params) - SUPPORTED_PARAMS)
    if unknown:
        raise ValueError(
            f"hf_cpu rollout, request {request_id}: unsupported sampling parameter(s) {unknown}; "
            f"supported: {sorted(SUPPORTED_PARAMS)}"
        )
    if params.get("n", 1) != 1:
        raise ValueError(
            f"hf_cpu rollout, request {request_id}: sampling parameter n={params['n']} is not supported "
            "(one sequence per request; verl's agent loop repeats prompts for rollout.n)"
        )
    if params.get("repetition_penalty", 1.0) != 1.0:
        raise ValueError(
            f"hf_cpu rollout, request {request_id}: repetition_penalty={params['repetition_penalty']} is not "
            "supported (only 1.0)"
        )

    room = defaults.max_model_len - prompt_len
    if room < 1:
        raise ValueError(
            f"hf_cpu rollout, request {request_id}: prompt of {prompt_len} tokens leaves no room to generate "
            f"within max_model_len={defaults.max_model_len}"
        )
    if "max_tokens" in params:
        max_tokens = params["max_tokens"]
    elif "max_new_tokens" in params:
        max_tokens = params["max_new_tokens"]
    else:
        max_tokens = min(defaults.response_length, defaults.prompt_length + defaults.response_length - prompt_len)
    max_tokens = max(1, min(int(max_tokens), room))

    temperature = float(params.get("temperature", defaults.temperature))
    top_p = float(params.get("top_p", defaults.top_p))
    top_k = int(params.get("top_k", defaults.top_k))
    if temperature < 0:
        raise ValueError(f"hf_cpu rollout, request {request_id}: temperature={temperature} must be >= 0")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"hf_cpu rollout, request {request_id}: top_p={top_p} must be in (0, 1]")
    if top_k < -1:
        raise ValueError(f"hf_cpu rollout, request {request_id}: top_k={top_k} must be -1 (off), 0 (off) or >= 1")

    ignore_eos = bool(params.get("ignore_eos", defaults.ignore_eos))
    stop = tuple(int(t) for t in params.get("stop_token_ids") or ())
    if not ignore_eos:
        stop = tuple(dict.fromkeys(stop + defaults.eos_token_ids))
    return SamplingSpec(
        max_tokens=max_tokens,
        temperature=temperature,
        top_k=max(top_k, 0),
        top_p=top_p,
        stop_token_ids=stop,
        return_log_probs=bool(params.get("logprobs", False)),
    )


def mask_top_k_top_p(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Set logits outside each row's top-k, then outside its top-p nucleus, to ``-inf``.

    A token survives top-p when the probability mass ranked strictly above it is below ``p``, so the
    most likely token always survives (vLLM's rule).

    Args:
        logits: shape (bs, vocab), already temperature-scaled.
        top_k: shape (bs,), 0 means no top-k.
        top_p: shape (bs,), 1.0 means no top-p.

    Returns:
        shape (bs, vocab).
    """
    vocab = logits.shape[-1]
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    rank = torch.arange(vocab, device=logits.device)
    k = torch.where(top_k > 0, top_k, vocab)
    drop = rank[None, :] >= k[:, None]
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    probs = sorted_logits.softmax(dim=-1)
    mass_above = probs.cumsum(dim=-1) - probs
    drop = drop | (mass_above >= top_p[:, None])
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)


def processed_logits(
    logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor
) -> torch.Tensor:
    """The logits each row samples from: divided by temperature, restricted by top-k/top-p.

    Greedy rows (temperature < 1e-5) keep their raw logits: they take the argmax and are scored
    under the unrestricted distribution.

    Args:
        logits: shape (bs, vocab), float32.
        temperature, top_k, top_p: shape (bs,).

    Returns:
        shape (bs, vocab).
    """
    greedy = temperature < GREEDY_TEMPERATURE
    scaled = logits / torch.where(greedy, torch.ones_like(temperature), temperature)[:, None]
    restricted = ~greedy & ((top_k > 0) | (top_p < 1.0))
    if not restricted.any():
        return scaled
    return torch.where(restricted[:, None], mask_top_k_top_p(scaled, top_k, top_p), scaled)


def choose_tokens(processed: torch.Tensor, greedy: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Argmax for greedy rows, one draw from ``softmax(processed)`` for the others.

    Args:
        processed: shape (bs, vocab), from :func:`processed_logits`.
        greedy: shape (bs,), bool.

    Returns:
        shape (bs,), token ids.
    """
    argmax = processed.argmax(dim=-1)
    if greedy.all():
        return argmax
    drawn = torch.multinomial(processed.softmax(dim=-1), num_samples=1, generator=generator)[:, 0]
    return torch.where(greedy, argmax, drawn)
