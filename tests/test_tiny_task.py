"""The embedded demo task and model: verl's dataset format, the verifier's feedback, the pre-trained tiny Qwen2."""

from __future__ import annotations

import json
import random
import re

import pandas as pd
import pytest
import torch
import transformers
from omegaconf import OmegaConf

from credit_plugin.config import DEFAULT_FEEDBACK_TEMPLATE, DEFAULT_REPROMPT_TEMPLATE
from credit_plugin.dev.tiny.model import (
    STAMP_FILE,
    TinyModelSpec,
    build_tiny_model,
    chat_prompt_ids,
    training_sequences,
    typical_mistake,
)
from credit_plugin.dev.tiny.task import DATA_SOURCE, Problem, compute_score, sample_problems, write_parquet
from credit_plugin.dev.tiny.tokenizer import VOCAB_SIZE, build_task_tokenizer


@torch.no_grad()
def sample_success_rate(
    model: transformers.PreTrainedModel,
    tokenizer: transformers.PreTrainedTokenizerBase,
    problems: list[Problem],
    seed: int,
    max_new_tokens: int = 16,
) -> float:
    """Fraction of ``problems`` answered correctly by one sample each at temperature 1 (no top-k / top-p).

    That is the rollout distribution of verl's default ``rollout.temperature=1`` with ``top_k=-1, top_p=1``.
    """
    prompts = [chat_prompt_ids(tokenizer, problem.prompt) for problem in problems]
    width = max(map(len, prompts))
    # generate() expects left padding for batched decoding
    input_ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(p)) + p for p in prompts])
    attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    torch.manual_seed(seed)
    output = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        do_sample=True,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        max_new_tokens=max_new_tokens,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    responses = tokenizer.batch_decode(output[:, width:], skip_special_tokens=True)
    scores = [
        compute_score(DATA_SOURCE, response, problem.answer, {"kind": problem.kind, "question": problem.question})
        for response, problem in zip(responses, problems, strict=True)
    ]
    return sum(score["score"] for score in scores) / len(scores)


ARITH = {"kind": "arithmetic", "question": "3 + 4 * 2", "index": 0}
REVERSE = {"kind": "reverse", "question": "a b c d", "index": 1}
SORT = {"kind": "sort", "question": "3 1 2", "index": 2}


@pytest.fixture(scope="module")
def parquet_files(tmp_path_factory):
    return write_parquet(tmp_path_factory.mktemp("tiny_data"), n_train=24, n_val=8, seed=0)


@pytest.mark.slow  # about 70 s on 2 cores (verl's RLHFDataset over the parquet)
def test_rows_load_through_verl_rlhf_dataset(parquet_files, tokenizer, tmp_path):
    from verl.utils.dataset.rl_dataset import RLHFDataset

    train_path, _ = parquet_files
    config = OmegaConf.create(
        {"max_prompt_length": 48, "filter_overlong_prompts": True, "cache_dir": str(tmp_path), "truncation": "error"}
    )
    dataset = RLHFDataset(str(train_path), tokenizer, config)
    assert len(dataset) == 24, "a prompt longer than 48 tokens with the chat template was filtered out"
    item = dataset[5]
    raw = pd.read_parquet(train_path).iloc[5]
    assert item["data_source"] == DATA_SOURCE
    assert item["raw_prompt"] == [{"role": "user", "content": raw["prompt"][0]["content"]}]
    assert item["reward_model"] == {"style": "rule", "ground_truth": raw["reward_model"]["ground_truth"]}
    assert item["index"] == 5 and item["extra_info"]["split"] == "train"
    problem = Problem(item["extra_info"]["kind"], item["extra_info"]["question"])
    assert problem.prompt == item["raw_prompt"][0]["content"]
    assert problem.answer == item["reward_model"]["ground_truth"]


