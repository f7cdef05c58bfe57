"""What a run prints: our own log lines and one progress bar per long step.

    configure(verbose=False)      # after the libraries are imported
    with stop_on_ctrl_c("python run.py ... hydra.run.dir=..."):
        run(cfg, run_dir)

Library chatter (Lightning's device lines and tips, deprecation and "possible user"
warnings, transformers' weight-loading bars) is filtered unless verbose (`run.py -v`).
Ctrl-C ends a run with one line giving the command that resumes it, and exit status 130.
"""

from __future__ import annotations

import logging
import signal
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger("mfsi")

CHATTY = ("pytorch_lightning", "lightning_fabric", "lightning")  # info lines on every Trainer


def configure(verbose: bool) -> None:
    """Quiet the libraries' console output, unless verbose."""
    if verbose:
        return
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*does not have many workers")  # Lightning, on CPU
    for name in CHATTY:
        logging.getLogger(name).setLevel(logging.WARNING)
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()


@contextmanager
def stop_on_ctrl_c(resume: str) -> Iterator[None]:
    """Turn Ctrl-C into one line with the resume command and exit status 130, also when a
    library catches the interrupt and exits on its own (Lightning's fit does, with status 1).
    Files are written atomically, so nothing is left half-written."""
    pressed: list[int] = []

    def interrupt(signum, frame):
        pressed.append(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, interrupt)
    try:
        yield
    except (KeyboardInterrupt, SystemExit):
        if not pressed:
            raise
        log.warning("stopped by Ctrl-C; resume with: %s", resume)
        sys.exit(130)
    finally:
        signal.signal(signal.SIGINT, previous)
