"""Every shipped recipe, checked as a GPU run would start it, without a GPU.

Each recipe under ``recipes/`` (paper x algorithm x model as ``launch.py`` starts it, the GPU smoke's runs, the
Megatron recipes, the tiny CPU recipe) is composed through Hydra with its own settings, resolved, and then goes
through what ``main_ppo`` does before the first step: verl's ``validate_config``, verl's own config dataclasses
for every section a worker instantiates (actor, ref, rollout, checkpoint engine, algorithm, critic: they assert
what the engines accept, e.g. ``McoreEngineConfig`` only bf16/fp16), the plugin's start-up checks
(``credit_plugin.trainer.check_start_up``: teacher kind against the engine, the EMA's storage dtype, Megatron
layouts) and the trainer's worker mapping, and the reward manager's option check. A recipe that could only fail
after its first step fails here. Not covered: ``actor_rollout_ref.model`` (verl's ``HFModelConfig`` downloads
the model's config) and what only a worker on a GPU checks.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf, open_dict
from verl.trainer.ppo.utils import need_critic, need_reference_policy
from verl.trainer.ppo.v1 import get_trainer_cls
from verl.utils.config import omega_conf_to_dataclass, validate_config

from credit_plugin.async_modes import COLOCATE_ASYNC, VERL_MODES
from credit_plugin.scorers import check_options
from credit_plugin.trainer import REF_TEACHERS, check_start_up

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(f"recipe_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


launch = _load(RECIPES / "paper" / "launch.py")
gpu_smoke = _load(REPO / "scripts" / "gpu_smoke.py")
smollm_bench = _load(REPO / "bench" / "smollm.py")


def _compose(config_dir: Path, name: str, overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=str(config_dir), version_base=None):
        config = compose(config_name=name, overrides=overrides)
    OmegaConf.resolve(config)
    return config


def _paper(task: str, algo: str, model: str, tmp: Path) -> DictConfig:
    name = launch.run_name(task, algo, model, 0)
    overrides, _ = launch.overrides(task, algo, model, 0, name, "group", tmp, data_dir=tmp)
    return _compose(RECIPES / "paper", task, overrides)


def _smoke(algo: str, tmp: Path) -> DictConfig:
    command = gpu_smoke.commands(tmp / "model", tmp / "t.parquet", tmp / "v.parquet", tmp, 2, [])[algo]
    return _compose(RECIPES / "paper", "smoke", command[command.index("smoke") + 1 :])


def _smollm(arm: str, tmp: Path) -> DictConfig:
    """An arm of the SmolLM2 tier on one GPU, as ``bench/smollm.py`` starts it through the demo launcher."""
    config, overrides = smollm_bench.run_overrides(arm, 1, smollm_bench.GPU_SETTING, "gpu")
    demo = smollm_bench.learn.load_demo()
    algo = smollm_bench.learn.VARIANTS[arm].algo
    command = demo.command(algo, tmp, tmp / "model", tmp / "t.parquet", tmp / "v.parquet", 30, overrides, config)
    return _compose(config[0], config[1], command[command.index(config[1]) + 1 :])


def _megatron(name: str, teacher: str | None, tmp: Path, extra: tuple[str, ...] = ()) -> DictConfig:
    overrides = [f"data.train_files={tmp / 't.parquet'}", f"data.val_files={tmp / 'v.parquet'}", *extra]
    return _compose(RECIPES / "megatron", name, overrides + ([f"credit.teacher={teacher}"] if teacher else []))


def _tiny_cpu(tmp: Path) -> DictConfig:
    return _compose(RECIPES / "tiny_cpu", "credit", [f"data.train_files={tmp / 't.parquet'}"])


def _ref_as_the_worker_reads_it(config: DictConfig) -> DictConfig:
    """The ref section as verl 0.9.1's ``ActorRolloutRefWorker.init_model`` turns it into an ``ActorConfig`` (its
    engine config included): the ``log_prob_*`` keys become the actor's names, the mini-batch the actor's."""
    ref = OmegaConf.to_container(config.actor_rollout_ref.ref)
    ref["ppo_mini_batch_size"] = config.actor_rollout_ref.actor.ppo_mini_batch_size
    ref["ppo_micro_batch_size"] = ref.pop("log_prob_micro_batch_size", None)
    ref["ppo_micro_batch_size_per_gpu"] = ref.pop("log_prob_micro_batch_size_per_gpu", None)
    ref["use_dynamic_bsz"] = ref.pop("log_prob_use_dynamic_bsz", False)
    ref["ppo_max_token_len_per_gpu"] = ref.pop("log_prob_max_token_len_per_gpu", None)
    return OmegaConf.create(ref)


def start_up(config: DictConfig) -> None:
    """What a run checks before its first step (see the module docstring); raises what the run would raise."""
    credit_mode = config.trainer.v1.trainer_mode in VERL_MODES
    validate_config(config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))
    arr = config.actor_rollout_ref
    sections = [arr.rollout, arr.rollout.checkpoint_engine]
    teacher = config.credit.teacher if credit_mode else None
    if need_reference_policy(config) or teacher in REF_TEACHERS:
        sections.append(_ref_as_the_worker_reads_it(config))
    if OmegaConf.select(config, "algorithm._target_"):
        sections.append(config.algorithm)
    if need_critic(config):
        sections.append(config.critic)
    for section in sections:
        omega_conf_to_dataclass(section)
    check_options(config.reward.get("reward_kwargs") or {}, where="reward.reward_kwargs")
    if credit_mode:
        cls = get_trainer_cls(config.trainer.v1.trainer_mode)
        trainer = cls.__new__(cls)
        trainer.config = config
        trainer.credit = check_start_up(config)
        trainer._init_resource_pool_mgr()  # the teacher's engine and worker (no Ray actor is started)


PAPER_CASES = [(t, a, m) for t in launch.TASKS for a in launch.ALGOS for m in launch.MODELS]
MEGATRON_NAMES = sorted(path.stem for path in (RECIPES / "megatron").glob("credit_*.yaml"))


def test_every_recipe_file_is_started_here():
    """A new top-level recipe (a YAML with its own Hydra search path) must be added to this module."""
    entry_points = {
        path.relative_to(RECIPES).as_posix() for path in RECIPES.rglob("*.yaml") if "searchpath" in path.read_text()
    }
    covered = {f"paper/{task}.yaml" for task in launch.TASKS} | {"paper/smoke.yaml", "tiny_cpu/credit.yaml"}
    covered |= {"smollm/gpu.yaml"}
    covered |= {f"megatron/{name}.yaml" for name in MEGATRON_NAMES}
    assert entry_points == covered


@pytest.mark.parametrize(("task", "algo", "model"), PAPER_CASES)
def test_paper_recipe_starts(task, algo, model, tmp_path):
    config = _paper(task, algo, model, tmp_path)
    assert config.actor_rollout_ref.actor.strategy == "fsdp2" and config.actor_rollout_ref.rollout.name == "vllm"
    start_up(config)


@pytest.mark.parametrize("model", launch.MODELS)
@pytest.mark.parametrize("task", launch.TASKS)
def test_paper_recipe_starts_in_colocate_async_mode(task, model, tmp_path):
    """``recipes/paper/mode/colocate_async.yaml`` over the paper's CREDIT run, as ``launch.py ... -- +mode=...``."""
    name = launch.run_name(task, "credit", model, 0)
    overrides, _ = launch.overrides(task, "credit", model, 0, name, "group", tmp_path, data_dir=tmp_path)
    config = _compose(RECIPES / "paper", task, [*overrides, "+mode=colocate_async"])
    assert config.trainer.v1.trainer_mode == COLOCATE_ASYNC and config.credit.granularity == "logit"
    start_up(config)
    config.algorithm.rollout_correction.rollout_is = "token"  # not applied by the logit-level loss: refused
    with pytest.raises(ValueError, match="algorithm.rollout_correction.rollout_is=token"):
        start_up(config)