def test_parquet_is_seeded_and_val_is_disjoint_from_train(parquet_files, tmp_path):
    train, val = (pd.read_parquet(path) for path in parquet_files)
    again, _ = write_parquet(tmp_path, n_train=24, n_val=8, seed=0)
    other, _ = write_parquet(tmp_path / "other", n_train=24, n_val=8, seed=1)
    prompts = train["prompt"].map(lambda messages: messages[0]["content"])
    assert prompts.tolist() == pd.read_parquet(again)["prompt"].map(lambda m: m[0]["content"]).tolist()
    assert prompts.tolist() != pd.read_parquet(other)["prompt"].map(lambda m: m[0]["content"]).tolist()
    assert len(val) == 8 and not set(prompts) & set(val["prompt"].map(lambda messages: messages[0]["content"]))
    assert val.columns.tolist() == train.columns.tolist() and set(val["extra_info"].map(lambda e: e["split"])) == {
        "val"
    }
    assert set(train["ability"]) == {"arithmetic", "reverse", "sort"}
    with pytest.raises(ValueError, match="n_val"):
        write_parquet(tmp_path, n_train=4, n_val=0, seed=0)


def test_correct_answers_score_one_with_empty_feedback():
    for extra_info, answer in ((ARITH, "11"), (REVERSE, "d c b a"), (SORT, "1 2 3")):
        result = compute_score(DATA_SOURCE, f"Let me see.\nAnswer: {answer}.", answer, extra_info)
        assert result == {"score": 1.0, "acc": True, "feedback": ""}
    # a sequence written without spaces, and only the last Answer line counts
    assert compute_score(DATA_SOURCE, "Answer: dcba", "d c b a", REVERSE)["acc"]
    assert not compute_score(DATA_SOURCE, "Answer: 11\nAnswer: 14", "11", ARITH)["acc"]


def test_wrong_answers_get_feedback_that_explains_the_solution():
    arith = compute_score(DATA_SOURCE, "Answer: 14", "11", ARITH)
    assert arith["score"] == 0.0 and arith["acc"] is False
    assert arith["feedback"] == "Your answer 14 is wrong: 4 * 2 = 8 is evaluated first, then 3 + 8 = 11."
    left_to_right = compute_score(DATA_SOURCE, "Answer: -1", "5", {"kind": "arithmetic", "question": "3 * 4 - 7"})[
        "feedback"
    ]
    assert left_to_right == "Your answer -1 is wrong: 3 * 4 = 12 is evaluated first, then 12 - 7 = 5."
    reverse = compute_score(DATA_SOURCE, "Answer: d b c a", "d c b a", REVERSE)["feedback"]
    assert reverse == "Your answer 'd b c a' is wrong at position 2: 'b' should be 'c'; a b c d reversed is d c b a."
    short = compute_score(DATA_SOURCE, "Answer: 1 2", "1 2 3", SORT)["feedback"]
    assert short == "Your answer '1 2' has 2 items, expected 3: 3 1 2 in ascending order is 1 2 3."


def test_missing_or_malformed_answers_say_what_is_wrong():
    missing = compute_score(DATA_SOURCE, "The result is 11", "11", ARITH)
    assert missing["score"] == 0.0 and missing["feedback"].startswith("No answer found: end your reply with 'Answer:")
    assert "empty" in compute_score(DATA_SOURCE, "Answer:  \n", "11", ARITH)["feedback"]
    not_int = compute_score(DATA_SOURCE, "Answer: eleven", "11", ARITH)
    assert not_int["score"] == 0.0
    assert (
        not_int["feedback"] == "Your answer 'eleven' is not an integer: 4 * 2 = 8 is evaluated first, then 3 + 8 = 11."
    )


def test_verifier_without_extra_info_still_grades_and_rejects_foreign_or_inconsistent_rows():
    assert compute_score(DATA_SOURCE, "Answer: c b a", "c b a")["acc"]
    assert compute_score(DATA_SOURCE, "Answer: 7", "11")["feedback"] == "Your answer '7' is wrong: expected 11."
    with pytest.raises(ValueError, match="data_source='openai/gsm8k'"):
        compute_score("openai/gsm8k", "Answer: 11", "11", ARITH)
    with pytest.raises(ValueError, match="index 0"):
        compute_score(DATA_SOURCE, "Answer: 11", "12", ARITH)


