"""The exact properties of the token rewards (method.md), on a real tiny causal LM."""

from __future__ import annotations

import pytest
import torch
from conftest import response_log_probs

from credit_plugin.rewards import (
    CONTRAST_FORMS,
    contrast_term,
    contrastive_baseline,
    credit_token_rewards,
    sdpo_token_rewards,
)

PROMPTS = ["What is 2 + 3?", "Reverse the string 'abc'.", "Name a prime above 10."]
FEEDBACK = "The following is feedback from your unsuccessful earlier attempt: wrong answer, expected 5."
RESPONSES = ["The answer is 5.", "cba", "11 is prime, so 11."]


def _chat(tokenizer, text: str) -> list[int]:
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True, return_dict=False
    )


@pytest.fixture(scope="module")
def scored(tokenizer, tiny_model):
    """Student, teacher and contrast (other prompt, same feedback and response) log-probs of 3 responses."""
    responses = [tokenizer.encode(text) for text in RESPONSES]
    student_ctx = [_chat(tokenizer, prompt) for prompt in PROMPTS]
    teacher_ctx = [_chat(tokenizer, prompt + FEEDBACK) for prompt in PROMPTS]
    # negative of row i: the prompt of row i+1 (another group), with row i's feedback and response
    contrast_ctx = [_chat(tokenizer, PROMPTS[(i + 1) % 3] + FEEDBACK) for i in range(3)]
    student, mask = response_log_probs(tiny_model, student_ctx, responses)
    teacher, _ = response_log_probs(tiny_model, teacher_ctx, responses)
    contrast, _ = response_log_probs(tiny_model, contrast_ctx, responses)
    return dict(
        student=student,
        teacher=teacher,
        contrast=contrast[:, None],
        mask=mask,
        responses=responses,
        student_ctx=student_ctx,
        teacher_ctx=teacher_ctx,
    )


def _sequence_log_prob(model, context: list[int], response: list[int]) -> float:
    """log p(y | context) through transformers' own loss (a code path independent of our gather)."""
    ids = torch.tensor([context + response])
    labels = ids.clone()
    labels[0, : len(context)] = -100
    with torch.no_grad():
        loss = model(ids, labels=labels).loss.double()
    return float(-loss * len(response))


def test_sdpo_reward_telescopes_to_pmi(scored, tiny_model):
    rewards = sdpo_token_rewards(scored["teacher"], scored["student"], scored["mask"])
    for row, response in enumerate(scored["responses"]):
        pmi = _sequence_log_prob(tiny_model, scored["teacher_ctx"][row], response) - _sequence_log_prob(
            tiny_model, scored["student_ctx"][row], response
        )
        assert abs(float(rewards[row].sum()) - pmi) < 1e-4
    assert rewards.abs().sum() > 0.1, "teacher context must change the scores of the tiny model"


def test_lambda_zero_is_sdpo_exactly(scored):
    sdpo = sdpo_token_rewards(scored["teacher"], scored["student"], scored["mask"])
    credit = credit_token_rewards(scored["teacher"], scored["contrast"], scored["student"], scored["mask"], 0.0)
    assert torch.equal(credit, sdpo)


@pytest.mark.parametrize("form", CONTRAST_FORMS)
def test_every_form_is_sdpo_at_lambda_zero(scored, form):
    sdpo = sdpo_token_rewards(scored["teacher"], scored["student"], scored["mask"])
    args = (scored["teacher"], scored["contrast"], scored["student"], scored["mask"], 0.0)
    assert torch.equal(credit_token_rewards(*args, form=form, student_contrast_log_probs=scored["contrast"]), sdpo)


def test_each_form_subtracts_lambda_times_its_contrast_term(scored):
    teacher, contrast, student, mask = scored["teacher"], scored["contrast"], scored["student"], scored["mask"]
    g = contrast[:, 0]
    student_swapped = student.flip(0)[:, None]
    expected = {
        "logprob": teacher - 0.5 * g - student,
        "reward": (teacher - student) - 0.5 * (g - student),
        "pmi": (teacher - student) - 0.5 * (g - student_swapped[:, 0]),
        "bounded": (teacher - student) - 0.5 * torch.maximum(g - student, (teacher - student).clamp(max=0)),
    }
    for form, value in expected.items():
        credit = credit_token_rewards(
            teacher, contrast, student, mask, 0.5, form=form, student_contrast_log_probs=student_swapped
        )
        torch.testing.assert_close(credit, value * mask, rtol=0, atol=1e-12, msg=form)


