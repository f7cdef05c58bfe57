"""SIGTERM and Ctrl-C (SIGINT) wherever they come: one line saying what they interrupted and the
command that resumes, exit status 143 or 130, and a run directory that resumes to the same files.

The process's exit status is the behaviour, so the runs are real `python run.py` processes,
signalled when their log says they reached the point under test; the cheaper cases call the
entry points in process with the signal sent from inside the stage.
"""

import logging
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SMALL

from mfsi import console, diversity, loop, report, rundir, training
from mfsi.console import Stopped

ROOT = Path(__file__).resolve().parents[1]
# One thread in the runs here and in process (the one_thread fixture): tiny matrices are
# several times faster so on busy cores, and the in-process reference computes alike.
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}
pytestmark = pytest.mark.usefixtures("one_thread")


def signalled(args: list[str], cwd: Path, when: str, signum: int) -> tuple[int, str]:
    """Run `python run.py <args>`, send signum once a line of its output holds `when`; its exit
    status and output (stdout and stderr)."""
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "run.py"), *args],
        cwd=cwd,
        env=ONE_THREAD,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    for line in process.stdout:
        lines.append(line)
        if when in line:
            process.send_signal(signum)
            break
    lines.append(process.stdout.read())
    return process.wait(timeout=300), "".join(lines)


def stop_line(output: str) -> tuple[str, list[str]]:
    """The one line a stop prints: (what it says before the command, the command)."""
    [line] = [line for line in output.splitlines() if "; resume with: " in line]
    said, command = line.split("; resume with: ")
    return said, shlex.split(command)


def comparable(files: dict) -> dict:
    """A snapshot without what only a run.py run writes (Hydra's log and .hydra/)."""
    return {k: v for k, v in files.items() if not (k.startswith(".hydra/") or k.endswith(".log"))}


# One agent, one round, one finetuned adapter (gen0) trained for 12 steps: the cheapest run
# that trains, run by run.py with SMALL + ONE_AGENT and in process with make(*ONE_AGENT).
ONE_AGENT = [
    "method=single_agent_ft",
    "agents=1",
    "debate.rounds=1",
    "task.n_train=4",
    "task.n_eval=2",
    "evaluation.diversity=false",
    "finetune.epochs=3",
    "finetune.batch_size=1",
]