def test_verl_loads_the_verifier_by_package_path():
    from verl.utils.import_utils import load_extern_object

    loaded = load_extern_object("pkg://credit_plugin.dev.tiny.task", "compute_score")
    assert loaded(data_source=DATA_SOURCE, solution_str="Answer: 11", ground_truth="11", extra_info=ARITH)["acc"]


def test_batched_chat_rendering_matches_the_chat_template(tokenizer):
    rng = random.Random(0)
    for reprompt in (False, True):
        sequences, prompt_lens = training_sequences(tokenizer, 32, rng, reprompt=reprompt)
        for sequence, length in zip(sequences, prompt_lens, strict=True):
            content = _content_of(tokenizer, sequence[:length])
            assert sequence[:length] == chat_prompt_ids(tokenizer, content)
            assert ("Correctly solve the original question." in content) == reprompt
            assert tokenizer.decode(sequence[length:]) == f"Answer: {_problem_of(content).answer}<|im_end|>"


def _problem_of(content: str) -> Problem:
    """The problem stated in the first line of a (re)prompt."""
    head, question = re.fullmatch(
        r"(Compute|Reverse the letters:|Sort the digits:) (.+)\.", content.split("\n")[0]
    ).groups()
    kind = {"Compute": "arithmetic", "Reverse the letters:": "reverse", "Sort the digits:": "sort"}[head]
    return Problem(kind, question)


def _content_of(tokenizer, prompt_ids: list[int]) -> str:
    return tokenizer.decode(prompt_ids).split("user\n", 1)[1].rsplit("<|im_end|>", 1)[0]


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_task_model):
    """The demo's model exactly as shipped (default spec), built once per session and shared with the e2e runs."""
    return tiny_task_model


@pytest.mark.slow  # builds the demo model (minutes: pre-training)
def test_built_model_loads_and_samples_both_successes_and_failures(tiny_model_dir):
    saved = transformers.AutoTokenizer.from_pretrained(tiny_model_dir)
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    assert model.dtype == torch.float32 and model.config._attn_implementation == "sdpa"
    assert model.generation_config.eos_token_id == saved.convert_tokens_to_ids("<|im_end|>") == saved.eos_token_id
    assert len(saved) == model.config.vocab_size <= VOCAB_SIZE
    prompt = sample_problems(1, seed=3)[0].prompt
    assert chat_prompt_ids(saved, prompt) == chat_prompt_ids(build_task_tokenizer(0), prompt)
    assert (
        saved.decode(chat_prompt_ids(saved, prompt)) == f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
    )
    rate = sample_success_rate(model, saved, sample_problems(64, seed=0, kinds=("reverse",)), seed=0)
    assert 0.01 <= rate <= 0.9, f"success rate {rate:.2f} at temperature 1 leaves RL nothing to learn"


@pytest.mark.slow  # fits the task tokenizer (about 8 s)
def test_task_tokenizer_round_trips_any_text_and_keeps_task_text_short():
    tokenizer = build_task_tokenizer(0)
    assert len(tokenizer) == VOCAB_SIZE and tokenizer.pad_token == "<|endoftext|>"
    odd = "Your answer 'ĝ€ 😀 \x00 NOTE TO TEACHER' is wrong\tat position 3"
    assert tokenizer.decode(tokenizer.encode(odd)) == odd
    assert len(tokenizer.encode("Reverse the letters: a b c d.")) <= 10
    assert build_task_tokenizer(0).get_vocab() == tokenizer.get_vocab(), "fitting must be deterministic"


