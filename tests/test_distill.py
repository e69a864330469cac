"""Logit-level self-distillation math (credit_plugin.distill) on real tensors, float64 unless stated."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from credit_plugin.distill import (
    add_tail_bucket,
    aggregate_loss,
    bucket,
    bucketed_log_probs,
    contrastive_topk_target,
    generalized_jsd,
    importance_weights,
    per_token_distillation_loss,
    support_overlap,
    tail_clamp_active,
)

B, T, V = 3, 5, 32


def self_distillation_loss(
    student_logits: torch.Tensor,
    teacher: torch.Tensor,
    response_mask: torch.Tensor,
    loss_agg_mode: str = "token-mean",
    **options,
) -> torch.Tensor:
    """The per-token loss aggregated as the workers aggregate it (verl's ``agg_loss`` modes, one rank)."""
    return aggregate_loss(
        per_token_distillation_loss(student_logits, teacher, response_mask, **options), response_mask, loss_agg_mode
    )


ALPHAS = (0.0, 0.1, 0.5, 0.9, 1.0)


def _logits(seed: int, scale: float = 3.0, shape=(B, T, V)) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return scale * torch.randn(shape, generator=generator, dtype=torch.float64)


def _mask() -> torch.Tensor:
    mask = torch.ones(B, T)
    mask[0, 3:] = 0
    mask[2, 1:] = 0
    return mask


def _kl_full(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(P || Q) per position, through torch's own kl_div."""
    p, q = F.log_softmax(p_logits, -1), F.log_softmax(q_logits, -1)
    return F.kl_div(q, p, log_target=True, reduction="none").sum(-1)


def test_reverse_kl_gradient_is_logit_level_policy_gradient():
    """SDPO Prop. 2.1: grad of KL(S || sg(T)) = E_{y~S}[(log S(y) - log T(y)) grad log S(y)], in closed form."""
    student = _logits(0).requires_grad_(True)
    teacher = _logits(1).requires_grad_(True)
    mask = _mask()
    loss = self_distillation_loss(student, teacher, mask, topk=None, alpha=1.0, is_clip=None)
    loss.backward()

    probs = torch.softmax(student.detach(), -1)
    advantage = torch.log_softmax(student.detach(), -1) - torch.log_softmax(teacher.detach(), -1)
    # d log S(y) / d z_j = [y == j] - S_j, one (V, V) Jacobian per position
    score = torch.eye(V, dtype=torch.float64) - probs[..., None, :]
    policy_gradient = torch.einsum("btv,btvj->btj", probs * advantage, score)
    expected = policy_gradient * mask[..., None] / mask.sum()
    torch.testing.assert_close(student.grad, expected, rtol=0, atol=1e-10)
    assert teacher.grad is None  # stop-gradient: the teacher is never in the graph


@pytest.mark.parametrize("k", [1, 4, V - 1, V])
@pytest.mark.parametrize("source", ["student", "teacher"])
def test_tail_bucket_distributions_sum_to_one(k, source):
    for scale in (0.1, 3.0, 30.0):  # near-uniform to peaked (tail mass ~ 1e-30)
        student, teacher = bucketed_log_probs(_logits(2, scale), _logits(3, scale), topk=k, topk_source=source)
        assert student.shape == teacher.shape == (B, T, k + 1)
        for log_probs in (student, teacher):
            torch.testing.assert_close(
                log_probs.exp().sum(-1), torch.ones(B, T, dtype=torch.float64), rtol=0, atol=1e-12
            )


def test_tail_bucket_float32_and_exact_tail():
    logits = _logits(4).float()
    topk = torch.topk(torch.log_softmax(logits, -1), 6).values
    bucketed = add_tail_bucket(topk)
    torch.testing.assert_close(bucketed.exp().sum(-1), torch.ones(B, T), rtol=0, atol=1e-6)
    # the tail equals the log-mass of the other V - k ids, computed directly
    rest = torch.log_softmax(logits.double(), -1).sort(-1, descending=True).values[..., 6:].logsumexp(-1)
    torch.testing.assert_close(bucketed[..., -1].double(), rest, rtol=0, atol=1e-5)


def test_full_vocab_and_renormalised_topk():
    student_logits, teacher_logits = _logits(5), _logits(6)
    student, teacher = bucketed_log_probs(student_logits, teacher_logits, topk=None)
    torch.testing.assert_close(student, F.log_softmax(student_logits, -1))
    torch.testing.assert_close(teacher, F.log_softmax(teacher_logits, -1))

    student, teacher = bucketed_log_probs(student_logits, teacher_logits, topk=7, add_tail=False)
    index = torch.topk(student_logits, 7).indices  # SDPO: the student's top-k
    torch.testing.assert_close(student, F.log_softmax(student_logits.gather(-1, index), -1))
    torch.testing.assert_close(teacher, F.log_softmax(teacher_logits.gather(-1, index), -1))


@pytest.mark.parametrize("alpha", ALPHAS)
def test_bucketing_never_increases_divergence(alpha):
    """Data processing inequality: the tail bucket is a coarse-graining, for either choice of top-k ids."""
    for seed in range(20):
        scale = (0.5, 2.0, 8.0)[seed % 3]
        student_logits, teacher_logits = _logits(100 + seed, scale), _logits(200 + seed, scale)
        full = generalized_jsd(*bucketed_log_probs(student_logits, teacher_logits, topk=None), alpha)
        for k in (1, 3, 16, V):
            for source in ("student", "teacher"):
                bucketed = generalized_jsd(
                    *bucketed_log_probs(student_logits, teacher_logits, topk=k, topk_source=source), alpha
                )
                assert (bucketed <= full + 1e-12).all(), (seed, k, source)
                if k == V:
                    torch.testing.assert_close(bucketed, full, rtol=0, atol=1e-12)


def test_jsd_endpoints_are_the_two_kls():
    student_logits, teacher_logits = _logits(7), _logits(8)
    student, teacher = F.log_softmax(student_logits, -1), F.log_softmax(teacher_logits, -1)
    forward = F.kl_div(student, teacher, log_target=True, reduction="none").sum(-1)  # KL(T || S)
    reverse = F.kl_div(teacher, student, log_target=True, reduction="none").sum(-1)  # KL(S || T)
    torch.testing.assert_close(generalized_jsd(student, teacher, 0.0), forward)
    torch.testing.assert_close(generalized_jsd(student, teacher, 1.0), reverse)
    assert not torch.allclose(forward, reverse)


@pytest.mark.parametrize("alpha", [0.1, 0.3, 0.5, 0.8])
def test_jsd_is_mixture_entropy_gap_with_sdpo_convention(alpha):
    """alpha KL(T||M) + (1-alpha) KL(S||M), M = alpha T + (1-alpha) S, is H(M) - alpha H(T) - (1-alpha) H(S)."""
    student, teacher = F.log_softmax(_logits(9), -1), F.log_softmax(_logits(10), -1)

    def entropy(log_probs):
        return -(log_probs.exp() * log_probs).sum(-1)

    mixture = (alpha * teacher.exp() + (1 - alpha) * student.exp()).log()
    expected = entropy(mixture) - alpha * entropy(teacher) - (1 - alpha) * entropy(student)
    jsd = generalized_jsd(student, teacher, alpha)
    torch.testing.assert_close(jsd, expected)
    binary_entropy = -(alpha * math.log(alpha) + (1 - alpha) * math.log(1 - alpha))
    assert (jsd >= 0).all() and (jsd <= binary_entropy).all()
    if alpha != 0.5:  # the roles of S and T matter: the swapped convention is a different number
        assert not torch.allclose(jsd, generalized_jsd(teacher, student, alpha))


def test_jsd_half_is_symmetric_and_bounded_by_ln2():
    student, teacher = F.log_softmax(_logits(11, 10.0), -1), F.log_softmax(_logits(12, 10.0), -1)
    jsd = generalized_jsd(student, teacher, 0.5)
    torch.testing.assert_close(jsd, generalized_jsd(teacher, student, 0.5))
    assert (jsd <= math.log(2) + 1e-12).all() and (jsd > 0.3).any()  # peaked, disjoint-ish: near ln 2
    assert (jsd <= _kl_full(student, teacher)).all()


def test_precomputed_teacher_topk_matches_full_teacher_logits():
    student_logits, teacher_logits, mask = _logits(13), _logits(14), _mask()
    teacher_log_probs = F.log_softmax(teacher_logits, -1)
    for source, selector in (("teacher", teacher_logits), ("student", student_logits)):
        index = torch.topk(selector, 8).indices
        from_logits = per_token_distillation_loss(
            student_logits, teacher_logits, mask, topk=8, alpha=0.5, is_clip=None, topk_source=source
        )
        from_topk = per_token_distillation_loss(
            student_logits,
            teacher_log_probs.gather(-1, index),
            mask,
            topk=8,
            alpha=0.5,
            is_clip=None,
            topk_indices=index,
        )
        torch.testing.assert_close(from_topk, from_logits, rtol=0, atol=1e-12)


def test_importance_weights_clip_from_above_only():
    log_prob = torch.log(torch.tensor([[0.9, 0.5, 0.1, 0.02]], dtype=torch.float64))
    old_log_prob = torch.log(torch.tensor([[0.3, 0.5, 0.4, 1e-12]], dtype=torch.float64))
    weights = importance_weights(log_prob, old_log_prob, is_clip=2.0)
    torch.testing.assert_close(weights, torch.tensor([[2.0, 1.0, 0.25, 2.0]], dtype=torch.float64))
    torch.testing.assert_close(importance_weights(log_prob, old_log_prob, None), torch.ones_like(log_prob))


def test_importance_weight_scales_loss_without_gradient_through_it():
    student_logits, teacher_logits, mask = _logits(15), _logits(16), _mask()
    sampled = torch.randint(V, (B, T), generator=torch.Generator().manual_seed(0))
    old_log_prob = F.log_softmax(_logits(17, 1.0), -1).gather(-1, sampled[..., None])[..., 0]
    options = dict(topk=6, alpha=0.5)

    def grad(is_clip, scale=None):
        logits = student_logits.clone().requires_grad_(True)
        # log_prob comes from the same forward as the distilled logits, as in the actor
        log_prob = F.log_softmax(logits, -1).gather(-1, sampled[..., None])[..., 0]
        loss = per_token_distillation_loss(
            logits, teacher_logits, mask, is_clip=is_clip, log_prob=log_prob, old_log_prob=old_log_prob, **options
        )
        if scale is not None:
            loss = loss * scale
        loss.sum().backward()
        return loss.detach(), logits.grad

    log_prob = F.log_softmax(student_logits, -1).gather(-1, sampled[..., None])[..., 0]
    weights = importance_weights(log_prob, old_log_prob, 2.0)
    assert (weights == 2.0).any() and (weights < 1.0).any()
    weighted, weighted_grad = grad(2.0)
    plain, plain_grad = grad(None)
    _, reference_grad = grad(None, scale=weights)  # same weights as constants
    torch.testing.assert_close(weighted, plain * weights)
    torch.testing.assert_close(weighted_grad, reference_grad)
    assert not torch.allclose(weighted_grad, plain_grad)
    # on-policy (old = current) the weight is exactly 1
    on_policy = per_token_distillation_loss(
        student_logits, teacher_logits, mask, is_clip=2.0, log_prob=log_prob, old_log_prob=log_prob, **options
    )
    torch.testing.assert_close(on_policy, plain)


@pytest.mark.parametrize("topk", [None, 5])
def test_masked_positions_contribute_nothing(topk):
    mask = _mask()
    masked = ~mask.bool()
    student_logits, teacher_logits = _logits(18), _logits(19)
    clean = per_token_distillation_loss(student_logits, teacher_logits, mask, topk=topk, is_clip=None)
    assert (clean[masked] == 0).all() and (clean[~masked] > 0).all()

    dirty_student, dirty_teacher = student_logits.clone(), teacher_logits.clone()
    dirty_student[masked] = 1e4 * _logits(20)[masked]
    dirty_teacher[masked] = float("nan")
    dirty_student[2, 3, 0] = float("inf")
    dirty_student.requires_grad_(True)
    for mode in ("token-mean", "seq-mean-token-mean"):
        dirty = self_distillation_loss(dirty_student, dirty_teacher, mask, topk=topk, is_clip=None, loss_agg_mode=mode)
        torch.testing.assert_close(dirty, aggregate_loss(clean, mask, mode))
    dirty.backward()
    assert torch.isfinite(dirty_student.grad).all()
    assert (dirty_student.grad[masked] == 0).all() and (dirty_student.grad[~masked] != 0).any()


def test_aggregation_modes():
    loss_mat, mask = _logits(21, 1.0, (B, T)), _mask()
    token_mean = (loss_mat * mask).sum() / mask.sum()
    seq_mean = torch.stack([loss_mat[i][mask[i].bool()].mean() for i in range(B)]).mean()
    torch.testing.assert_close(aggregate_loss(loss_mat, mask, "token-mean"), token_mean)
    torch.testing.assert_close(aggregate_loss(loss_mat, mask, "seq-mean-token-mean"), seq_mean)
    # global normalisers, as verl passes them under data parallelism
    torch.testing.assert_close(
        aggregate_loss(loss_mat, mask, "token-mean", dp_size=4, batch_num_tokens=40),
        (loss_mat * mask).sum() / 40 * 4,
    )
    # a micro-batch with no distilled token (no sample had teacher context) is a zero loss, not NaN
    empty = torch.zeros(B, T)
    for mode in ("token-mean", "seq-mean-token-mean"):
        assert aggregate_loss(loss_mat, empty, mode) == 0


def _call(**overrides):
    arguments = dict(
        student_logits=_logits(22), teacher=_logits(23), response_mask=_mask(), topk=4, alpha=0.5, is_clip=None
    )
    arguments.update(overrides)
    return self_distillation_loss(**arguments)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(teacher=_logits(24, shape=(B, T, V + 1))), "teacher logits have shape"),
        (dict(response_mask=torch.ones(B, T + 1)), "response_mask has shape"),
        (dict(student_logits=_logits(25, shape=(B, V))), "student_logits must have shape"),
        (dict(alpha=-0.1), "alpha must be in"),
        (dict(alpha=1.5), "alpha must be in"),
        (dict(alpha=float("nan")), "alpha must be in"),
        (dict(topk=0), "topk must be a positive integer"),
        (dict(topk=2.5), "topk must be a positive integer"),
        (dict(topk_source="mixture"), "topk_source must be one of"),
        (dict(loss_agg_mode="seq-sum"), "loss_agg_mode must be one of"),
        (dict(is_clip=2.0), "log_prob and old_log_prob"),
        (dict(is_clip=0.0, log_prob=torch.zeros(B, T), old_log_prob=torch.zeros(B, T)), "is_clip must be positive"),
        (dict(is_clip=2.0, log_prob=torch.zeros(B, T), old_log_prob=torch.zeros(B)), "old_log_prob has shape"),
        (dict(topk_indices=torch.zeros(B, T, 3, dtype=torch.long)), "must both have shape"),
    ],
)
def test_bad_input_is_named(overrides, message):
    with pytest.raises(ValueError, match=message):
        _call(**overrides)


