"""Ctrl-C and SIGTERM, one way everywhere.

The CLI takes SIGTERM (``timeout``, ``kill``, a scheduler stopping a job) as Ctrl-C: ``Terminated`` is a
KeyboardInterrupt, so every clean-up written for Ctrl-C runs for it too, and the command exits 143 instead
of 130. ``handlers_restored`` puts signal handlers back as they were (the CLI's own, or after ``ray.init``,
which installs ``sys.exit`` for SIGTERM); ``interrupts_deferred`` holds both signals back over a few steps
that must not be cut in two. Python runs signal handlers in the main thread only, so in any other thread
these change nothing.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator

INTERRUPTS = (signal.SIGINT, signal.SIGTERM)


class Terminated(KeyboardInterrupt):
    """SIGTERM taken as Ctrl-C is: the same clean-up of staging directories and half-written parts."""


def take_sigterm_as_interrupt() -> None:
    """From now on the first SIGTERM raises ``Terminated`` (a second one kills at once, as by default)."""
    def terminate(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise Terminated

    signal.signal(signal.SIGTERM, terminate)


@contextmanager
def handlers_restored(*signals: int) -> Iterator[bool]:
    """The handlers of ``signals`` as they are on entry, put back on exit, whatever the block installed.
    Yields whether handlers can be set here (the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield False
        return
    previous = {sig: signal.getsignal(sig) for sig in signals}
    try:
        yield True
    finally:
        for sig, handler in previous.items():
            if handler is not None:  # None: installed outside Python, nothing to put back
                signal.signal(sig, handler)


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Ctrl-C and SIGTERM received inside the block take effect when it ends: the first is raised again then,
    for whatever handler was in place."""
    received: list[int] = []
    try:
        with handlers_restored(*INTERRUPTS) as settable:
            if settable:
                for sig in INTERRUPTS:
                    signal.signal(sig, lambda signum, frame: received.append(signum))
            yield
    finally:
        if received:
            signal.raise_signal(received[0])