@pytest.mark.parametrize("algo", list(gpu_smoke.ALGOS))
def test_gpu_smoke_run_starts(algo, tmp_path):
    start_up(_smoke(algo, tmp_path))


@pytest.mark.parametrize("arm", smollm_bench.ARMS)
def test_smollm_tier_gpu_arm_starts(arm, tmp_path):
    config = _smollm(arm, tmp_path)
    assert config.actor_rollout_ref.rollout.name == "vllm" and config.trainer.n_gpus_per_node == 1
    assert config.reward.custom_reward_function.path == "pkg://credit_plugin.dev.smollm"
    start_up(config)


@pytest.mark.parametrize("name", MEGATRON_NAMES)
def test_megatron_recipe_starts_as_shipped(name, tmp_path):
    # verl's Megatron ref is bf16; the worker keeps the EMA state in an fp32 copy of each shard (issue 18)
    config = _megatron(name, None, tmp_path)
    assert config.credit.teacher == "ema" and config.actor_rollout_ref.ref.megatron.dtype == "bfloat16"
    start_up(config)


@pytest.mark.parametrize("teacher", ["frozen", "trust_region", "current"])
@pytest.mark.parametrize("name", MEGATRON_NAMES)
def test_megatron_recipe_starts_with_the_other_teachers(name, teacher, tmp_path):
    start_up(_megatron(name, teacher, tmp_path))


