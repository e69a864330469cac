"""A tiny random Qwen2 saved as a model directory (weights, config, generation config, Qwen tokenizer).

A plain module, not a conftest: ``tests/conftest.py`` is imported by name elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from conftest import tiny_qwen2_config


@dataclass(frozen=True)
class TinyModelDir:
    """``path`` loads with ``from_pretrained``; greedy decoding of ``stop_prompt`` emits ``stop_token`` at
    position ``stop_index``, and ``stop_token`` is an ``eos_token_id`` of the saved generation config."""

    path: Path
    stop_prompt: list[int]
    stop_token: int
    stop_index: int


def load_reference(path: Path) -> transformers.PreTrainedModel:
    """The saved model as the server loads it: float32, sdpa."""
    return transformers.AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, attn_implementation="sdpa"
    ).eval()


def save_tiny_checkpoint(tokenizer: transformers.PreTrainedTokenizerBase, path: Path) -> TinyModelDir:
    """Build the tiny model with the tokenizer's vocabulary and save both to ``path``."""
    torch.manual_seed(0)
    config = tiny_qwen2_config(
        len(tokenizer),
        tie_word_embeddings=False,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = transformers.Qwen2ForCausalLM(config).eval()
    # Random init gives near-uniform next-token distributions: sharpen them. (Scaling tied embeddings
    # instead makes every greedy path repeat its last prompt token.)
    with torch.no_grad():
        model.lm_head.weight.mul_(5.0)

    # Make a token the greedy path reaches after a few steps an EOS id, so stopping at EOS can be tested.
    stop_prompt = tokenizer.encode("The capital of France is")
    greedy = model.generate(
        torch.tensor([stop_prompt]), max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0
    )[0, len(stop_prompt) :].tolist()
    stop_index = next(i for i in range(2, len(greedy)) if greedy[i] not in greedy[:i])
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, greedy[stop_index]]
    model.generation_config.pad_token_id = tokenizer.pad_token_id

    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return TinyModelDir(path=path, stop_prompt=stop_prompt, stop_token=greedy[stop_index], stop_index=stop_index)
