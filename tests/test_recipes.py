"""Every paper recipe (task x algorithm x model) composes with Hydra exactly as the launcher starts it and passes
verl's own config validation: ``validate_config`` as ``main_ppo`` runs it, the sections verl's workers turn into
dataclasses, and no key verl's ``ppo_trainer`` lacks (a misspelt key fails). Each carries the reference
hyper-parameters; CREDIT's options come from ``credit_defaults.yaml`` only. The compare and sweep plans share
data, seeds and budget.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf
from verl.trainer.ppo.utils import need_critic, need_reference_policy
from verl.utils.config import omega_conf_to_dataclass, validate_config

from credit_plugin.config import CONFIG_DIR, CreditConfig
from credit_plugin.scorers import check_options

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO / "recipes" / "paper"
# keys a recipe may add to verl's schema: the credit reward manager's scorer options, the launcher's Ray env
ALLOWED_NEW = ("reward.reward_kwargs.", "ray_kwargs.ray_init.runtime_env.")


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"paper_{name}", PAPER / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


launch = _load("launch")
report = _load("report")


def _compose(config_dir: Path, name: str, overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=str(config_dir), version_base=None):
        return compose(config_name=name, overrides=overrides)


def _keys(node, prefix: str = "") -> set[str]:
    if isinstance(node, dict):
        return set().union(*(_keys(value, f"{prefix}{key}.") for key, value in node.items())) | {prefix}
    return {prefix}


def _dataclass_sections(config: DictConfig) -> list[str]:
    """The sections verl's workers and trainer turn into dataclasses (``validate_config`` does the actor)."""
    sections = ["actor_rollout_ref.rollout", "actor_rollout_ref.rollout.checkpoint_engine"]
    if OmegaConf.select(config, "algorithm._target_"):
        sections.append("algorithm")
    return sections + (["critic"] if need_critic(config) else [])


def validate(config: DictConfig) -> None:
    """What ``main_ppo`` checks before starting Ray, plus every dataclass-backed section and the plugin's options."""
    validate_config(config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))
    for section in _dataclass_sections(config):
        omega_conf_to_dataclass(OmegaConf.select(config, section))
    CreditConfig.from_dict(config.credit)
    check_options(config.reward.get("reward_kwargs") or {}, where="reward.reward_kwargs")


@pytest.fixture(scope="module")
def schema_keys() -> set[str]:
    base = _compose(Path(CONFIG_DIR), "credit_trainer", [])
    return _keys(OmegaConf.to_container(base, resolve=False))


@pytest.fixture(scope="module")
def credit_defaults() -> dict:
    return OmegaConf.to_container(_compose(Path(CONFIG_DIR), "credit_trainer", []).credit)


def _launched(task: str, algo: str, model: str, tmp_path: Path, seed: int = 0) -> DictConfig:
    name = launch.run_name(task, algo, model, seed)
    overrides, env = launch.overrides(task, algo, model, seed, name, "group", tmp_path, steps=7, data_dir=tmp_path)
    assert env["VERL_FILE_LOGGER_PATH"] == str(tmp_path.resolve() / "group" / f"{name}.jsonl")
    return _compose(PAPER, task, overrides)


