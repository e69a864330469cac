"""The hf_cpu rollout server as verl drives it: launched by its replica in a local Ray, fed weights by its adapter."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
import ray
import torch
from tiny_checkpoint import TinyModelDir, load_reference, save_tiny_checkpoint
from verl.workers.config import HFModelConfig, RolloutConfig
from verl.workers.rollout.replica import RolloutMode, TokenOutput

from credit_plugin.dev.rollout import ROLLOUT_NAME
from credit_plugin.dev.rollout.adapter import HFCPURolloutAdapter
from credit_plugin.dev.rollout.replica import HFCPUReplica

pytestmark = [pytest.mark.slow, pytest.mark.ray]

PROMPT_LENGTH = 32
RESPONSE_LENGTH = 16
TEXTS = ["Hello", "What is 2 + 2?", "Write a short poem about the sea, the wind and the gulls."]


@pytest.fixture(scope="module")
def rollout_config() -> RolloutConfig:
    return RolloutConfig(
        name=ROLLOUT_NAME,
        tensor_model_parallel_size=1,
        prompt_length=PROMPT_LENGTH,
        response_length=RESPONSE_LENGTH,
        calculate_log_probs=True,
    )


@pytest.fixture(scope="module")
def tiny_model_dir(tokenizer, tmp_path_factory) -> TinyModelDir:
    return save_tiny_checkpoint(tokenizer, tmp_path_factory.mktemp("tiny_qwen2"))


@pytest.fixture(scope="module")
def server(tiny_model_dir, rollout_config):
    ray.init(num_cpus=2, include_dashboard=False, namespace=f"hf_cpu_test_{uuid.uuid4().hex}")
    try:
        # The model section as verl passes it to the replica: the config mapping, not the dataclass.
        replica = HFCPUReplica(
            replica_rank=0, config=rollout_config, model_config={"path": str(tiny_model_dir.path)}, gpus_per_node=1
        )
        replica.rollout_mode = RolloutMode.HYBRID
        asyncio.run(replica.launch_servers())
        yield replica.server_handle
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def reference(tiny_model_dir):
    return load_reference(tiny_model_dir.path)


@pytest.fixture(scope="module")
def prompts(tokenizer) -> list[list[int]]:
    return [tokenizer.encode(t) for t in TEXTS]


def submit(server, prompt: list[int], **params) -> ray.ObjectRef:
    return server.generate.remote(
        prompt_ids=prompt, sampling_params={"logprobs": True, **params}, request_id=uuid.uuid4().hex
    )


def generate(server, prompt: list[int], **params) -> TokenOutput:
    return ray.get(submit(server, prompt, **params))


def forward_log_probs(model, prompt: list[int], response: list[int], temperature: float = 1.0, top_k: int = 0):
    """``log_softmax(logits / T)`` restricted to the top-k (0: all) at each response position, gathered at the
    response tokens; also returns each position's top-k ids. Shapes: (T,), (T, k)."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt + response])).logits[0, len(prompt) - 1 : -1].float() / temperature
    if top_k:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    targets = torch.tensor(response)[:, None]
    return logits.log_softmax(-1).gather(-1, targets)[:, 0], logits.topk(max(top_k, 1), dim=-1).indices


def hf_greedy(model, prompt: list[int], max_new_tokens: int) -> list[int]:
    """transformers' greedy generate, stopping at the saved generation config's EOS ids (kept)."""
    out = model.generate(torch.tensor([prompt]), max_new_tokens=max_new_tokens, do_sample=False)
    return out[0, len(prompt) :].tolist()


def test_greedy_matches_transformers_generate_in_a_concurrent_batch(server, reference, prompts):
    outputs = ray.get([submit(server, p, temperature=0.0, max_tokens=12) for p in prompts])
    for prompt, out in zip(prompts, outputs, strict=True):
        assert out.token_ids == hf_greedy(reference, prompt, 12)
        assert out.stop_reason == "completed"
        expected, _ = forward_log_probs(reference, prompt, out.token_ids)
        torch.testing.assert_close(torch.tensor(out.log_probs), expected, rtol=0, atol=1e-4)


