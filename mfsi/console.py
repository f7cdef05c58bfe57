"""What a run prints: our own log lines and one progress bar per long step; how it stops.

    configure(verbose=False)      # after the libraries are imported
    with stop_on_signals("python run.py ... hydra.run.dir=..."):
        doing("the eval debate of iteration 0")   # what a stop would interrupt
        run(cfg, run_dir)

Library chatter (Lightning's device lines and tips, deprecation and "possible user"
warnings, transformers' weight-loading bars) is filtered unless verbose (`run.py -v`).
Ctrl-C (SIGINT) and SIGTERM (`kill`, `timeout`, SLURM before a time limit or preemption)
end a run with one line saying what they interrupted and the command that resumes it, and
exit status 130 or 143 (128 + the signal's number, as a shell reports a process the signal
killed). Files are written atomically, so an interrupted run leaves nothing half-written.
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
SIGNALS = (signal.SIGINT, signal.SIGTERM)
NAMES = {signal.SIGINT: "Ctrl-C (SIGINT)", signal.SIGTERM: "SIGTERM"}
_doing = "start-up"  # what the process does now: the line printed on a stop names it


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


def doing(what: str) -> None:
    """Say what the process does from now on ("finetuning gen0 (iteration 1)"): what the line
    printed on a stop names as interrupted."""
    global _doing
    _doing = what


class Stopped(BaseException):
    """SIGINT or SIGTERM arrived. A BaseException, as KeyboardInterrupt is, so that no
    `except Exception` swallows it on the way out; Lightning's fit lets it through after
    its own clean-up (its KeyboardInterrupt path would exit with status 1 instead)."""

    def __init__(self, signum: int, during: str | None = None):
        during = during or _doing
        super().__init__(f"stopped by {NAMES[signum]} during {during}")
        self.signum, self.during = signum, during

    @property
    def status(self) -> int:
        return 128 + self.signum


def _stop(signum, frame) -> None:
    raise Stopped(signum)


@contextmanager
def stop_on_signals(resume: str) -> Iterator[None]:
    """Turn SIGINT and SIGTERM into one line, `stopped by SIGTERM during <what>; resume with:
    <resume>`, and exit status 128 + the signal. Lightning's fit composes its own SIGTERM
    handler with this one (it records the signal, this one stops), so training stops at
    once too; a graceful stop of Lightning's that still got through (its SIGTERMException
    is a SystemExit with status 0) is turned into the same line by mfsi.training."""
    previous = {signum: signal.signal(signum, _stop) for signum in SIGNALS}
    try:
        yield
    except Stopped as stop:
        log.warning("%s; resume with: %s", stop, resume)
        sys.exit(stop.status)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