def test_sigterm_inside_training_exits_143_and_the_same_command_resumes_to_the_same_files(
    make, snapshot, tmp_path
):
    """Lightning turns SIGTERM into a graceful stop that returned as a finished fit (exit 0):
    here it stops the run, and the resumed run ends with the files of an uninterrupted one.
    A resume refused afterwards (another seed) leaves .hydra/ as the accepted start wrote it."""
    run_dir = tmp_path / "run"
    args = [*SMALL, *ONE_AGENT, f"hydra.run.dir={run_dir}"]
    status, output = signalled(args, tmp_path, "gen0: training, ", signal.SIGTERM)
    assert status == 143, output
    said, command = stop_line(output)
    assert said.endswith("stopped by SIGTERM during finetuning gen0 (iteration 1)")
    assert command == ["python", str(ROOT / "run.py"), *args] and "Traceback" not in output
    assert not (run_dir / "iter_1/adapters/gen0.done.json").exists()  # not taken as trained
    assert not list(run_dir.rglob("*.tmp"))

    resumed = subprocess.run(
        [sys.executable, *command[1:]], cwd=tmp_path, env=ONE_THREAD, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    loop.run(make(*ONE_AGENT), tmp_path / "uninterrupted")
    assert comparable(snapshot(run_dir)) == comparable(snapshot(tmp_path / "uninterrupted"))

    hydra = {p.name: p.read_bytes() for p in (run_dir / ".hydra").iterdir()}
    assert set(hydra) == {"config.yaml", "hydra.yaml", "overrides.yaml"}
    refused = subprocess.run(
        [sys.executable, *command[1:], "seed=1"], cwd=tmp_path, env=ONE_THREAD, capture_output=True, text=True
    )
    assert refused.returncode == 2 and "made with another config (seed: 0 -> 1" in refused.stdout
    assert {p.name: p.read_bytes() for p in (run_dir / ".hydra").iterdir()} == hydra


def test_ctrl_c_in_a_debate_exits_130_and_the_command_resumes(tmp_path):
    args = [
        "method=debate",
        "logger=none",
        "task.n_eval=4",
        "evaluation.diversity=false",
        "generation.batch_size=4",
    ]
    status, output = signalled(args, tmp_path, "debate round 1/", signal.SIGINT)
    assert status == 130, output
    said, command = stop_line(output)
    assert said.endswith("stopped by Ctrl-C (SIGINT) during the eval debate of iteration 0")
    assert command[:2] == ["python", str(ROOT / "run.py")] and command[2:-1] == args
    assert "Traceback" not in output
    run_dir = Path(command[-1].removeprefix("hydra.run.dir="))
    assert not list(run_dir.rglob("*.tmp")) and not (run_dir / "iter_0/debate_eval.done.json").exists()
    resumed = subprocess.run(
        [sys.executable, *command[1:]], cwd=tmp_path, env=ONE_THREAD, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert len(rundir.read_jsonl(run_dir / "metrics.jsonl")) == 1


def test_sigterm_at_start_up_exits_143_and_leaves_nothing(tmp_path):
    status, output = signalled(["logger=none", "task.n_eval=2"], tmp_path, "questions", signal.SIGTERM)
    assert status == 143, output
    said, command = stop_line(output)
    assert said.endswith("stopped by SIGTERM during start-up (checks, data, model)")
    assert command[-1].startswith("hydra.run.dir=")
    assert list(tmp_path.iterdir()) == []  # nothing of the run was written: nothing to resume


def test_lightnings_graceful_stop_is_never_a_finished_training(tiny_model_dir, monkeypatch):
    """Without our handler (train_adapter called from other code), Lightning's own SIGTERM
    handling ends fit with SIGTERMException, a SystemExit of status 0 that would end the
    process as a success: it becomes Stopped instead."""
    from omegaconf import OmegaConf

    from mfsi.config import FinetuneConfig, ModelConfig
    from mfsi.society import Society, load_base

    society = Society(*load_base(OmegaConf.structured(ModelConfig(path=str(tiny_model_dir)))))
    cfg = OmegaConf.structured(FinetuneConfig(epochs=1, batch_size=1))
    society.add("gen0", cfg.lora)
    messages = [{"role": "user", "content": "1+1"}, {"role": "assistant", "content": "2"}]
    examples = [{"id": f"q{n}", "loss_from_turn": 0, "messages": messages} for n in range(4)]
    step = training.AdapterModule.training_step

    def sigterm_in_first_step(self, batch, batch_idx):
        if batch_idx == 0:
            os.kill(os.getpid(), signal.SIGTERM)  # Lightning's handler only records it
        return step(self, batch, batch_idx)

    monkeypatch.setattr(training.AdapterModule, "training_step", sigterm_in_first_step)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    with pytest.raises(Stopped) as stop:
        training.train_adapter(society.model, society.tokenizer, "gen0", examples, cfg, seed=0)
    assert stop.value.status == 143
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # Lightning put it back


@pytest.mark.parametrize(
    "signum,status,name", [(signal.SIGINT, 130, "Ctrl-C (SIGINT)"), (signal.SIGTERM, 143, "SIGTERM")]
)
def test_a_signal_inside_lightning_training_exits_with_its_status(
    tiny_model_dir, monkeypatch, caplog, signum, status, name
):
    """Lightning catches KeyboardInterrupt in fit and exits with status 1 itself; it composes
    its SIGTERM handler with ours: either signal stops training at once."""
    from omegaconf import OmegaConf

    from mfsi.config import FinetuneConfig, ModelConfig
    from mfsi.society import Society, load_base

    society = Society(*load_base(OmegaConf.structured(ModelConfig(path=str(tiny_model_dir)))))
    cfg = OmegaConf.structured(FinetuneConfig(epochs=1, batch_size=1))
    society.add("gen0", cfg.lora)
    messages = [{"role": "user", "content": "1+1"}, {"role": "assistant", "content": "2"}]
    example = {"id": "q", "loss_from_turn": 0, "messages": messages}
    monkeypatch.setattr(training.AdapterModule, "training_step", lambda *a: os.kill(os.getpid(), signum))
    console.doing("finetuning gen0 (iteration 1)")
    with pytest.raises(SystemExit) as stop, console.stop_on_signals("python run.py hydra.run.dir=x"):
        training.train_adapter(society.model, society.tokenizer, "gen0", [example], cfg, seed=0)
    assert stop.value.code == status
    assert (
        f"stopped by {name} during finetuning gen0 (iteration 1); resume with: python run.py" in caplog.text
    )
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL and signal.getsignal(signal.SIGINT) is not None


def test_sigterm_in_the_diversity_scoring_names_it(make, tmp_path, monkeypatch, caplog):
    def scores(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(diversity, "embedding_dissimilarity", scores)
    with pytest.raises(SystemExit) as stop, console.stop_on_signals("python run.py"):
        loop.run(make("method=base", "task.n_eval=2"), tmp_path)
    assert stop.value.code == 143
    assert "stopped by SIGTERM during the metrics of iteration 0; resume with: python run.py" in caplog.text
    assert (tmp_path / "iter_0/debate_eval.done.json").exists() and not (tmp_path / "metrics.jsonl").exists()


def test_sigterm_in_the_report_names_it(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(report, "build_report", lambda *a: os.kill(os.getpid(), signal.SIGTERM))
    monkeypatch.setattr(sys, "argv", ["report.py", str(tmp_path), "--out", str(tmp_path / "out")])
    with caplog.at_level(logging.WARNING), pytest.raises(SystemExit) as stop:
        report.main()
    assert stop.value.code == 143
    assert (
        f"stopped by SIGTERM during the report into {tmp_path / 'out'}; resume with: "
        f"python -m mfsi.report {tmp_path} --out {tmp_path / 'out'}"
    ) in caplog.text
