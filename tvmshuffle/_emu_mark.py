"""The counting window's marks, for scripts the emulated arm64 python runs under the
instruction counter (rpc/insn_count.c): no imports, so any guest script can load it by path.

getpriority(PRIO_PROCESS, MARK) with a pid no process has fails harmlessly; the plugin sees the
call's arguments, zeroes its counters at MARK_START and writes them out at MARK_STOP.
"""

import os

MARK_START, MARK_STOP = 0x74736330, 0x74736331  # "tsc0", "tsc1", as in insn_count.c


def mark(which: int) -> None:
    try:
        os.getpriority(os.PRIO_PROCESS, which)
    except OSError:
        pass