def test_non_finite_unmasked_inputs_name_the_sample():
    student = _logits(26)
    student[1, 2, 7] = float("nan")
    with pytest.raises(ValueError, match=r"student_logits has NaN/inf values .* samples \[1\]"):
        _call(student_logits=student)
    teacher = _logits(27)
    teacher[0, 0, 0] = float("-inf")
    with pytest.raises(ValueError, match=r"teacher logits has NaN/inf values .* samples \[0\]"):
        _call(teacher=teacher)
    old_log_prob = torch.zeros(B, T)
    old_log_prob[2, 0] = float("nan")
    with pytest.raises(ValueError, match=r"old_log_prob has NaN/inf .* samples \[2\]"):
        _call(is_clip=2.0, log_prob=torch.zeros(B, T), old_log_prob=old_log_prob)


def test_teacher_topk_must_be_log_probs_with_matching_ids():
    teacher_logits = _logits(28)
    index = torch.topk(teacher_logits, 4).indices
    with pytest.raises(ValueError, match="sum to more than 1"):
        _call(teacher=teacher_logits.gather(-1, index), topk_indices=index)  # raw logits, not log-probs
    log_probs = F.log_softmax(teacher_logits, -1).gather(-1, index)
    with pytest.raises(ValueError, match="does not match the 4 ids"):
        _call(teacher=log_probs, topk_indices=index, topk=5)
    with pytest.raises(ValueError, match=r"ids in \[0, 32\)"):
        _call(teacher=log_probs, topk_indices=index + V)


