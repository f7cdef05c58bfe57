"""mfsi entry point.

    python run.py                                   # default: arithmetic, tiny model, 3 agents
    python run.py task=math model=phi3 agents=3 debate.rounds=2 iterations=5
    python run.py task=math agents=3 --cfg job      # print the composed config
    python run.py -m agents=1,3,5 debate.rounds=1,2 # sweep
    python run.py -v ...                            # verbose: library output too

Bad input (a missing dataset, a config value out of range) stops with one clear line and
exit status 2, before any model is loaded; a run directory created for the failed run is
removed again. Ctrl-C stops with one line giving the command that resumes the run, exit
status 130. In a sweep (-m) a failed job is reported and the other jobs still run.
"""

import logging
import shlex
import shutil
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from mfsi import console
from mfsi.config import register, validate
from mfsi.errors import MfsiError

register()
log = logging.getLogger("mfsi")


def _is_fresh(run_dir: Path) -> bool:
    """True if the directory holds only what Hydra wrote for this launch (and a released lock)."""
    ours = [p for p in run_dir.iterdir() if not (p.name == ".hydra" or p.suffix == ".log")]
    return all(p.name == ".lock" and p.stat().st_size == 0 for p in ours)


def resume_command(run_dir: Path) -> str:
    """This command line, pointed at its run directory (its sweep directory in a sweep)."""
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN:
        where = f"hydra.sweep.dir={hydra_cfg.sweep.dir}"
    else:
        where = f"hydra.run.dir={run_dir}"
    args = [a for a in sys.argv[1:] if not a.startswith(("hydra.run.dir=", "hydra.sweep.dir="))]
    return shlex.join(["python", sys.argv[0], *args, where])


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    fresh = _is_fresh(run_dir)
    try:
        with console.stop_on_ctrl_c(resume_command(run_dir)):
            validate(cfg)  # before the heavy imports: a bad value fails in about a second
            from mfsi.loop import run

            console.configure(cfg.verbose)
            run(cfg, run_dir)
    except MfsiError as e:
        log.error("%s", e)
        if fresh and _is_fresh(run_dir):  # failed before writing anything of its own
            shutil.rmtree(run_dir, ignore_errors=True)
            for parent in run_dir.parents:  # and the folders made for it, if now empty
                if parent == Path.cwd() or any(parent.iterdir()):
                    break
                parent.rmdir()
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # Hydra marks this job failed and runs the others
        sys.exit(2)


if __name__ == "__main__":
    sys.argv = ["verbose=true" if arg in ("-v", "--verbose") else arg for arg in sys.argv]
    main()
