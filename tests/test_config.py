"""Config composition: every task x model, methods, the multirun grid, typos and ranges."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from experiments.time_to_error import HYDRA_CASES
from mfsi.config import register, validate
from mfsi.errors import ConfigError

ROOT = Path(__file__).parents[1]
TASKS = sorted(p.stem for p in (ROOT / "conf" / "task").glob("*.yaml"))
MODELS = sorted(p.stem for p in (ROOT / "conf" / "model").glob("*.yaml"))
METHODS = sorted(p.stem for p in (ROOT / "conf" / "method").glob("*.yaml"))


def make(*overrides):
    register()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def test_groups_exist():
    assert set(TASKS) == {"arithmetic", "gsm", "math"}
    assert {"tiny", "phi3", "mistral", "llama3", "qwen"} <= set(MODELS)
    assert {"multiagent_ft", "debate", "majority", "base", "single_agent_ft", "majority_ft", "star"} <= set(
        METHODS
    )


def test_defaults():
    cfg = make()
    assert (cfg.task.name, cfg.model.name, cfg.method.name, cfg.logger.name) == (
        "arithmetic",
        "tiny",
        "multiagent_ft",
        "wandb",
    )
    assert (cfg.agents, cfg.debate.rounds, cfg.task.n_train, cfg.task.n_eval) == (3, 2, 500, 500)
    assert cfg.debate.summarize is False  # the tiny model cannot summarise: visible here
    validate(cfg)


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("model", MODELS)
def test_every_task_and_model_composes(task, model):
    api = model == "gpt35"  # generation only: no finetuning method
    method = ["method=debate"] if api else []
    path = ["model.path=org/some-model"] if model == "hf" else []  # hf has no default model
    cfg = make(f"task={task}", f"model={model}", "agents=5", "debate.rounds=3", "seed=1", *method, *path)
    assert (cfg.task.name, cfg.model.name, cfg.agents, cfg.debate.rounds) == (task, model, 5, 3)
    assert cfg.task.seed == 1  # splits follow the run seed
    validate(cfg)
    OmegaConf.to_container(cfg, resolve=True)
    if model != "tiny":
        assert cfg.model.quantization == ("none" if api else "nf4") and cfg.debate.summarize is True


def test_a_preset_that_needs_a_value_names_the_key():
    """model=hf has no model to default to: not the tiny model under the label hf."""
    with pytest.raises(ConfigError, match=r"model\.path has no value .* pass model\.path=<value>"):
        validate(make("model=hf"))


@pytest.mark.parametrize("method", METHODS)
def test_every_method_composes(method):
    cfg = make(f"method={method}")
    assert cfg.method.name == method
    validate(cfg)


def test_method_presets_set_their_shape():
    assert (make("method=base").agents, make("method=base").debate.rounds) == (1, 1)
    assert make("method=majority").debate.rounds == 1 and make("method=majority").iterations == 0
    assert make("method=single_agent_ft").method.shared is True
    assert make("method=multiagent_ft", "method.train_critics=false").method.train_critics is False


@pytest.mark.parametrize(
    "override", ["agentz=3", "agents=three", "debate.roundz=2", "task=chess", "iterations=1.5"]
)
def test_typos_fail_at_composition(override):
    with pytest.raises(ConfigCompositionException):
        make(override)


@pytest.mark.parametrize(
    "override,key",
    [
        ("agents=0", "agents"),
        ("debate.rounds=0", "debate.rounds"),
        ("iterations=-1", "iterations"),
        ("finetune.critic_weight=1.5", "finetune.critic_weight"),
        ("model.quantization=nf5", "model.quantization"),
        ("finetune.init=scratch", "finetune.init"),
        ("debate.style=hostile", "debate.style"),
        ("generation.backend=tgi", "generation.backend"),
        ("generation.vllm_release=nap", "generation.vllm_release"),
        ("generation.vllm_memory_utilization=1.5", "generation.vllm_memory_utilization"),
        ("generation.served_adapters=gen", "generation.served_adapters"),
        ("generation.concurrency=0", "generation.concurrency"),
        ("generation.retries=-1", "generation.retries"),
        ("debate.share=thoughts", "debate.share"),
        ("generation.max_reasoning_tokens=0", "generation.max_reasoning_tokens"),
        ("generation.max_reasoning_tokens=112", "generation.max_reasoning_tokens"),  # = max_new_tokens
        ("generation.max_reasoning_tokens=64 model=gpt35 method=debate", "generation.max_reasoning_tokens"),
    ],
)
def test_out_of_range_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(make(*override.split()))


def test_template_arguments_are_a_mapping_given_key_by_key():
    cfg = make("+model.chat_template_kwargs.enable_thinking=false")
    assert (
        cfg.model.chat_template_kwargs == {"enable_thinking": False}
        and make().model.chat_template_kwargs == {}
    )
    validate(make("generation.max_reasoning_tokens=64"))


def test_multirun_grid_composes_four_jobs():
    overrides = OverridesParser.create().parse_overrides(["agents=1,3", "debate.rounds=1,2"])
    [jobs] = BasicSweeper.split_arguments(overrides, max_batch_size=None)
    shapes = {(make(*job).agents, make(*job).debate.rounds) for job in jobs}
    assert shapes == {(1, 1), (1, 2), (3, 1), (3, 2)}


def test_sweep_yaml_is_a_wandb_sweep_over_run_py():
    sweep = yaml.safe_load((ROOT / "sweep.yaml").read_text())
    assert sweep["program"] == "run.py" and "${args_no_hyphens}" in sweep["command"]
    assert sweep["method"] in {"grid", "random", "bayes"}
    assert {"agents", "debate.rounds", "iterations"} <= set(sweep["parameters"])
    for key, spec in sweep["parameters"].items():
        for value in spec.get("values", [spec.get("value")]):
            make(f"{key}={value}")  # every value in the sweep composes


def run_py(*args, cwd):
    return subprocess.run(
        [sys.executable, str(ROOT / "run.py"), *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_cli_prints_the_composed_config(tmp_path):
    out = run_py("task=math", "agents=3", "--cfg", "job", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    printed = yaml.safe_load(out.stdout)
    assert printed["task"]["name"] == "math" and printed["agents"] == 3


@pytest.mark.parametrize("override,message", HYDRA_CASES, ids=[o for o, _ in HYDRA_CASES])
def test_cli_hydra_errors_exit_2_with_hydras_message(tmp_path, override, message):
    """Hydra's own errors (composition, the run directory) are bad input too: exit status 2 as
    for every other, not Hydra's 1, and no traceback (experiments/time_to_error.py times them)."""
    out = run_py(override, cwd=tmp_path)
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr
    assert list(tmp_path.iterdir()) == []