# ---------------------------------------------------------------- CREDIT at logit level (docs/method.md)

K_IDS, K_NEG = 6, 3


def _topk_log_probs(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Full-vocabulary log-probs at ``ids``, as the worker's top-k pass takes them (gather, then normalise)."""
    return logits.gather(-1, ids) - torch.logsumexp(logits, -1, keepdim=True)


def _logit_level_inputs(seed: int):
    """Student logits, teacher logits under the reprompt and K swapped prompts, the student's top-k ids."""
    student, teacher = _logits(seed), _logits(seed + 1)
    contrast = torch.stack([_logits(seed + 2 + k) for k in range(K_NEG)], dim=1)  # (B, K, T, V)
    ids = torch.topk(student, K_IDS, dim=-1).indices
    gathered = torch.stack([_topk_log_probs(contrast[:, k], ids) for k in range(K_NEG)], dim=1)
    return student, teacher, contrast, ids, gathered


@pytest.mark.parametrize("add_tail", [True, False])
def test_logit_level_credit_at_lambda_zero_is_sdpos_logit_loss_exactly(add_tail):
    student, teacher, _, ids, contrast = _logit_level_inputs(3)
    teacher_topk = _topk_log_probs(teacher, ids)
    target = contrastive_topk_target(teacher_topk, contrast, _topk_log_probs(student, ids), 0.0, add_tail)
    assert torch.equal(target, teacher_topk)
    mask = _mask()
    got = per_token_distillation_loss(
        student, target, mask, topk=K_IDS, add_tail=add_tail, is_clip=None, topk_indices=ids
    )
    sdpo = per_token_distillation_loss(student, teacher, mask, topk=K_IDS, add_tail=add_tail, is_clip=None)
    assert torch.equal(got, sdpo)


@pytest.mark.parametrize("add_tail", [True, False])
@pytest.mark.parametrize("aggregate", ["mean", "logmeanexp"])
def test_a_prompt_ignoring_teacher_at_lambda_one_gives_the_old_student(add_tail, aggregate):
    """form reward: log q = log T - (agg log T' - log S) = log S when T' = T: the target is the student."""
    student, teacher, _, ids, _ = _logit_level_inputs(5)
    teacher_topk = _topk_log_probs(teacher, ids)
    contrast = teacher_topk[:, None].expand(B, K_NEG, T, K_IDS)
    student_topk = _topk_log_probs(student, ids)
    target = contrastive_topk_target(teacher_topk, contrast, student_topk, 1.0, add_tail, aggregate)
    torch.testing.assert_close(bucket(target, add_tail), bucket(student_topk, add_tail), rtol=0, atol=1e-12)
    # the divergence to it is 0: a prompt-generic teacher teaches nothing
    loss = per_token_distillation_loss(
        student, target, torch.ones(B, T), topk=K_IDS, add_tail=add_tail, alpha=0.5, is_clip=None, topk_indices=ids
    )
    assert loss.abs().max() < 1e-12


def test_logprob_form_with_a_prompt_ignoring_teacher_at_lambda_one_is_uniform_on_the_buckets():
    """form logprob: log q = log T - log T' + const = const: the uniform distribution over the k + 1 buckets."""
    _, teacher, _, ids, _ = _logit_level_inputs(7)
    teacher_topk = _topk_log_probs(teacher, ids)
    contrast = teacher_topk[:, None].expand(B, K_NEG, T, K_IDS)
    target = contrastive_topk_target(teacher_topk, contrast, None, 1.0, True, form="logprob")
    expected = torch.full((B, T, K_IDS + 1), -math.log(K_IDS + 1), dtype=torch.float64)
    torch.testing.assert_close(bucket(target, True), expected, rtol=0, atol=1e-12)


def test_logit_level_target_matches_its_definition_written_out():
    """log q = log T_b - lambda * (mean_k log T'_k,b - log S_b), renormalised over the k + 1 buckets."""
    student, teacher, contrast_logits, ids, contrast = _logit_level_inputs(9)
    lam = 0.4

    def buckets(logits: torch.Tensor) -> torch.Tensor:
        probs = F.softmax(logits, -1)
        top = probs.gather(-1, ids)
        return torch.cat([top, 1 - top.sum(-1, keepdim=True)], -1).log()

    raw = buckets(teacher) - lam * (
        torch.stack([buckets(contrast_logits[:, k]) for k in range(K_NEG)]).mean(0) - buckets(student)
    )
    expected = raw - torch.logsumexp(raw, -1, keepdim=True)
    target = contrastive_topk_target(_topk_log_probs(teacher, ids), contrast, _topk_log_probs(student, ids), lam)
    torch.testing.assert_close(bucket(target, True), expected, rtol=0, atol=1e-10)
    assert torch.all(torch.logsumexp(target, -1) < 0), "the ids keep less than all the mass: a tail remains"


def test_tail_clamp_is_active_exactly_where_the_top_k_holds_all_the_mass():
    full = torch.log(torch.tensor([[0.5, 0.5], [0.5, 0.25]], dtype=torch.float32))
    assert tail_clamp_active(full).tolist() == [True, False]


def test_support_overlap_counts_the_current_ids_inside_the_stored_support():
    current = torch.tensor([[[1, 2, 3], [4, 5, 6]], [[9, 8, 7], [0, 1, 2]]])
    support = torch.tensor([[[3, 1, 9], [7, 8, 9]], [[7, 8, 9], [2, 0, 5]]])
    expected = torch.tensor([[2 / 3, 0.0], [1.0, 2 / 3]])
    torch.testing.assert_close(support_overlap(current, support), expected)
    # against the set definition on random rows of distinct ids, order within a row irrelevant
    generator = torch.Generator().manual_seed(0)
    rows_a = torch.stack([torch.randperm(V, generator=generator)[:7] for _ in range(50)])
    rows_b = torch.stack([torch.randperm(V, generator=generator)[:7] for _ in range(50)])
    by_sets = torch.tensor([len(set(a.tolist()) & set(b.tolist())) / 7 for a, b in zip(rows_a, rows_b, strict=True)])
    torch.testing.assert_close(support_overlap(rows_a, rows_b), by_sets)
    torch.testing.assert_close(support_overlap(rows_a, rows_a.flip(-1)), torch.ones(50))
    with pytest.raises(ValueError, match="must agree on every dimension but the last"):
        support_overlap(rows_a, rows_b[:3])


def test_logit_level_target_refuses_missing_inputs():
    _, teacher, _, ids, contrast = _logit_level_inputs(11)
    teacher_topk = _topk_log_probs(teacher, ids)
    with pytest.raises(ValueError, match="needs the old student's top-k log-probs"):
        contrastive_topk_target(teacher_topk, contrast, None, 0.5)
    with pytest.raises(ValueError, match="contrast_form must be one of"):
        contrastive_topk_target(teacher_topk, contrast, teacher_topk, 0.5, form="pmi")