@pytest.mark.parametrize("teacher", ["ema", "trust_region"])
@pytest.mark.parametrize("name", MEGATRON_NAMES)
def test_megatron_recipe_starts_at_logit_level(name, teacher, tmp_path):
    # the logit level runs on Megatron's tensor-parallel vocabulary shards (credit_plugin.logit_megatron)
    start_up(_megatron(name, teacher, tmp_path, ("credit.granularity=logit", "credit.topk=100")))


def test_tiny_cpu_recipe_starts(tmp_path):
    start_up(_tiny_cpu(tmp_path))


def test_the_check_refuses_what_a_gpu_run_would_refuse(tmp_path):
    """The check is not vacuous: verl's engine dataclass, the plugin's teacher checks and verl's validation each
    refuse a recipe changed in one place."""
    config = _megatron(MEGATRON_NAMES[0], "frozen", tmp_path)
    config.actor_rollout_ref.ref.megatron.dtype = "float32"  # what the CPU mend lets through
    with pytest.raises(Exception, match="dtype float32 not supported"):  # hydra wraps the assertion
        start_up(config)
    config = _megatron(MEGATRON_NAMES[0], "trust_region", tmp_path)
    config.actor_rollout_ref.actor.megatron.pipeline_model_parallel_size = 2
    config.actor_rollout_ref.ref.megatron.pipeline_model_parallel_size = 2
    with pytest.raises(ValueError, match="pipeline_model_parallel_size=1"):
        start_up(config)
    config = _megatron(MEGATRON_NAMES[0], "ema", tmp_path, ("credit.granularity=logit",))
    config.actor_rollout_ref.actor.megatron.context_parallel_size = 2
    with pytest.raises(ValueError, match="granularity=logit does not support .*context_parallel_size > 1"):
        start_up(config)
    config = _paper("sciknoweval", "credit", launch.MODELS[0], tmp_path)
    config.actor_rollout_ref.ref.fsdp_config.model_dtype = "bf16"
    with pytest.raises(ValueError, match="ref.fsdp_config.model_dtype=fp32"):
        start_up(config)
    config = _paper("toolalpaca", "grpo", launch.MODELS[0], tmp_path)
    with open_dict(config):
        config.actor_rollout_ref.rollout.gpu_memory_utilisation = (
            0.5  # misspelt: verl's RolloutConfig has no such field
        )
    with pytest.raises(Exception, match="gpu_memory_utilisation"):
        start_up(config)
