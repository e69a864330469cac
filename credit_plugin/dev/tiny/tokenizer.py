"""A byte-level BPE tokenizer fitted to the tiny task's text, with ChatML special tokens: the demo model's vocabulary.

Why not Qwen's 152k vocabulary: on a model with hidden size 64 the output layer over 152k tokens is nearly all
of the compute of every rollout, log-prob pass and update (about 20x the rest of the model), which makes a
learning benchmark of tens of runs impossible on two cores. A byte-level BPE of :data:`VOCAB_SIZE` tokens
encodes any text (every byte is a token), so feedback quoting arbitrary model output still round-trips; its
merges are learnt from the task's own prompts, reprompts and answers, so task text stays short.
The chat template is ChatML, the layout of Qwen's template (``<|im_start|>role\\n...<|im_end|>``), without a
system message. Fitting is deterministic given the seed.
"""

from __future__ import annotations

import json
import random
import tempfile
from collections.abc import Iterator
from pathlib import Path

import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from credit_plugin.dev.tiny.reprompt import reprompt_text
from credit_plugin.dev.tiny.task import KINDS, sample_problem

# A multiple of 64 keeps the embedding shardable by any tensor-parallel size the tests use.
VOCAB_SIZE = 512
PAD_TOKEN, BOS_TOKEN, EOS_TOKEN = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}"
)
# Problems whose prompts, reprompts and answers make up the BPE corpus.
CORPUS_PROBLEMS = 4000


def _corpus(seed: int, kinds: tuple[str, ...]) -> Iterator[str]:
    """Task text as the model sees it: chat-rendered prompts, SDPO reprompts with feedback, answers."""
    rng = random.Random(seed)
    for _ in range(CORPUS_PROBLEMS):
        problem = sample_problem(rng, kinds)
        for content in (problem.prompt, reprompt_text(problem, rng)):
            yield f"{BOS_TOKEN}user\n{content}{EOS_TOKEN}\n{BOS_TOKEN}assistant\n"
        yield f"Answer: {problem.answer}{EOS_TOKEN}"


def build_task_tokenizer(seed: int = 0, kinds: tuple[str, ...] = KINDS) -> transformers.PreTrainedTokenizerBase:
    """Fit the task tokenizer (about a second) and return it exactly as transformers loads it next to the model.

    ``AutoTokenizer`` picks the tokenizer class from the model's type (``Qwen2Tokenizer``, which brings Qwen's
    own pre-tokenizer: digits split one by one), whatever class saved it. verl loads it that way, so the
    pre-training must use that same tokenizer, not the one fitted in memory.

    Returns:
        A tokenizer with ``eos = <|im_end|>``, ``pad = <|endoftext|>`` and the ChatML template.
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=[PAD_TOKEN, BOS_TOKEN, EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(seed, kinds), trainer)
    wrapped = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN, clean_up_tokenization_spaces=False
    )
    wrapped.chat_template = CHAT_TEMPLATE
    with tempfile.TemporaryDirectory() as folder:
        wrapped.save_pretrained(folder)
        (Path(folder) / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
        return transformers.AutoTokenizer.from_pretrained(folder)