@pytest.mark.parametrize("model", launch.MODELS)
@pytest.mark.parametrize("algo", launch.ALGOS)
@pytest.mark.parametrize("task", launch.TASKS)
def test_recipe_composes_validates_and_has_reference_settings(
    task, algo, model, tmp_path, schema_keys, credit_defaults
):
    config = _launched(task, algo, model, tmp_path)
    validate(config)
    new = _keys(OmegaConf.to_container(config, resolve=False)) - schema_keys
    assert not [key for key in new if not key.startswith(ALLOWED_NEW)], "keys verl's ppo_trainer does not have"

    arr = config.actor_rollout_ref
    assert (config.data.train_batch_size, arr.rollout.n) == (32, 8)
    assert (config.data.max_prompt_length, config.data.max_response_length) == (2048, 8192)
    assert arr.actor.optim.lr == (1e-6 if task == "livecodebench" else 1e-5)
    assert arr.rollout.temperature == 1.0 and arr.rollout.name == "vllm" and arr.actor.strategy == "fsdp2"
    val = arr.rollout.val_kwargs
    assert (val.n, val.temperature, val.top_p, val.do_sample) == (16, 0.6, 0.95, True)
    assert arr.model.path == {"qwen3_8b": "Qwen/Qwen3-8B", "olmo3_7b_instruct": "allenai/Olmo-3-7B-Instruct"}[model]
    assert config.trainer.total_training_steps == 7
    assert config.data.train_files == str(tmp_path.resolve() / "train.parquet"), "absolute: read in a Ray actor"
    assert config.reward.reward_manager.name == "credit"

    assert config.algorithm.adv_estimator == algo
    assert config.trainer.v1.trainer_mode == ("sync" if algo == "grpo" else "credit")
    # SDPO as published (logit level, docs/method.md); CREDIT on the same loss; code: top-k 20, reverse KL
    logit = {"granularity": "logit", "topk": 100, "distillation_add_tail": True, "alpha": 0.5, "is_clip": 2.0}
    if task == "livecodebench":
        logit.update(topk=20, alpha=1.0)
    expected = {
        "grpo": credit_defaults,
        "sdpo": dict(credit_defaults, contrast_coef=0.0, teacher="ema", teacher_update_rate=0.05, **logit),
        "credit": dict(credit_defaults, **logit),
    }[algo]
    assert OmegaConf.to_container(config.credit) == expected, "CREDIT's options come from credit_defaults.yaml"
    if algo != "grpo":
        CreditConfig.from_dict(config.credit)  # the trainer's own validation accepts it
        assert (arr.actor.ppo_mini_batch_size, arr.actor.ppo_epochs) == (config.data.train_batch_size, 1), (
            "one update per step: the student's top-k of the old policy is the current policy's"
        )