def test_log_probs_are_those_of_the_tempered_sampling_distribution(server, reference, prompts):
    outputs = ray.get([submit(server, prompts[1], temperature=0.7, max_tokens=12) for _ in range(4)])
    assert len({tuple(o.token_ids) for o in outputs}) > 1, "four samples at T=0.7 should not all coincide"
    for out in outputs:
        assert len(out.log_probs) == len(out.token_ids)
        expected, _ = forward_log_probs(reference, prompts[1], out.token_ids, temperature=0.7)
        torch.testing.assert_close(torch.tensor(out.log_probs), expected, rtol=0, atol=1e-4)


def test_log_probs_are_omitted_unless_asked(server, prompts):
    out = generate(server, prompts[0], logprobs=False, max_tokens=3)
    assert out.log_probs is None and len(out.token_ids) == 3


def test_stops_at_eos_from_the_generation_config_and_keeps_it(server, tiny_model_dir):
    out = generate(server, tiny_model_dir.stop_prompt, temperature=0.0)
    assert out.token_ids[-1] == tiny_model_dir.stop_token
    assert len(out.token_ids) == tiny_model_dir.stop_index + 1
    assert out.stop_reason == "completed"

    ignoring = generate(server, tiny_model_dir.stop_prompt, temperature=0.0, ignore_eos=True, max_tokens=10)
    assert len(ignoring.token_ids) == 10
    assert ignoring.token_ids[: len(out.token_ids)] == out.token_ids

    early = generate(server, tiny_model_dir.stop_prompt, temperature=0.0, stop_token_ids=[out.token_ids[1]])
    assert early.token_ids == out.token_ids[:2]


def test_max_tokens_is_respected_and_defaults_to_the_remaining_budget(server, tokenizer, prompts):
    assert len(generate(server, prompts[0], ignore_eos=True, max_tokens=5).token_ids) == 5
    assert len(generate(server, prompts[0], ignore_eos=True).token_ids) == RESPONSE_LENGTH
    # A prompt longer than prompt_length gets min(response_length, prompt_length + response_length - len).
    long_prompt = tokenizer.encode(" ".join(["word"] * 40))
    assert len(long_prompt) > PROMPT_LENGTH
    out = generate(server, long_prompt, ignore_eos=True)
    assert len(out.token_ids) == PROMPT_LENGTH + RESPONSE_LENGTH - len(long_prompt)


def test_tiny_top_p_and_top_k_one_sample_the_greedy_path(server, prompts):
    greedy = generate(server, prompts[2], temperature=0.0, ignore_eos=True, max_tokens=10)
    for params in ({"top_p": 1e-6}, {"top_k": 1}):
        out = generate(server, prompts[2], temperature=1.0, ignore_eos=True, max_tokens=10, **params)
        assert out.token_ids == greedy.token_ids, params
        # Under a one-token distribution each sampled token has probability 1.
        torch.testing.assert_close(torch.tensor(out.log_probs), torch.zeros(10), rtol=0, atol=1e-6)


def test_top_k_samples_among_the_k_most_likely_with_renormalised_log_probs(server, reference, prompts):
    outputs = ray.get(
        [submit(server, prompts[0], temperature=1.5, top_k=5, ignore_eos=True, max_tokens=12) for _ in range(3)]
    )
    for out in outputs:
        expected, top = forward_log_probs(reference, prompts[0], out.token_ids, temperature=1.5, top_k=5)
        assert (top == torch.tensor(out.token_ids)[:, None]).any(-1).all()
        torch.testing.assert_close(torch.tensor(out.log_probs), expected, rtol=0, atol=1e-4)


