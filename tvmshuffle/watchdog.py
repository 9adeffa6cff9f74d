"""Run a Python module as ``python -m`` would, and end it with the process that started it.

The embedded tracker and device server run in sessions of their own (one ``killpg`` stops a
server and the workers it forks). A parent that dies without stopping them (kill -9, a crash)
left them listening for good. Linux's ``PR_SET_PDEATHSIG`` fires when the parent *thread*
exits, and the embedded device is started from a thread that ends once it is up: so instead
this wrapper, the session's leader, watches its parent process and kills its whole process
group (itself, the server, its workers) once that parent is gone.

    python -m tvmshuffle.watchdog PARENT_PID MODULE [ARGS...]
"""

from __future__ import annotations

import os
import runpy
import signal
import sys
import threading
import time

POLL_SECONDS = 0.5


def _watch(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(POLL_SECONDS)
    os.killpg(0, signal.SIGKILL)


def main() -> None:
    parent, module = int(sys.argv[1]), sys.argv[2]
    sys.argv = [module, *sys.argv[3:]]
    threading.Thread(target=_watch, args=(parent,), name="tvmshuffle-watchdog",
                     daemon=True).start()
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