def test_a_typo_in_a_recipe_fails_validation(tmp_path):
    copy = tmp_path / "paper"
    shutil.copytree(PAPER, copy, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    overlay = copy / "llm" / "qwen3_8b.yaml"
    overlay.write_text(overlay.read_text().replace("tensor_model_parallel_size", "tensor_model_paralel_size"))
    with pytest.raises(Exception, match="tensor_model_paralel_size"):
        validate(_compose(copy, "sciknoweval", []))
    with pytest.raises(Exception, match="ppo_mini_batch_sizee"):
        validate(_compose(PAPER, "toolalpaca", ["+actor_rollout_ref.actor.ppo_mini_batch_sizee=32"]))


def _runs(argv: list[str]):
    """The plan ``launch.py`` would run for ``argv`` (parsed by its own parser, nothing started)."""
    captured = []
    original = launch.launch
    launch.launch = lambda command, env, dry_run: captured.append((command, env))
    try:
        launch.main([*argv, "--dry-run"])
    finally:
        launch.launch = original
    return captured


def test_compare_runs_three_algorithms_on_same_data_seed_and_budget(tmp_path):
    runs = _runs(["compare", "--task", "toolalpaca", "--seed", "3", "--steps", "50", "--run-root", str(tmp_path)])
    assert len(runs) == 3
    hydra = [[arg for arg in command if "=" in arg] for command, _ in runs]
    algos = [next(a for a in h if a.startswith("algo=")) for h in hydra]
    assert algos == ["algo=grpo", "algo=sdpo", "algo=credit"]
    per_run = ("algo=", "trainer.experiment_name", "trainer.default_local_dir", "+ray")
    shared = [sorted(arg for arg in h if not arg.startswith(per_run)) for h in hydra]
    assert shared[0] == shared[1] == shared[2]
    assert {"data.seed=3", "actor_rollout_ref.rollout.seed=3", "trainer.total_training_steps=50"} <= set(shared[0])
    assert {env["WANDB_RUN_GROUP"] for _, env in runs} == {"toolalpaca-qwen3_8b-s3"}
    logs = [Path(env["VERL_FILE_LOGGER_PATH"]) for _, env in runs]
    assert len({log.parent for log in logs}) == 1 and [log.stem for log in logs] == [
        f"toolalpaca-qwen3_8b-{algo}-s3" for algo in launch.ALGOS
    ]
    config = _compose(PAPER, "toolalpaca", hydra[2])
    validate(config)
    assert config.trainer.experiment_name == "toolalpaca-qwen3_8b-credit-s3"


@pytest.mark.parametrize(
    ("argv", "override"),
    [
        (["compare"], "credit.contrast_coef=0.5"),
        (["sweep"], "credit.num_negatives=2"),
        (["run", "--algo", "grpo"], "algo=sdpo"),
    ],
)
def test_overrides_of_what_the_runs_vary_are_refused(argv, override, capsys):
    with pytest.raises(SystemExit):
        _runs([*argv, "--task", "sciknoweval", override])
    assert f"remove ['{override}']" in capsys.readouterr().err


def test_sweep_covers_lambda_by_k_and_each_point_validates(tmp_path):
    argv = ["sweep", "--task", "sciknoweval", "--model", "olmo3_7b_instruct", "--run-root", str(tmp_path)]
    runs = _runs([*argv, "--lambdas", "0", "0.5", "--ks", "1", "4"])
    names = [Path(env["VERL_FILE_LOGGER_PATH"]).stem for _, env in runs]
    assert names == [f"sciknoweval-olmo3_7b_instruct-credit-lam{lam}-k{k}-s0" for lam in ("0", "0.5") for k in (1, 4)]
    command = runs[-1][0]
    config = _compose(PAPER, "sciknoweval", [arg for arg in command if "=" in arg])
    validate(config)
    assert (config.credit.contrast_coef, config.credit.num_negatives) == (0.5, 4)


# ------------------------------------------------------------------ scripts/gpu_smoke.sh


@pytest.fixture(scope="module")
def gpu_smoke():
    spec = importlib.util.spec_from_file_location("gpu_smoke", REPO / "scripts" / "gpu_smoke.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_gpu_smoke_runs_compose_and_validate_for_one_gpu(gpu_smoke, tmp_path):
    runs = gpu_smoke.commands(tmp_path / "model", tmp_path / "t.parquet", tmp_path / "v.parquet", tmp_path, 2, [])
    assert list(runs) == ["grpo", "sdpo", "credit"]
    for algo, command in runs.items():
        assert command[command.index("--config-name") + 1] == "smoke"
        config = _compose(PAPER, "smoke", command[command.index("smoke") + 1 :])
        validate(config)
        assert config.trainer.n_gpus_per_node * config.trainer.nnodes == 1
        assert config.actor_rollout_ref.rollout.name == "vllm" and config.actor_rollout_ref.actor.strategy == "fsdp2"
        assert config.trainer.total_training_steps == 2 and config.algorithm.adv_estimator == algo
        assert config.actor_rollout_ref.model.path == str(tmp_path / "model")


def test_gpu_smoke_summary_gives_step_time_ratios_and_teacher_share(gpu_smoke, tmp_path):
    times = {"grpo": (30.0, 10.0, None), "sdpo": (35.0, 12.0, 3.0), "credit": (36.0, 13.2, 4.2)}
    logs = {}
    for algo, (first, last, teacher) in times.items():
        records = [
            {"timing_s/step": first},
            {"timing_s/step": last, **({"timing_s/teacher": teacher} if teacher else {})},
        ]
        logs[algo] = tmp_path / f"{algo}.jsonl"
        logs[algo].write_text("".join(json.dumps({"step": i + 1, "data": r}) + "\n" for i, r in enumerate(records)))
    text = gpu_smoke.summary(logs)
    assert "CREDIT/SDPO step time: 1.100" in text and "SDPO/GRPO step time: 1.200" in text
    assert "sdpo: teacher pass 25.0% of the step" in text and "credit: teacher pass 31.8% of the step" in text
