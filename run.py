"""mfsi entry point.

    python run.py                                   # default: arithmetic, tiny model, 3 agents
    python run.py task=math model=phi3 agents=3 debate.rounds=2 iterations=5
    python run.py task=math agents=3 --cfg job      # print the composed config
    python run.py -m agents=1,3,5 debate.rounds=1,2 # sweep
    python run.py -v ...                            # verbose: library output too

Bad input (an unknown config option or key, a config value out of range, a missing
dataset, a run directory that cannot be created) stops with one clear message and exit
status 2, before any model is loaded; a run directory created for the failed run is
removed again. Ctrl-C (SIGINT) and SIGTERM stop with one line saying what they interrupted
and the command that resumes the run, exit status 130 and 143. In a sweep (-m) a failed
job is reported and the other jobs still run.
"""

import logging
import os
import shlex
import shutil
import sys
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mfsi import console
from mfsi.config import register, validate
from mfsi.errors import MfsiError

register()
log = logging.getLogger("mfsi")


def _is_fresh(run_dir: Path) -> bool:
    """True if the directory holds only what Hydra wrote for this launch (and a released lock)."""
    ours = [p for p in run_dir.iterdir() if not (p.name == ".hydra" or p.suffix == ".log")]
    return all(p.name == ".lock" and p.stat().st_size == 0 for p in ours)


def _remove(run_dir: Path) -> None:
    """Remove a run directory that holds nothing of the run, and the folders made for it."""
    shutil.rmtree(run_dir, ignore_errors=True)
    for parent in run_dir.parents:
        if parent == Path.cwd() or any(parent.iterdir()):
            break
        parent.rmdir()


def resume_command(run_dir: Path) -> str:
    """This command line, pointed at its run directory (its sweep directory in a sweep)."""
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN:
        where = f"hydra.sweep.dir={hydra_cfg.sweep.dir}"
    else:
        where = f"hydra.run.dir={run_dir}"
    args = [a for a in sys.argv[1:] if not a.startswith(("hydra.run.dir=", "hydra.sweep.dir="))]
    return shlex.join(["python", sys.argv[0], *args, where])


def hydra_files(cfg: DictConfig) -> dict[str, str]:
    """Hydra's record of a launch (.hydra/: the config, Hydra's settings, the overrides). Hydra
    would write it before the run has checked that the directory takes this config
    (hydra.output_subdir: null); the run writes it once it has."""
    hydra_cfg = HydraConfig.get()
    return {
        ".hydra/config.yaml": OmegaConf.to_yaml(cfg),
        ".hydra/hydra.yaml": OmegaConf.to_yaml({"hydra": hydra_cfg}),
        ".hydra/overrides.yaml": OmegaConf.to_yaml(hydra_cfg.overrides.task),
    }


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    fresh = _is_fresh(run_dir)
    try:
        with console.stop_on_signals(resume_command(run_dir)):
            validate(cfg)  # before the heavy imports: a bad value fails in about a second
            from mfsi.loop import run

            console.configure(cfg.verbose)
            run(cfg, run_dir, launch=hydra_files(cfg))
    except (MfsiError, SystemExit) as e:  # SystemExit: stopped by a signal
        if fresh and _is_fresh(run_dir):  # failed before writing anything of its own
            _remove(run_dir)
        if isinstance(e, SystemExit):
            raise
        log.error("%s", e)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # Hydra marks this job failed and runs the others
        sys.exit(2)


def _in_job(error: BaseException) -> bool:
    """Whether error came from inside main (a job), not from Hydra before it."""
    job = main.__wrapped__.__code__
    return any(frame.f_code is job for frame, _ in traceback.walk_tb(error.__traceback__))


def launch() -> None:
    """main(), with the errors Hydra meets before the job starts (an unknown config group
    option or key, a value of the wrong type, a run directory it cannot create) printed as
    Hydra words them, and exit status 2 as for any bad input. HYDRA_FULL_ERROR=1 set by the
    user keeps Hydra's tracebacks."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        return main()
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises its errors instead of exiting with status 1
    try:
        main()
    except Exception as e:
        if _in_job(e):
            raise  # a failure of the run itself: its traceback
        if isinstance(e, OSError) and not isinstance(e, HydraException) and e.filename:
            key = "hydra.sweep.dir" if {"-m", "--multirun"} & set(sys.argv) else "hydra.run.dir"
            message = f"{key}: cannot create or write {e.filename} ({e.strerror})"
        else:
            cause = e.__cause__
            message = str(e) + (f"\n{cause}" if isinstance(cause, OmegaConfBaseException) else "")
        print(message, file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    sys.argv = ["verbose=true" if arg in ("-v", "--verbose") else arg for arg in sys.argv]
    with console.stop_on_signals(shlex.join(["python", *sys.argv])):  # until main's own
        launch()
