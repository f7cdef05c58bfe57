"""mfsi entry point.

    python run.py                                   # default: arithmetic, tiny model, 3 agents
    python run.py task=math model=phi3 agents=3 debate.rounds=2 iterations=5
    python run.py task=math agents=3 --cfg job      # print the composed config
    python run.py -m agents=1,3,5 debate.rounds=1,2 # sweep

Bad input (a missing dataset, a config value out of range) stops with one clear line and
exit status 2; a run directory created for the failed run is removed again. In a sweep
(-m) a failed job is reported and the other jobs still run.
"""

import logging
import shutil
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from mfsi.config import register
from mfsi.errors import MfsiError

register()
log = logging.getLogger("mfsi")


def _is_fresh(run_dir: Path) -> bool:
    """True if the directory holds only what Hydra wrote for this launch."""
    return all(p.name == ".hydra" or p.suffix == ".log" for p in run_dir.iterdir())


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from mfsi.loop import run  # heavy imports after Hydra has parsed the command line

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    fresh = _is_fresh(run_dir)
    try:
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
    main()