def test_adapter_weight_update_reaches_the_server(
    server, reference, tiny_model_dir, rollout_config, prompts, monkeypatch
):
    monkeypatch.setenv("RANK", "0")
    adapter = HFCPURolloutAdapter(
        config=rollout_config, model_config=HFModelConfig(path=str(tiny_model_dir.path)), device_mesh=None
    )
    original = {name: t.clone() for name, t in reference.state_dict().items()}
    before = generate(server, prompts[1], temperature=0.0, ignore_eos=True, max_tokens=8)

    torch.manual_seed(1)
    # bfloat16, as an FSDP actor with mixed precision sends them; the server casts to float32.
    perturbed = {name: (t + 0.5 * t.std() * torch.randn_like(t)).to(torch.bfloat16) for name, t in original.items()}
    trained = load_reference(tiny_model_dir.path)
    trained.load_state_dict(perturbed)
    try:
        asyncio.run(adapter.update_weights(iter(perturbed.items()), global_steps=7))
        after = generate(server, prompts[1], temperature=0.0, ignore_eos=True, max_tokens=8)
        assert after.extra_fields["global_steps"] == 7
        assert after.log_probs != before.log_probs
        assert (
            after.token_ids
            == trained.generate(torch.tensor([prompts[1]]), max_new_tokens=8, do_sample=False, eos_token_id=None)[
                0, len(prompts[1]) :
            ].tolist()
        )
        expected, _ = forward_log_probs(trained, prompts[1], after.token_ids)
        torch.testing.assert_close(torch.tensor(after.log_probs), expected, rtol=0, atol=1e-4)

        with pytest.raises(ValueError, match="not parameters of the rollout model"):
            asyncio.run(adapter.update_weights(iter([("_fsdp_wrapped_module.lm_head.weight", torch.zeros(1))])))
    finally:
        asyncio.run(adapter.update_weights(iter(original.items())))
    restored = generate(server, prompts[1], temperature=0.0, ignore_eos=True, max_tokens=8)
    assert restored.token_ids == before.token_ids


def test_abort_returns_partial_output_and_parks_or_rejects_later_requests(server, prompts):
    long = server.generate.remote(
        prompt_ids=prompts[0],
        sampling_params={"max_tokens": 480, "ignore_eos": True, "logprobs": True},
        request_id="long",
    )
    # Abort only once the request is decoding (480 tokens take about a second here).
    while not ray.get(server.__ray_call__.remote(lambda self: bool(self._running))):
        time.sleep(0.005)
    assert ray.get(server.abort_all_requests.remote())["request_ids"] == ["long"]
    out = ray.get(long)
    assert out.stop_reason == "aborted"
    assert 0 < len(out.token_ids) < 480 and len(out.log_probs) == len(out.token_ids)

    parked = submit(server, prompts[0], ignore_eos=True, max_tokens=3)
    ready, _ = ray.wait([parked], timeout=0.5)
    assert not ready, "a request arriving after an abort must wait for resume_generation"
    ray.get(server.resume_generation.remote())
    assert len(ray.get(parked).token_ids) == 3

    ray.get(server.abort_all_requests.remote(reject_request=True))
    refused = generate(server, prompts[0], max_tokens=3)
    assert refused.stop_reason == "aborted" and refused.token_ids == []
    ray.get(server.resume_generation.remote())
    assert len(generate(server, prompts[0], ignore_eos=True, max_tokens=3).token_ids) == 3


def test_control_methods_the_trainer_calls_leave_generation_working(server, prompts):
    before = generate(server, prompts[0], temperature=0.0, max_tokens=4)
    ray.get(
        [
            server.sleep.remote(),
            server.wake_up.remote(tags=["weights"]),
            server.wake_up.remote(),
            server.clear_kv_cache.remote(),
            server.release_kv_cache.remote(),
            server.resume_kv_cache.remote(),
            server.start_profile.remote(),
            server.stop_profile.remote(),
            server.set_global_steps.remote(3),
        ]
    )
    after = generate(server, prompts[0], temperature=0.0, max_tokens=4)
    assert after.token_ids == before.token_ids and after.extra_fields["global_steps"] == 3


def test_bad_requests_name_the_offending_option(server, prompts):
    with pytest.raises(ValueError, match="best_of"):
        generate(server, prompts[0], best_of=2)
    with pytest.raises(ValueError, match="n=2"):
        generate(server, prompts[0], n=2)
    with pytest.raises(ValueError, match="text-only"):
        ray.get(server.generate.remote(prompt_ids=prompts[0], sampling_params={}, request_id="mm", image_data=[1]))
