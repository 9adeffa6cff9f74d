"""The devices a command measures on: a user's TVM RPC tracker, or the embedded default (a
tracker and this machine's CPU as the one device, on 127.0.0.1, stopped when the command
ends). Shared by the command line and the Python API."""

from __future__ import annotations

import contextlib
import dataclasses
import functools

from .errors import BadInputError


def need_device(tracker: str | None, resolved) -> None:
    """Code for another machine needs a tracker: the embedded default device is this CPU.
    Checked before any import or build."""
    if not tracker and not resolved.runs_on_host:
        raise BadInputError(f"--target {resolved.name} needs a device: give --rpc-tracker and "
                            "--rpc-key (the embedded default device is this machine's CPU)")


def acquire(stack: contextlib.ExitStack, tracker: str | None, key: str | None, threads: int,
            session_timeout: int, quiet: bool):
    """The tracker to use and how many devices it has under the key: the given one, or the
    embedded default (entered on ``stack``, so it stops when the command ends)."""
    return starting(stack, tracker, key, threads, session_timeout, quiet)()


def starting(stack: contextlib.ExitStack, tracker: str | None, key: str | None,
                     threads: int, session_timeout: int, quiet: bool):
    """``acquire`` in two steps: a given tracker is checked now (before any import or build),
    the embedded default starts now; the returned function gives (tracker, devices), waiting
    for the embedded device if it is not up yet (the same pair on every call). Its servers
    start while the model imports."""
    from . import remote, report

    session_timeout = max(session_timeout, remote.DEFAULT_SESSION_TIMEOUT)
    if tracker:
        if not key:
            raise BadInputError("--rpc-tracker needs --rpc-key (the device key at the tracker)")
        host, port = remote.parse_tracker(tracker)
        config = remote.TrackerConfig(host, port, key, session_timeout)
        count = remote.free_devices(config, timeout=min(session_timeout, 10))
        return lambda: (config, count)
    if key:
        raise BadInputError("--rpc-key needs --rpc-tracker (the embedded default has one "
                            f"device, key '{remote.EMBEDDED_KEY}')")
    ready = stack.enter_context(remote.embedded_device_starting(threads))

    @functools.cache
    def embedded():
        with report.step("starting the embedded tracker and device", quiet=quiet):
            return dataclasses.replace(ready(), session_timeout=session_timeout), 1

    return embedded
