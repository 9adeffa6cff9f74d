"""Where output goes: the terminal gets tvmshuffle's own lines, a log file gets everyone else's.

TVM's C++ code logs straight to file descriptor 2 (``Unknown schedule rule
"meta_schedule.pool_avg" for target keys ("cpu",)`` on every tune, ``take`` fast-mode warnings,
the RPC tracker's retries), PyTorch prints warnings with tracebacks, TVM's Python modules log
warnings: none of it is for a user who did nothing wrong. Unless ``--verbose``, a command run
from the ``tvmshuffle`` entry point therefore

* points descriptor 2, and with it Python's ``sys.stderr``, at a log file: TVM's C++ lines,
  those of the processes it starts (the builder workers), and whatever other libraries print
  or log (PyTorch binds its log handlers to ``sys.stderr`` when it is imported);
* keeps a duplicate of the real stderr (``terminal()``) for tvmshuffle's own output: errors,
  progress, its log warnings, and tracebacks of uncaught exceptions (bugs, which a user must
  see).

The log file is ``$TVMSHUFFLE_LOG_DIR``, else the platform's user log folder (``platformdirs``:
``~/.local/state/tvmshuffle/log`` on Linux), one file a command (``<command>-<UTC time>-<pid>
.log``), the last ``KEEP`` kept. With ``--verbose`` nothing is redirected and everything prints,
at INFO.
"""

from __future__ import annotations

import datetime
import logging
import os
import sys
import threading
from pathlib import Path

LOG_ENV = "TVMSHUFFLE_LOG_DIR"
_terminal = None  # the real stderr once descriptor 2 is moved
KEEP = 50
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def log_dir() -> Path:
    if os.environ.get(LOG_ENV):
        return Path(os.environ[LOG_ENV])
    import platformdirs

    return Path(platformdirs.user_log_dir("tvmshuffle", appauthor=False))


class _Ours(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.name == "tvmshuffle" or record.name.startswith("tvmshuffle.")


def configure(verbose: bool, command: str | None, native: bool) -> Path | None:
    """Set up logging for one command. With ``native`` (the real entry point, a process of its
    own) as above; else (the command line run inside another program, as tests do) only a
    console handler where none is set. Returns the log file, or None when everything prints
    (``--verbose``, not native) or no log file can be written."""
    if not native:
        logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                            format="%(levelname)s %(name)s: %(message)s")
        return None
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.setLevel(logging.INFO)
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root.addHandler(console)
    logging.captureWarnings(True)
    if verbose:
        return None
    console.setLevel(logging.WARNING)
    console.addFilter(_Ours())
    path = _new_file(command or "tvmshuffle")
    if path is None:
        return None
    file_handler = logging.FileHandler(path, encoding="utf-8")
    file_handler.setFormatter(logging.Formatter(FORMAT))
    root.addHandler(file_handler)
    _redirect_fd2(path)
    return path


def _new_file(command: str) -> Path | None:
    folder = log_dir()
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        old = sorted(folder.glob("*.log"), key=lambda p: p.stat().st_mtime)
        for stale in old[:max(0, len(old) - KEEP + 1)]:
            stale.unlink(missing_ok=True)
        path = folder / f"{command}-{stamp}-{os.getpid()}.log"
        path.touch()
        return path
    except OSError:  # an unwritable home: everything prints, as with --verbose
        return None


def terminal():
    """The stream tvmshuffle's own messages go to: the real stderr."""
    return _terminal or sys.stderr


def _redirect_fd2(path: Path) -> None:
    """Descriptor 2 (and so ``sys.stderr``) to ``path``; ``terminal()`` to the old one."""
    global _terminal
    sys.stderr.flush()
    saved = os.dup(2)
    target = os.open(path, os.O_WRONLY | os.O_APPEND)
    os.dup2(target, 2)
    os.close(target)
    _terminal = os.fdopen(saved, "w", buffering=1, encoding=sys.stderr.encoding,
                          errors="backslashreplace")
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(
                handler, logging.FileHandler):
            handler.setStream(_terminal)

    def to_terminal(kind, value, tb):  # a bug's traceback: on the terminal and in the log
        import traceback

        text = "".join(traceback.format_exception(kind, value, tb))
        _terminal.write(text)
        _terminal.flush()
        sys.stderr.write(text)

    sys.excepthook = to_terminal
    threading.excepthook = lambda args: to_terminal(args.exc_type, args.exc_value,
                                                    args.exc_traceback)