@pytest.mark.parametrize(
    ("form", "cancels_to_minus_student"), [("logprob", True), ("reward", False), ("pmi", False), ("bounded", False)]
)
def test_prompt_ignoring_teacher_at_lambda_one(tokenizer, tiny_model, scored, form, cancels_to_minus_student):
    """A teacher that sees only the feedback scores identically under every prompt: at lambda = 1 the logprob
    form leaves ``-log pi_theta`` (an entropy bonus), the reward and pmi forms leave 0 (the student ignoring the
    prompt as well, for pmi)."""
    responses = scored["responses"]
    feedback_only = [_chat(tokenizer, FEEDBACK)] * len(responses)
    teacher, mask = response_log_probs(tiny_model, feedback_only, responses)
    contrast, _ = response_log_probs(tiny_model, feedback_only[::-1], responses)
    student = scored["student"]
    credit = credit_token_rewards(
        teacher, contrast[:, None], student, mask, 1.0, form=form, student_contrast_log_probs=student[:, None]
    )
    expected = -student * mask if cancels_to_minus_student else torch.zeros_like(student)
    torch.testing.assert_close(credit, expected, rtol=0, atol=1e-10)


def test_batch_centering_makes_the_contrast_term_zero_mean_and_keeps_differences(scored):
    teacher, contrast, student, mask = scored["teacher"], scored["contrast"], scored["student"], scored["mask"]
    mask = mask.clone()
    mask[0, -2:] = 0
    baseline = contrastive_baseline(contrast, mask)
    plain = contrast_term(baseline, student, mask, "reward")
    centred = contrast_term(baseline, student, mask, "reward", centering="batch")
    on = mask.bool()
    assert abs(float(plain[on].mean())) > 1e-3
    assert abs(float(centred[on].mean())) < 1e-10
    torch.testing.assert_close(centred[on] - plain[on], torch.full_like(plain[on], -float(plain[on].mean())))
    assert torch.all(centred[~on] == 0)
    credit = credit_token_rewards(teacher, contrast, student, mask, 0.5, centering="batch")
    torch.testing.assert_close(credit, sdpo_token_rewards(teacher, student, mask) - 0.5 * centred)


@pytest.mark.parametrize("coef", [0.25, 0.5, 1.0])
def test_bounded_form_never_pays_more_than_sdpo_where_the_swap_makes_tokens_unlikely(scored, coef):
    """The swapped prompts finding the response 30 nats less likely (input-specific tokens, e.g. the answer's
    digits under another question): the reward form pays ``lambda * 30`` more than SDPO on every token, right or
    wrong; the bounded form keeps SDPO's credit where it is positive and cancels at most ``lambda`` of a debit,
    never turning it into a credit."""
    teacher, student, mask = scored["teacher"], scored["student"], scored["mask"]
    unlikely = scored["contrast"] - 30.0
    on = mask.bool()
    sdpo = sdpo_token_rewards(teacher, student, mask)
    reward = credit_token_rewards(teacher, unlikely, student, mask, coef, form="reward")
    bounded = credit_token_rewards(teacher, unlikely, student, mask, coef, form="bounded")
    assert bool((sdpo[on] > 0).any()) and bool((sdpo[on] < 0).any()), "needs credited and debited tokens"
    assert bool((reward[on] > sdpo[on] + coef * 25).all())
    credited = on & (sdpo > 0)
    debited = on & (sdpo < 0)
    torch.testing.assert_close(bounded[credited], sdpo[credited], rtol=0, atol=1e-12)
    torch.testing.assert_close(bounded[debited], (1 - coef) * sdpo[debited], rtol=0, atol=1e-12)
    assert bool((bounded[on] <= sdpo[on] - coef * sdpo[on].clamp(max=0) + 1e-12).all())