def test_pretraining_answers_are_right_or_the_one_typical_mistake(tokenizer):
    sequences, prompt_lens = training_sequences(tokenizer, 64, random.Random(2), reprompt=False, answer_accuracy=0.5)
    pairs = list(zip(sequences, prompt_lens, strict=True))
    answers = [tokenizer.decode(seq[length:-1]).removeprefix("Answer: ") for seq, length in pairs]
    problems = [_problem_of(_content_of(tokenizer, seq[:length])) for seq, length in pairs]
    right = sum(answer == problem.answer for answer, problem in zip(answers, problems, strict=True))
    assert all(a in (p.answer, typical_mistake(p)) for a, p in zip(answers, problems, strict=True))
    assert 16 < right < 48
    assert typical_mistake(Problem("arithmetic", "2 + 3 * 4")) == "20"
    assert typical_mistake(Problem("reverse", "a b c")) == "a b c"


@pytest.mark.slow  # the built demo model (minutes)
def test_teacher_context_with_feedback_raises_the_correct_answer(tiny_model_dir):
    """On reversal (rarely solved) the verifier's feedback in CREDIT's reprompt makes the answer more likely."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_model_dir)
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    problems = sample_problems(12, seed=5, kinds=("reverse",))

    def answer_log_prob(content: str, answer: str) -> float:
        context = chat_prompt_ids(tokenizer, content)
        target = tokenizer.encode(f"Answer: {answer}", add_special_tokens=False) + [tokenizer.eos_token_id]
        with torch.no_grad():
            log_probs = model(torch.tensor([context + target])).logits[0, len(context) - 1 : -1].log_softmax(-1)
        return log_probs.gather(-1, torch.tensor(target)[:, None]).sum().item()

    gains = []
    for problem in problems:
        extra_info = {"kind": problem.kind, "question": problem.question}
        feedback = compute_score(DATA_SOURCE, f"Answer: {typical_mistake(problem)}", problem.answer, extra_info)
        reprompt = DEFAULT_REPROMPT_TEMPLATE.format(
            prompt=problem.prompt,
            solution="",
            feedback=DEFAULT_FEEDBACK_TEMPLATE.format(feedback_raw=feedback["feedback"]),
        )
        gains.append(answer_log_prob(reprompt, problem.answer) - answer_log_prob(problem.prompt, problem.answer))
    assert sum(gains) / len(gains) > 0.5


@pytest.mark.slow  # the built demo model (minutes)
def test_verl_model_config_loads_the_built_model(tiny_model_dir):
    from verl.workers.config import HFModelConfig

    config = HFModelConfig(path=str(tiny_model_dir), override_config={"attn_implementation": "sdpa"})
    assert config.architectures == ["Qwen2ForCausalLM"]
    assert config.tokenizer.eos_token == "<|im_end|>"
    assert config.generation_config.eos_token_id == config.tokenizer.eos_token_id


@pytest.mark.slow  # builds models (about 14 s)
def test_build_is_deterministic_cached_by_stamp_and_rebuilt_on_change(tmp_path):
    spec = TinyModelSpec(pretrain_steps=3, batch_size=4, warmup_steps=1)
    first, second = build_tiny_model(tmp_path / "a", seed=7, spec=spec), build_tiny_model(tmp_path / "b", 7, spec)
    weights = (first / "model.safetensors").read_bytes()
    assert weights == (second / "model.safetensors").read_bytes()
    mtime = (first / "model.safetensors").stat().st_mtime_ns
    build_tiny_model(first, seed=7, spec=spec)
    assert (first / "model.safetensors").stat().st_mtime_ns == mtime, "a matching stamp must reuse the directory"
    build_tiny_model(first, seed=8, spec=spec)
    assert json.loads((first / STAMP_FILE).read_text())["seed"] == 8
    assert (first / "model.safetensors").read_bytes() != weights
    with pytest.raises(ValueError, match="TinyModelSpec.batch_size must be > 0"):
        TinyModelSpec(batch_size=0)
    with pytest.raises(ValueError, match=r"TinyModelSpec.teacher_context_fraction must be in \[0, 1\]"):
        TinyModelSpec(teacher_context_fraction=1.5)