def test_cli_bad_data_exits_2_and_writes_nothing(tmp_path):
    out = run_py("task=gsm", "task.path=/no/such/dir", "logger=none", cwd=tmp_path)
    assert out.returncode == 2
    assert "task.path='/no/such/dir' does not exist" in out.stdout + out.stderr
    assert list(tmp_path.iterdir()) == []


EXPERIMENTS = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))
ABLATIONS = sorted(p.stem for p in (ROOT / "conf" / "ablation").glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_preset_composes_with_each_of_its_sweep_values(experiment):
    register()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        hydra_cfg = compose("config", overrides=[f"+experiment={experiment}"], return_hydra_config=True)
    params = hydra_cfg.hydra.sweeper.params or {}
    jobs = [[f"{key}={value}" for key, value in zip(params, combo)] for combo in _grid(params)]
    for job in jobs or [[]]:
        cfg = make(f"+experiment={experiment}", *job)
        validate(cfg)
        OmegaConf.to_container(cfg, resolve=True)


def _grid(params):
    import itertools

    return itertools.product(*(str(v).split(",") for v in params.values())) if params else []


@pytest.mark.parametrize("ablation", ABLATIONS)
def test_ablations_set_their_variant_label(ablation):
    cfg = make(f"+ablation={ablation}")
    assert cfg.variant == ("multiagent_ft" if ablation == "full" else ablation)
    validate(cfg)


def test_ablation_shapes():
    assert make("+ablation=no_critics").method.train_critics is False
    assert make("+ablation=single_agent_ft").method.shared is True
    no_debate = make("+ablation=single_agent_ft_no_debate")
    assert (no_debate.evaluation.agents, no_debate.evaluation.rounds, no_debate.debate.rounds) == (1, 1, 2)
    unique_id = make("+ablation=unique_id")
    assert (unique_id.method.selection, unique_id.method.shared, unique_id.debate.agent_ids) == (
        "single_agent",
        True,
        True,
    )
    assert make("+ablation=cooperative").debate.style == "cooperative"
    assert (make().debate.style, make().debate.agent_ids) == ("critical", False)
    # the Table 2 preset sweeps both
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        hydra_cfg = compose("config", overrides=["+experiment=table2"], return_hydra_config=True)
    assert {"unique_id", "cooperative"} <= set(hydra_cfg.hydra.sweeper.params["+ablation"].split(","))
    transfer = make("+experiment=transfer", "task=arithmetic")
    assert (transfer.task.name, transfer.eval_task.name, transfer.variant) == (
        "arithmetic",
        "gsm",
        "multiagent_ft_to_gsm",
    )
