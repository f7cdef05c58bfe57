"""Bad input, damaged files, interruptions, a second process, W&B out of reach.

Each case runs the real entry points (`run.py` in a subprocess, or the composed config
through `loop.run`) on the tiny model. Damaged files are made by cutting real files of one
finished run (the session's `finished_run`, copied per test): a damaged stage must be
redone from its inputs, with a warning naming the file, and come out as before; a damaged
input that cannot be rebuilt must stop with a message naming it and what to do.
"""

import importlib.util
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.time_to_error import CASES, SLIDING, sliding_window_model
from mfsi import loop, resume, rundir
from mfsi.errors import ConfigError, DataError, MfsiError

ROOT = Path(__file__).resolve().parents[1]
TINY = ["logger=none", "task.n_train=4", "task.n_eval=2"]


def cli(*args, cwd, env=None, timeout=300):
    """python run.py <args> in cwd, with env's variables set (None: unset): the completed
    process, stdout (our log lines) and stderr (progress bars, library output) together."""
    environment = {**os.environ, **(env or {})}
    out = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        env={k: v for k, v in environment.items() if v is not None},
    )
    return out


def cut(path: Path) -> None:
    """Keep the first half of a file's bytes (a copy or write cut short)."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def drop_half_the_lines(path: Path) -> None:
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[: len(lines) // 2]))


def empty(path: Path) -> None:
    path.write_text("")


@pytest.fixture
def run_copy(finished_run, tmp_path):
    """A copy of the finished run, to damage."""
    copy = tmp_path / "run"
    shutil.copytree(finished_run[0], copy, ignore=shutil.ignore_patterns(".lock"))
    return copy


# --- bad values: stopped before the run directory exists or a model loads -----------------


@pytest.fixture(scope="module")
def sliding_model(tmp_path_factory):
    return sliding_window_model(tmp_path_factory.mktemp("sliding"))


@pytest.mark.parametrize("overrides,message", CASES, ids=[o for o, _ in CASES])
def test_bad_values_stop_before_the_run_directory_exists(make, sliding_model, tmp_path, overrides, message):
    """Every case of experiments/time_to_error.py (which times them through run.py)."""
    run_dir = tmp_path / "run"
    with pytest.raises(ConfigError) as error:
        loop.run(make(*overrides.replace(SLIDING, str(sliding_model)).split()), run_dir)
    assert message in str(error.value)
    assert not run_dir.exists()  # no lock, no config.yaml: nothing to refuse a corrected value later


def test_backend_vllm_without_vllm_stops_saying_why(make, tmp_path, monkeypatch):
    """A virtualenv set up with VLLM=none (or on macOS) has no vLLM: the run stops before it starts."""
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else find_spec(name, *a)
    )
    with pytest.raises(ConfigError, match="vLLM is not installed .*VLLM=none"):
        loop.run(make("generation.backend=vllm"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "override,message",
    [
        (
            "generation.batch_size=0",
            "generation.batch_size=0: expected an integer >= 1",
        ),  # read from the config
        ("evaluation.embedder=/nonexistent", "evaluation.embedder='/nonexistent'"),  # needs transformers
    ],
)
def test_cli_bad_value_exits_2_with_one_line_and_leaves_no_directory(tmp_path, override, message):
    out = cli(override, *TINY, cwd=tmp_path)
    assert out.returncode == 2, out.stdout
    assert message in out.stdout and "Traceback" not in out.stdout
    assert list(tmp_path.iterdir()) == []


def test_cli_binary_data_file_exits_2_naming_it_and_leaves_no_directory(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_bytes(b"\x1f\x8b\x08\x00 gzip, not JSON lines")
    out = cli("task=gsm", f"task.path={data}", *TINY, cwd=tmp_path)
    assert out.returncode == 2, out.stdout
    assert f"{data}: a binary file (it holds NUL bytes), not text" in out.stdout
    assert "Traceback" not in out.stdout and list(tmp_path.iterdir()) == [data]


def test_a_society_whose_prompts_cannot_fit_is_warned_about_once_before_any_debate(make, tmp_path, caplog):
    """agents=1000 on the tiny model: every round-2 prompt holds 999 other answers."""
    with caplog.at_level(logging.WARNING), pytest.MonkeyPatch.context() as patch:
        patch.setattr(loop, "run_debate", lambda *a, **k: (_ for _ in ()).throw(Stop()))
        with pytest.raises(Stop):
            loop.run(make("agents=1000", "task.n_eval=1"), tmp_path)
    [warning] = [r.getMessage() for r in caplog.records if "round-2 prompt" in r.getMessage()]
    assert warning.startswith("agents=1000: each round-2 prompt takes at least ")
    assert "(the other 999 agents' answers, even if empty) where the context leaves 912 (model" in warning
    assert "model.context_length 1024 - generation.max_new_tokens 112): at least 9" in warning
    caplog.clear()
    with caplog.at_level(logging.WARNING), pytest.MonkeyPatch.context() as patch:
        patch.setattr(loop, "run_debate", lambda *a, **k: (_ for _ in ()).throw(Stop()))
        with pytest.raises(Stop):
            loop.run(make("task.n_eval=1"), tmp_path / "three")  # 3 agents: no warning
    assert "round-2 prompt" not in caplog.text


class Stop(Exception):
    """Ends a run at a chosen point."""


def test_damaged_base_model_weights_stop_naming_them(make, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(ROOT / "models" / "tiny-arith", model)
    cut(model / "model.safetensors")
    with pytest.raises(ConfigError, match=f"weights in {model} are damaged.*download or copy them again"):
        loop.run(make(f"model.path={model}"), tmp_path / "run")


def test_a_run_that_failed_early_takes_the_corrected_value(make, tmp_path, monkeypatch):
    """A run stopped before any stage finished (here: an error in its first debate) leaves
    config.yaml behind; the corrected command must not be refused as a changed config."""
    first = ("method=base", "task.n_eval=2", "generation.temperature=0")
    with monkeypatch.context() as patch:
        patch.setattr(
            loop, "run_debate", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("out of memory"))
        )
        with pytest.raises(RuntimeError):
            loop.run(make(*first), tmp_path)
    assert (tmp_path / "config.yaml").exists() and not list(tmp_path.glob("iter_*/*.done.json"))
    loop.run(make(*first[:2], "task.n_eval=3"), tmp_path)  # task.n_eval is not resumable
    history = rundir.read_jsonl(tmp_path / resume.HISTORY)
    assert [h["changed"] for h in history] == [
        {},
        {"generation.temperature": [0.0, 1.0], "task.n_eval": [2, 3]},
    ]
    assert len(rundir.read_json(tmp_path / "splits.json")["eval"]) == 3


# --- damaged files of a finished run --------------------------------------------------------

REBUILT = [  # (file, how it is damaged): each is redone from its stage's inputs
    ("iter_1/adapters/gen0/adapter_model.safetensors", cut),
    ("iter_1/adapters/critic1/adapter_config.json", cut),
    ("iter_1/training/gen2.json", cut),
    ("iter_1/debate_eval.jsonl", drop_half_the_lines),
    ("iter_0/debate_eval.stats.json", cut),
    ("iter_1/data/sizes.json", cut),
    ("iter_1/data/gen1.jsonl", drop_half_the_lines),
    ("iter_0/debate_train.done.json", cut),
    ("splits.json", cut),
    ("metrics.jsonl", cut),
    ("config.yaml", empty),
]


def test_damaged_files_are_rebuilt_with_a_warning_naming_each(finished_run, run_copy, make, snapshot, caplog):
    reference, _ = finished_run
    for name, damage in REBUILT:
        damage(run_copy / name)
    with caplog.at_level(logging.WARNING):
        loop.run(make(), run_copy)
    warnings = "\n".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    for name, _ in REBUILT:
        assert str(run_copy / name) in warnings, name
    assert snapshot(run_copy) == snapshot(reference)
    assert rundir.read_json(run_copy / "iter_1/data.done.json") == rundir.read_json(
        reference / "iter_1/data.done.json"
    )


def test_a_stage_whose_input_was_redone_differently_is_redone(run_copy, make, caplog):
    data = run_copy / "iter_1/data/gen0.jsonl"
    examples = rundir.read_jsonl(data)
    rundir.write_jsonl(data, examples[:1])  # as if selection had been redone with other results
    rundir.seal(run_copy / "iter_1/data.done.json", [run_copy / "iter_1/data"], [])
    with caplog.at_level(logging.WARNING):
        loop.run(make(), run_copy)
    assert f"its input {data} changed" in caplog.text
    assert rundir.read_json(run_copy / "iter_1/training/gen0.json")["n_examples"] == 1


def test_a_run_whose_config_is_lost_is_refused_not_adopted(run_copy, make):
    """Without config.yaml and its history nothing says what made the finished stages: a
    resume with other settings (here 2 agents where 3 debated) would label them wrongly."""
    empty(run_copy / "config.yaml")
    (run_copy / resume.HISTORY).unlink()
    with pytest.raises(
        DataError, match=f"{run_copy / 'config.yaml'} is damaged.*restore it.*new run directory"
    ):
        loop.run(make("agents=2"), run_copy)
    (run_copy / "config.yaml").unlink()
    with pytest.raises(DataError, match=f"{run_copy} holds finished stages but neither config.yaml nor"):
        loop.run(make("agents=2"), run_copy)


def test_a_resume_with_changed_data_stops_naming_the_file(make, tmp_path, caplog):
    """Question ids are line numbers: a data file changed under the same task.path would give
    the finished stages and the new ones other questions under the same ids."""
    shutil.copytree(ROOT / "tests/fixtures/gsm", tmp_path / "gsm")
    data = tmp_path / "gsm" / "test.jsonl"
    cfg = make("task=gsm", f"task.path={tmp_path / 'gsm'}", "method=base", "task.n_eval=2", "task.n_train=0")
    run_dir = tmp_path / "run"
    loop.run(cfg, run_dir)
    recorded = rundir.read_json(run_dir / "splits.json")["data"]
    assert set(recorded) == {str(tmp_path / "gsm" / "train.jsonl"), str(data)}
    assert recorded[str(data)] == rundir.describe(data)

    splits = rundir.read_json(run_dir / "splits.json")
    rundir.write_json(run_dir / "splits.json", {k: v for k, v in splits.items() if k != "data"})
    loop.run(cfg, run_dir)  # a run directory made before the data was recorded: adopted
    assert rundir.read_json(run_dir / "splits.json") == splits

    lines = data.read_text().splitlines(keepends=True)
    data.write_text("".join([lines[1], lines[0], *lines[2:]]))  # the same questions, other ids
    with pytest.raises(DataError, match=f"data changed since {run_dir} was made: {data} "):
        loop.run(cfg, run_dir)
    assert rundir.read_json(run_dir / "splits.json") == splits  # nothing rewritten


def test_undecodable_run_files_are_named_and_the_run_resumes(run_copy, make, caplog):
    """Binary or non-UTF-8 bookkeeping is named and left out; what it held is rebuilt."""
    (run_copy / resume.HISTORY).write_bytes(b"\x00\x01binary")
    (run_copy / "metrics.jsonl").write_bytes(b"\xff\xfe not UTF-8\n")
    (run_copy / ".lock").write_bytes(b"\xff\x00")
    with caplog.at_level(logging.WARNING):
        summary = loop.run(make(), run_copy)
    assert f"{run_copy / resume.HISTORY}: a binary file (it holds NUL bytes), not text" in caplog.text
    assert f"{run_copy / 'metrics.jsonl'}:1: not UTF-8 text (byte 0xff): left out" in caplog.text
    assert summary["final"]["iteration"] == 1
    assert [r["iteration"] for r in rundir.read_jsonl(run_copy / "metrics.jsonl")] == [0, 1]
    assert len(rundir.read_jsonl(run_copy / resume.HISTORY)) == 1  # a new history starts


def test_each_start_adds_to_the_config_history(run_copy, make):
    before = rundir.read_jsonl(run_copy / resume.HISTORY)
    loop.run(make("generation.batch_size=5"), run_copy)  # resumable: changes no finished stage
    history = rundir.read_jsonl(run_copy / resume.HISTORY)
    assert history[: len(before)] == before  # the record of what made the finished stages stays
    assert history[-1]["changed"] == {"generation.batch_size": [64, 5]}
    assert history[-1]["config"]["generation"]["batch_size"] == 5
    assert "batch_size: 5" in (run_copy / "config.yaml").read_text()


WRITE = """import sys
from pathlib import Path
import matplotlib.pyplot as plt
from mfsi import plots, rundir
rundir.write_json(Path(sys.argv[1]) / "a.json", {})
plots.save(plt.figure(), Path(sys.argv[1]) / "a.png")
"""


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_result_files_get_the_mode_the_umask_gives(tmp_path, umask):
    """Atomic writes go through mkstemp, which makes 0600: results hidden from the group."""
    subprocess.run(
        [sys.executable, "-c", WRITE, str(tmp_path)], cwd=ROOT, check=True, preexec_fn=lambda: os.umask(umask)
    )
    assert {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()} == {
        "a.json": 0o666 & ~umask,
        "a.png": 0o666 & ~umask,
    }


def test_stage_markers_name_what_is_wrong(tmp_path):
    out, source = tmp_path / "out.jsonl", tmp_path / "in.jsonl"
    rundir.write_jsonl(out, [{"a": 1}, {"a": 2}])
    rundir.write_jsonl(source, [{"b": 1}])
    marker = rundir.done_marker(out)
    rundir.seal(marker, [out], [source])
    assert rundir.damage(marker) is None
    drop_half_the_lines(out)
    assert rundir.damage(marker) == f"{out}: 1 records where 2 were written"
    out.unlink()
    assert rundir.damage(marker) == f"{out}: missing"
    rundir.write_jsonl(out, [{"a": 1}, {"a": 2}])
    rundir.write_jsonl(source, [{"b": 2}])
    assert rundir.damage(marker) == f"{marker}: its input {source} changed since (that stage was redone)"
    cut(marker)
    assert rundir.damage(marker) == f"{marker}: the stage's done marker is damaged"


# --- the lock ---------------------------------------------------------------------------------

HOLD = """import sys, time
from mfsi import rundir
with rundir.lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(600)
"""


def test_a_second_process_stops_at_once_and_a_dead_holder_is_taken_over(run_copy, make, caplog):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run_copy)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(MfsiError, match=f"{run_copy} is in use by process {holder.pid} on "):
            loop.run(make(), run_copy)
    finally:
        holder.kill()  # SIGKILL: no chance to release the lock
        holder.wait()
    with caplog.at_level(logging.WARNING):
        loop.run(make(), run_copy)
    assert f"taking over from process {holder.pid}" in caplog.text
    assert (run_copy / ".lock").read_text() == ""  # released


# --- W&B out of reach, and a quiet console --------------------------------------------------


def test_unreachable_wandb_falls_back_to_offline_and_the_console_stays_quiet(tmp_path):
    """An API key and a server that refuses connections: W&B gives up after
    logger.init_timeout and the run (which finetunes, where Lightning talks most) goes on."""
    env = {"WANDB_MODE": None, "WANDB_BASE_URL": "http://127.0.0.1:9", "WANDB_API_KEY": "x" * 40}
    args = ["logger=wandb", "logger.init_timeout=5", "method=single_agent_ft", "agents=1", "debate.rounds=1"]
    out = cli(*args, *TINY[1:], "iterations=1", "finetune.epochs=1", cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stdout
    assert "W&B could not start online" in out.stdout
    folder = Path(out.stdout.split("upload later with: wandb sync ")[1].split()[0])
    assert folder.name.startswith("offline-run-") and folder.is_dir()
    for chatter in ("Tip:", "GPU available", "Warning", "warnings.warn", "Loading weights"):
        assert chatter not in out.stdout, chatter


def test_v_shows_everything(tmp_path):
    out = cli("-v", "--cfg", "job", cwd=tmp_path)
    assert out.returncode == 0 and "verbose: true" in out.stdout
