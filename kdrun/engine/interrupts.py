"""Stopping a run without losing it: Ctrl-C (SIGINT) and SIGTERM (how SLURM, Kubernetes and spot
instances preempt a job) ask the training loop to stop after the step in progress; it then saves
checkpoints/last.pt and the run ends "interrupted" with the command that resumes it. A second signal
exits at once."""

from __future__ import annotations

import os
import signal
import threading

SIGNALS = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}


class InterruptGuard:
    def __enter__(self) -> InterruptGuard:
        self.requested: str | None = None  # the name of the signal that asked to stop
        self.exit_status = 130
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        name = SIGNALS[signum]
        if self.requested:
            os.write(2, f"\nsecond {name}: exiting now\n".encode())
            os._exit(128 + signum)
        self.requested = name
        self.exit_status = 128 + signum
        os.write(2, f"\n{name}: finishing this step, then saving checkpoints/last.pt "
                    f"(send it again to quit at once)\n".encode())

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