def test_bounded_form_is_the_reward_form_where_the_swap_keeps_tokens_likely(scored):
    """Where ``g >= min(T, S)`` (the swapped prompts score the token at least as the teacher or the student
    does: generic credit) the floor does not act and the bounded form equals the reward form bit for bit; on
    the real scores of the tiny model (all unfloored) and the first response made 30 nats less likely under the
    swap (floored) the two differ exactly there."""
    teacher, student, mask = scored["teacher"], scored["student"], scored["mask"]
    contrast = scored["contrast"].clone()
    contrast[0] -= 30.0
    on = mask.bool()
    g = contrast[:, 0]
    unfloored = on & (g >= torch.minimum(teacher, student))
    assert bool(unfloored.any()) and bool((on & ~unfloored).any())
    reward = credit_token_rewards(teacher, contrast, student, mask, 0.7, form="reward")
    bounded = credit_token_rewards(teacher, contrast, student, mask, 0.7, form="bounded")
    assert torch.equal(bounded[unfloored], reward[unfloored])
    assert bool((bounded[on & ~unfloored] < reward[on & ~unfloored]).all())


def test_bounded_form_needs_the_teacher_scores(scored):
    baseline = contrastive_baseline(scored["contrast"], scored["mask"])
    with pytest.raises(ValueError, match="contrast_form='bounded' needs the teacher's log-probs"):
        contrast_term(baseline, scored["student"], scored["mask"], "bounded")


def test_pmi_form_needs_the_student_contrast_scores(scored):
    with pytest.raises(ValueError, match="contrast_form='pmi' needs the student"):
        credit_token_rewards(scored["teacher"], scored["contrast"], scored["student"], scored["mask"], 1.0, form="pmi")


def test_masked_positions_are_zero(scored):
    mask = scored["mask"].clone()
    mask[:, 0] = 0
    noisy_student = scored["student"].masked_fill(scored["mask"] == 0, 123.0)
    credit = credit_token_rewards(scored["teacher"], scored["contrast"], noisy_student, mask, 1.0, form="logprob")
    assert torch.all(credit[mask == 0] == 0)
    assert torch.all(credit[mask == 1] != 0)


def test_logmeanexp_baseline_matches_definition():
    torch.manual_seed(0)
    contrast = torch.randn(4, 3, 5, dtype=torch.float64) - 3
    mask = torch.ones(4, 5)
    baseline = contrastive_baseline(contrast, mask, "logmeanexp")
    torch.testing.assert_close(baseline, contrast.exp().mean(dim=1).log())
    assert torch.all(baseline >= contrastive_baseline(contrast, mask, "mean") - 1e-12)  # Jensen


def test_nan_at_unmasked_position_names_the_sample():
    teacher = torch.zeros(3, 4)
    teacher[2, 1] = float("nan")
    with pytest.raises(ValueError, match=r"teacher_log_probs .* samples \[2\]"):
        sdpo_token_rewards(teacher, torch.zeros(3, 4), torch.ones(3, 4))
    mask = torch.ones(3, 4)
    mask[2, 1] = 0  # NaN under padding is harmless and is zeroed
    assert torch.all(sdpo_token_rewards(teacher, torch.zeros(3, 4), mask) == 0)
    contrast = torch.zeros(3, 2, 4)
    contrast[0, 1, 3] = float("-inf")
    with pytest.raises(ValueError, match=r"contrast_log_probs .* samples \[0\]"):
        contrastive_baseline(contrast, torch.ones(3, 4))


@pytest.mark.parametrize(
    ("teacher", "contrast", "message"),
    [
        (torch.zeros(3, 5), torch.zeros(3, 1, 4), "teacher_log_probs has shape"),
        (torch.zeros(3, 4), torch.zeros(3, 4), r"contrast_log_probs must have shape \(B, K, T\)"),
        (torch.zeros(3, 4), torch.zeros(3, 0, 4), "K=0"),
    ],
)
def test_wrong_shapes_are_named(teacher, contrast, message):
    with pytest.raises(ValueError, match=message):
        credit_token_rewards(teacher, contrast, torch.zeros(3, 4), torch.ones(3, 4))


def test_bad_options_are_named():
    args = (torch.zeros(2, 3), torch.zeros(2, 1, 3), torch.zeros(2, 3), torch.ones(2, 3))
    with pytest.raises(ValueError, match="contrast_coef"):
        credit_token_rewards(*args, contrast_coef=-1.0)
    with pytest.raises(ValueError, match="negative_aggregate"):
        credit_token_rewards(*args, aggregate="median")
    with pytest.raises(ValueError, match="contrast_form"):
        credit_token_rewards(*args, form="ratio")
    with pytest.raises(ValueError, match="contrast_centering"):
        credit_token_rewards(*args, centering="row")
