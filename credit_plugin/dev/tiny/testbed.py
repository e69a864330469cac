"""The controlled testbed: feedback that narrows the answer without containing it, and a planted input-generic
shortcut, on the tiny model (``docs/method.md``, "The controlled testbed").

Task: the tiny task's sorting family (``Sort the digits: 3 1 2.`` -> ``Answer: 1 2 3``), with this module's
verifier (:func:`compute_score`, ``data_source`` :data:`DATA_SOURCE`): exact match as before, but the feedback
on a wrong answer only says *where* it is wrong (``Your answer is wrong at position 2.``), never the sorted
digits. A teacher that scores the right answer higher with that feedback in context must combine it with the
input digits: its credit on the answer's digits is input-specific.

Planted shortcut: pre-training (:func:`testbed_sequences`) starts a response with :data:`SHORTCUT` (``Sure.``)
with probability :data:`REPROMPT_SHORTCUT_RATE` (0.9) under SDPO's reprompt with feedback, and
:data:`BARE_SHORTCUT_RATE` (0.1) under the bare prompt, whatever the digits. The verifier ignores it (it
grades the text after ``Answer:``). So a teacher given the feedback raises the shortcut's probability under
*any* prompt: SDPO's token reward ``T - S`` pays it (about ``log 0.9 - log 0.1 = +2.2`` nats on its first
token), and CREDIT's contrast (the same teacher with another group's prompt) sees that credit under the
swapped prompt too and removes the fraction lambda of it (``reward`` form), while the answer digits, which the
swapped prompt makes unlikely, keep theirs.

Runs use ``credit.success_threshold=2``: no sample is a demonstration (a sibling's solution would carry the
answer), so every teacher context is this narrowing feedback. ``bench/learn.py --testbed`` runs the arms.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import transformers

from credit_plugin.config import DEFAULT_FEEDBACK_TEMPLATE, DEFAULT_REPROMPT_TEMPLATE
from credit_plugin.dev.tiny.task import Problem, _items, extract_answer, sample_problem, sample_problems, to_row

DATA_SOURCE = "credit_tiny_testbed"
KINDS = ("sort",)
SHORTCUT = "Sure. "
# Probability of the shortcut in pre-training targets under SDPO's reprompt with feedback, and under the bare prompt.
REPROMPT_SHORTCUT_RATE = 0.9
BARE_SHORTCUT_RATE = 0.1
# Bump when the testbed's pre-training data changes (part of the model's cache stamp).
TESTBED_VERSION = 1
# The overrides every testbed run adds (reward function, feedback-only teacher contexts, records of every sample).
REWARD_FUNCTION = "pkg://credit_plugin.dev.tiny.testbed"


def narrow_feedback(problem: Problem, given: str | None) -> str:
    """Feedback that locates the mistake and never contains the sorted digits; ``""`` for a correct answer."""
    if given is None:
        return "No answer found: end your reply with 'Answer: <value>'."
    items, want = _items(given), problem.answer.split()
    if items == want:
        return ""
    if len(items) != len(want):
        return f"Your answer has {len(items)} item{'s' * (len(items) != 1)}, expected {len(want)}."
    position = next(i for i, (got, ok) in enumerate(zip(items, want, strict=True)) if got != ok)
    return f"Your answer is wrong at position {position + 1}."


def has_shortcut(response: str) -> bool:
    """Whether a response starts with the planted shortcut (spaces before it allowed)."""
    return response.lstrip().startswith(SHORTCUT.strip())


def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: str,
    extra_info: dict[str, Any] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """verl custom reward function: exact match of the sorted digits, narrowing feedback, and ``shortcut`` (1.0
    when the response starts with :data:`SHORTCUT`; not part of the score)."""
    if data_source != DATA_SOURCE:
        raise ValueError(f"testbed compute_score got data_source={data_source!r}, expects {DATA_SOURCE!r}")
    if not extra_info or extra_info.get("kind") not in KINDS or not extra_info.get("question"):
        raise ValueError(f"testbed row needs extra_info kind in {KINDS} and question, got {extra_info!r}")
    problem = Problem(extra_info["kind"], extra_info["question"])
    if problem.answer != ground_truth:
        raise ValueError(f"testbed row {extra_info.get('index')}: {problem} does not have answer {ground_truth!r}")
    feedback = narrow_feedback(problem, extract_answer(solution_str))
    correct = feedback == ""
    return {
        "score": float(correct),
        "acc": correct,
        "feedback": feedback,
        "shortcut": float(has_shortcut(solution_str)),
    }


def _wrong_attempt(problem: Problem, rng: random.Random) -> str:
    """A wrong answer as the model makes them: the digits in their given order, or shuffled."""
    items = problem.question.split()
    if rng.random() < 0.5:
        rng.shuffle(items)
    return " ".join(items)


def testbed_reprompt(problem: Problem, rng: random.Random) -> str | None:
    """SDPO's reprompt of ``problem`` with the narrowing feedback on a wrong attempt; None if the attempt drawn
    happens to be right (no feedback to give)."""
    feedback = narrow_feedback(problem, _wrong_attempt(problem, rng))
    if not feedback:
        return None
    block = DEFAULT_FEEDBACK_TEMPLATE.format(feedback_raw=feedback)
    return DEFAULT_REPROMPT_TEMPLATE.format(prompt=problem.prompt, solution="", feedback=block)


def testbed_sequences(
    tokenizer: transformers.PreTrainedTokenizerBase,
    num: int,
    rng: random.Random,
    reprompt: bool,
    answer_accuracy: float = 1.0,
    kinds: tuple[str, ...] = KINDS,
) -> tuple[list[list[int]], list[int]]:
    """Pre-training batches of the testbed (``credit_plugin.dev.tiny.model.training_sequences``'s signature).

    Bare prompts: the right answer with probability ``answer_accuracy``, else the typical mistake (digits left
    in order); reprompts: always the right answer. Either way the shortcut starts the target with a
    probability that depends only on whether the prompt is a reprompt (:data:`REPROMPT_SHORTCUT_RATE`,
    :data:`BARE_SHORTCUT_RATE`), never on the digits.
    """
    from credit_plugin.dev.tiny.model import chat_affixes, typical_mistake

    prefix, suffix = chat_affixes(tokenizer)
    contents, answers = [], []
    while len(contents) < num:
        problem = sample_problem(rng, kinds)
        if reprompt:
            content = testbed_reprompt(problem, rng)
            if content is None:
                continue
            answer = problem.answer
        else:
            content = problem.prompt
            answer = problem.answer if rng.random() < answer_accuracy else typical_mistake(problem)
        rate = REPROMPT_SHORTCUT_RATE if reprompt else BARE_SHORTCUT_RATE
        contents.append(content)
        answers.append(f"{SHORTCUT if rng.random() < rate else ''}Answer: {answer}")
    prompts = tokenizer([prefix + content + suffix for content in contents], add_special_tokens=False)["input_ids"]
    targets = tokenizer(answers, add_special_tokens=False)["input_ids"]
    sequences = [prompt + target + [tokenizer.eos_token_id] for prompt, target in zip(prompts, targets, strict=True)]
    return sequences, [len(prompt) for prompt in prompts]


def testbed_spec(pretrain_steps: int = 1500):
    """The testbed model's spec: the default tiny model's architecture and recipe, sorting only."""
    from credit_plugin.dev.tiny.model import TinyModelSpec

    return TinyModelSpec(kinds=KINDS, pretrain_steps=pretrain_steps)


def build_testbed_model(out_dir: str | Path, seed: int = 0, pretrain_steps: int = 1500) -> Path:
    """Build (or reuse, by its stamp) the testbed's pre-trained tiny model in ``out_dir``."""
    from credit_plugin.dev.tiny.model import build_tiny_model

    stamp = {"testbed": TESTBED_VERSION, "shortcut": [SHORTCUT, REPROMPT_SHORTCUT_RATE, BARE_SHORTCUT_RATE]}
    return build_tiny_model(out_dir, seed, testbed_spec(pretrain_steps), testbed_sequences, stamp)


def write_testbed_parquet(out_dir: str | Path, n_train: int, n_val: int, seed: int) -> tuple[Path, Path]:
    """Train and held-out validation problems (never in train) in verl's RL dataset format, scored here."""
    import datasets

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train = sample_problems(n_train, seed, kinds=KINDS)
    val = sample_problems(n_val, seed + 1_000_003, exclude=set(train), kinds=KINDS)
    paths = []
    for split, problems in (("train", train), ("val", val)):
        rows = [{**to_row(problem, split, index), "data_source": DATA_SOURCE} for index, problem in enumerate(problems)]
        path = out_dir / f"{split}.parquet"
        datasets.Dataset.from_list(rows).to_parquet(str(path))
        paths.append(path)
    return paths[0], paths[1]


def token_kinds(tokens: Sequence[str]) -> list[str]:
    """Each response token as ``shortcut`` (the first token of a response that starts with the shortcut: the
    token where the policy chooses it; the rest of ``Sure.`` follows from it), ``answer`` (after ``Answer:``
    and holding a digit: input-specific) or ``other``."""
    text = "".join(tokens)
    starts = has_shortcut(text)
    marker = re.search(r"Answer:", text)
    answer_at = marker.start() if marker else len(text)
    after = marker.end() if marker else len(text)
    kinds, offset = [], 0
    for token in tokens:
        end = offset + len(token)
        if starts and end <= answer_at and token.strip() and "shortcut" not in kinds:
            kinds.append("shortcut")
        elif offset >= after and any(character.isdigit() for character in token):
            kinds.append("answer")
        else:
            kinds.append("other")
        offset = end
    return kinds


def credit_by_token_kind(records: Sequence[dict]) -> dict[int, dict[str, float | None]]:
    """Per step, from the trainer's token records of every sample: the shortcut's rate in the sampled responses
    and the mean SDPO and CREDIT token reward on shortcut and on answer tokens (samples with a context).

    Returns:
        ``{step: {shortcut_rate, sdpo_shortcut, sdpo_answer, credit_shortcut, credit_answer}}``; a mean with no
        token is None (CREDIT's for an SDPO run, which records no CREDIT reward).
    """
    steps: dict[int, list[dict]] = {}
    for record in records:
        steps.setdefault(int(record["step"]), []).append(record)
    out = {}
    for step, chosen in sorted(steps.items()):
        sums: dict[str, list[float]] = {}
        for record in chosen:
            if not record.get("has_context"):
                continue
            for kind, index in ((kind, i) for i, kind in enumerate(token_kinds(record["tokens"]))):
                if kind == "other":
                    continue
                for method in ("sdpo", "credit"):
                    if record.get(method) is not None:
                        sums.setdefault(f"{method}_{kind}", []).append(record[method][index])
        row: dict[str, float | None] = {
            "shortcut_rate": sum(has_shortcut("".join(record["tokens"])) for record in chosen) / len(chosen)
        }
        for key in ("sdpo_shortcut", "sdpo_answer", "credit_shortcut", "credit_answer"):
            values = sums.get(key)
            row[key] = sum(values) / len(values) if values else None
        out[step] = row
    return out


def evaluate(
    model_dir: Path,
    tokenizer_dir: Path,
    val_file: Path,
    samples: int = 4,
    seed: int = 0,
    score: Callable[..., dict[str, Any]] | None = None,
    max_new_tokens: int = 24,
) -> dict:
    """Held-out success and shortcut rate of the model at ``model_dir`` on ``val_file``: greedy, and sampled at
    temperature 1 (``samples`` per prompt).

    ``score``: the verl reward function that grades a response (default: this module's :func:`compute_score`);
    every float field of its result other than ``score`` is averaged too (``shortcut`` here). Returns
    ``{success_greedy, success_sampled, <field>_greedy, <field>_sampled, ...}``.
    """
    score = score or compute_score
    import datasets
    import torch

    from credit_plugin.dev.tiny.model import chat_prompt_ids

    tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    rows = datasets.Dataset.from_parquet(str(val_file)).to_list()
    prompts = [chat_prompt_ids(tokenizer, row["prompt"][-1]["content"]) for row in rows]
    width = max(map(len, prompts))
    input_ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(p)) + p for p in prompts])
    attention_mask = (torch.arange(width)[None] >= torch.tensor([width - len(p) for p in prompts])[:, None]).long()
    result = {}
    torch.manual_seed(seed)
    for mode, repeat in (("greedy", 1), ("sampled", samples)):
        with torch.no_grad():
            output = model.generate(
                input_ids=input_ids.repeat_interleave(repeat, 0),
                attention_mask=attention_mask.repeat_interleave(repeat, 0),
                do_sample=mode == "sampled",
                temperature=1.0 if mode == "sampled" else None,
                top_k=0 if mode == "sampled" else None,
                max_new_tokens=max_new_tokens,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        texts = tokenizer.batch_decode(output[:, width:], skip_special_tokens=True)
        scored = [
            score(row["data_source"], text, row["reward_model"]["ground_truth"], row["extra_info"])
            for row, text in zip([row for row in rows for _ in range(repeat)], texts, strict=True)
        ]
        result[f"success_{mode}"] = sum(graded["score"] for graded in scored) / len(scored)
        for key, value in scored[0].items():
            if key != "score" and isinstance(value, float):
                result[f"{key}_{mode}"] = sum(graded[key] for graded in scored) / len(scored)
    return result
