"""The credit report's per-token records: which samples, and that their rewards are the estimator's."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tensordict import TensorDict

from credit_plugin.config import CreditConfig
from credit_plugin.estimators import compute_credit_advantage
from credit_plugin.token_records import append_records, build_records, choose_rows, prompt_text, token_scores


def test_rows_with_context_first_one_per_group_before_seconds():
    uids = ["a", "a", "b", "b", "c", "c"]
    context = torch.tensor([1, 1, 0, 1, 0, 0])
    assert choose_rows(uids, context, 2) == [0, 3]
    assert choose_rows(uids, context, 3) == [0, 3, 1]
    assert choose_rows(uids, context, 5) == [0, 3, 1, 2, 4]
    assert choose_rows(uids, context, 0) == []
    assert choose_rows(uids, context, 100) == [0, 3, 1, 2, 4, 5]


def _batch(form: str, coef: float, k: int = 2):
    generator = torch.Generator().manual_seed(0)
    bsz, width = 4, 5
    response_mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 1, 0]]).float()
    context = torch.tensor([1.0, 1.0, 0.0, 1.0])
    fields = {
        "teacher_log_probs": -torch.rand(bsz, width, generator=generator) * 3,
        "old_log_probs": -torch.rand(bsz, width, generator=generator) * 3,
        "contrast_log_probs": -torch.rand(bsz, k, width, generator=generator) * 3,
        "student_contrast_log_probs": -torch.rand(bsz, k, width, generator=generator) * 3,
        "response_mask": response_mask,
        "self_distillation_mask": context,
    }
    credit = CreditConfig(contrast_coef=coef, contrast_form=form, num_negatives=k, token_records=2)
    advantages, _ = compute_credit_advantage(
        token_level_rewards=torch.zeros(bsz, width),
        response_mask=response_mask,
        index=np.array(["a", "a", "b", "b"], dtype=object),
        config=credit,
        **{key: value for key, value in fields.items() if key != "response_mask"},
    )
    return TensorDict({**fields, "advantages": advantages}, batch_size=bsz), credit


@pytest.mark.parametrize(("form", "coef"), [("reward", 0.25), ("pmi", 0.5), ("logprob", 1.0)])
def test_recorded_credit_is_the_estimators_advantage_and_sdpo_is_t_minus_s(form, coef):
    batch, credit = _batch(form, coef)
    scores = token_scores(batch, credit)
    mask = batch["response_mask"] * batch["self_distillation_mask"][:, None]
    torch.testing.assert_close(scores.credit, batch["advantages"])
    torch.testing.assert_close(scores.sdpo, (batch["teacher_log_probs"] - batch["old_log_probs"]) * mask)
    torch.testing.assert_close(scores.baseline, batch["contrast_log_probs"].mean(1) * mask)
    # a row without context carries no credit, whatever its log-probs
    assert scores.sdpo[2].abs().sum() == 0 and scores.credit[2].abs().sum() == 0


def test_sdpo_run_records_no_baseline_or_credit(tmp_path):
    batch, _ = _batch("reward", 0.25)
    batch = batch.exclude("contrast_log_probs", "student_contrast_log_probs")
    credit = CreditConfig(contrast_coef=0.0)
    scores = token_scores(batch, credit)
    assert scores.baseline is None and scores.credit is None
    records = build_records(
        step=7,
        rows=[1],
        scores=scores,
        uids=["a", "a", "b", "b"],
        outcome=torch.tensor([1.0, 0.0, 0.0, 1.0]),
        tokens=[["A", "n", "s", ":", " 3"]],
        token_ids=[[5, 6, 7, 8, 9]],
        prompts=["user: Sort the digits: 3 1 2."],
        feedback=["wrong at position 1"],
        solutions=[None],
        credit=credit,
    )
    (record,) = records
    assert record["baseline_log_probs"] is None and record["credit"] is None
    assert record["sdpo"] == pytest.approx(scores.sdpo[1].tolist(), abs=1e-5)
    assert (record["step"], record["row"], record["uid"], record["outcome"]) == (7, 1, "a", 0.0)
    path = append_records(tmp_path / "run", records)
    append_records(tmp_path / "run", records)
    assert [json.loads(line)["tokens"] for line in path.read_text().splitlines()] == [record["tokens"]] * 2


def test_a_token_text_per_token_id_or_a_clear_error():
    batch, credit = _batch("reward", 0.25)
    with pytest.raises(ValueError, match="row 0 has 2 token texts for 3 ids"):
        build_records(
            1,
            [0],
            token_scores(batch, credit),
            ["a"] * 4,
            torch.zeros(4),
            [["a", "b"]],
            [[1, 2, 3]],
            ["p"],
            [None],
            [None],
            credit,
        )


def test_prompt_text_of_a_chat_and_of_plain_text():
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Sort 3 1 2."}]
    assert prompt_text(chat) == "system: Be brief.\nuser: Sort 3 1 2."
    assert prompt_text(np.array(chat, dtype=object)) == "system: Be brief.\nuser: Sort 3 1 2."
    assert prompt_text("Sort 3 1 2.") == "Sort 3 1 2."


def test_records_go_to_the_configured_folder_or_the_runs_checkpoint_folder():
    from omegaconf import OmegaConf

    from credit_plugin.token_records import records_dir

    trainer = OmegaConf.create({"default_local_dir": "/runs/x/checkpoints"})
    assert records_dir(CreditConfig(token_records=2), trainer) == "/runs/x/checkpoints"
    assert records_dir(CreditConfig(token_records=2, token_records_dir="/runs/x"), trainer) == "/runs/x"
