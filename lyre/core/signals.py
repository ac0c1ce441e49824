"""Stopping a long job cleanly on Ctrl-C or SIGTERM: finish the current step, save, exit.

Used by the training loop and by the launcher of several processes (lyre.train.distributed); kept
apart from both so neither has to import the other.
"""

from __future__ import annotations

import signal
import threading


class Stopped(KeyboardInterrupt):
    """Training stopped on a signal after saving `last`: SIGINT (Ctrl-C) or SIGTERM (`kill`,
    systemd, Slurm preemption, `docker stop`).

    A KeyboardInterrupt, so code that handles Ctrl-C handles both. `exit_code` is what the CLI
    returns: 128 + the signal number (130, 143). Rank 0 has printed what happened and how to
    resume.
    """

    def __init__(self, signum: int) -> None:
        super().__init__()
        self.signum = int(signum)
        self.exit_code = 128 + self.signum


def signal_name(signum: int) -> str:
    return "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name


class StopOnSignal:
    """While training, SIGINT (Ctrl-C) or SIGTERM only asks the loop to stop after the current step.

    A checkpoint written between steps holds weights, optimizer moments and RNG states that
    agree with each other, so --resume continues exactly; one written mid-step would not.
    A second Ctrl-C stops at once, without saving. A second SIGTERM changes nothing: under
    torchrun and Slurm one stop can reach a process twice (from the launcher and from the
    scheduler), and whoever sends SIGTERM follows with SIGKILL when it has waited long enough.
    Outside the main thread nothing changes; neither does a signal that is ignored (SIGINT in a
    background job) or whose handler was not set from Python (it could not be put back).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum = 0  # the first signal that asked to stop; 0 while none did
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is not threading.main_thread():
            return self
        for signum in self.SIGNALS:
            previous = signal.getsignal(signum)
            if previous is None and signum == signal.SIGINT:
                previous = signal.default_int_handler  # Python's own, set from C
            if previous is None or previous is signal.SIG_IGN:
                continue
            self._previous[signum] = previous
            signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        # No printing here: the handler may run in the middle of tqdm writing to stderr.
        if self.signum and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = self.signum or signum

    def __exit__(self, *exc) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()
