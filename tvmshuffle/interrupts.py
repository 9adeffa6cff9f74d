"""Ctrl-C and SIGTERM on the command line: honoured at once where nothing can be lost, after
the batch being measured where records are being made.

Python delivers a signal to its main thread, as a KeyboardInterrupt raised wherever that thread
is. Inside a C++ pass that calls back into Python (the importers, legalization, MetaSchedule's
task extraction and search loop) TVM turns it into a ``RuntimeError`` with a C++ traceback, or
swallows it and the command runs on (both seen: Ctrl-C while "finding the kernels to tune").
So the CLI runs each command in a worker thread (``run_command``) and keeps the main thread
waiting; on a signal the main thread sets ``STOP`` and then

- while the worker is inside ``shielded()`` (tuning, a database append), waits for it: tuning
  checks ``STOP`` between batches, records what was measured and raises KeyboardInterrupt; an
  append finishes its line. A second signal does not wait (a torn last line is set aside by
  the next tune);
- otherwise raises at once, and the CLI ends the process (``os._exit``): importing, compiling
  and extracting tasks write nothing that matters, and the embedded tracker and device server
  stop with the process (``watchdog``).

Once the main thread has given up on the worker, ``shielded`` refuses it entry (raises
KeyboardInterrupt there), so no append starts under a process about to end; while the main
thread waits, cleanup after the signal (the last records synced) still enters.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Callable, Iterator

STOP = threading.Event()
_lock = threading.Lock()
_shields = 0
_abandoned = False


@contextlib.contextmanager
def shielded() -> Iterator[None]:
    """A region that a signal lets finish: the main thread waits for it before the process
    ends. Raises KeyboardInterrupt on entry once the main thread stopped waiting."""
    global _shields
    with _lock:
        if _abandoned:
            raise KeyboardInterrupt
        _shields += 1
    try:
        yield
    finally:
        with _lock:
            _shields -= 1


def run_command(work: Callable[[], Any]) -> Any:
    """``work()`` in a worker thread, its result or its exception here. On a signal (the
    KeyboardInterrupt, or a subclass a handler raised, landing here), STOP is set and that
    exception raised: at once outside shielded regions, else once the worker has ended (or at
    a second signal). The caller ends the process: an abandoned worker is still running."""
    done, outcome = in_thread(work, "tvmshuffle-command")
    try:
        while not done.wait(0.2):
            pass
    except KeyboardInterrupt as signal_err:
        global _abandoned
        with _lock:
            STOP.set()
            _abandoned = _shields == 0
        if not _abandoned:
            with contextlib.suppress(KeyboardInterrupt):  # a second signal: stop waiting
                while not done.wait(0.2):
                    pass
            with _lock:
                _abandoned = True
        raise signal_err from None
    return result(outcome)


def in_thread(work: Callable[[], Any], name: str) -> tuple[threading.Event, dict]:
    """Start ``work()`` in a daemon thread: (an Event set when it has ended, the dict that then
    holds its "value" or its "error"). Wait on the Event, not with ``Thread.join``: Python 3.11's
    join, interrupted by Ctrl-C, can mark the still running thread as stopped (bpo-45274's fix
    releases the lock that thread holds)."""
    outcome: dict = {}
    done = threading.Event()

    def run():
        try:
            outcome["value"] = work()
        except BaseException as err:  # handed to the waiting thread
            outcome["error"] = err
        finally:
            done.set()

    threading.Thread(target=run, name=name, daemon=True).start()
    return done, outcome


def result(outcome: dict) -> Any:
    """The value ``in_thread``'s work returned, or its exception raised here."""
    error = outcome.get("error")
    if error is not None:
        raise error
    return outcome["value"]


def in_command_thread() -> bool:
    """True in ``run_command``'s worker, where no signal is ever raised: STOP says it."""
    return threading.current_thread().name == "tvmshuffle-command"
