"""TVM RPC tracker and device sessions: reach a tracker, count its devices, or start the embedded
default (a tracker and one host-CPU device server on 127.0.0.1) and stop it afterwards.

An RPC server runs whatever code it is sent: everything here binds 127.0.0.1. A tracker has no
authentication; expose one only on a trusted network.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator

from .errors import BadInputError, DeviceError

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
EMBEDDED_KEY = "host"
# Phones are slow to load a module and run it a few times: MetaSchedule's 10 s is too short.
DEFAULT_SESSION_TIMEOUT = 60


@dataclass(frozen=True)
class TrackerConfig:
    host: str
    port: int
    key: str
    session_timeout: int = DEFAULT_SESSION_TIMEOUT

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def parse_tracker(text: str) -> tuple[str, int]:
    """'HOST:PORT' -> (host, port)."""
    host, sep, port = (text or "").strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise BadInputError(f"bad --rpc-tracker '{text}': expected HOST:PORT, e.g. "
                            "127.0.0.1:9190")
    return host, int(port)


def summary(config: TrackerConfig, timeout: float = 5.0) -> dict:
    """The tracker's queue and server information; DeviceError if it cannot be reached or
    does not answer within ``timeout`` seconds (a tracker that accepts the connection and
    says nothing would otherwise be waited for forever)."""
    try:
        with socket.create_connection((config.host, config.port), timeout=timeout):
            pass
    except socket.timeout as err:
        raise DeviceError(f"RPC tracker at {config.address} did not accept a connection "
                          f"within {timeout:g} s") from err
    except OSError as err:
        raise DeviceError(f"RPC tracker at {config.address} is unreachable "
                          f"({err.strerror or err})") from err
    from tvm import rpc

    # TVM's tracker client bounds its connect only: every socket it makes now times out
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)
    try:
        return rpc.connect_tracker(config.host, config.port).summary()
    except socket.timeout as err:
        raise DeviceError(f"RPC tracker at {config.address} accepted the connection but did "
                          f"not answer within {timeout:g} s") from err
    except Exception as err:  # TVM raises RPCError / RuntimeError / socket errors
        if "timed out" in str(err):
            raise DeviceError(f"RPC tracker at {config.address} accepted the connection but "
                              f"did not answer within {timeout:g} s") from err
        raise DeviceError(f"RPC tracker at {config.address} did not answer: {err}") from err
    finally:
        socket.setdefaulttimeout(previous)


def registered_devices(info: dict) -> dict[str, int]:
    """Devices registered per key in a tracker's summary (``TrackerSession.summary``)."""
    registered: dict[str, int] = {}
    for server in info.get("server_info", []):
        role, _, key = str(server.get("key", "")).partition(":")
        if role == "server":
            registered[key] = registered.get(key, 0) + 1
    return registered


def free_devices(config: TrackerConfig, timeout: float = 5.0) -> int:
    """Devices registered under the key, free or busy (a device in a session is still
    connected to the tracker). DeviceError naming the keys the tracker does have when there is
    none."""
    info = summary(config, timeout)
    registered = registered_devices(info)
    queue = info.get("queue_info", {})
    count = max(registered.get(config.key, 0), int(queue.get(config.key, {}).get("free", 0)))
    if count == 0:
        known = ", ".join(f"{k} ({n} device(s), {queue.get(k, {}).get('free', 0)} free)"
                          for k, n in sorted(registered.items()))
        raise DeviceError(f"no device registered under key '{config.key}' at "
                          f"{config.address}; the tracker has: {known or 'no devices at all'}")
    return count


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


_SPAWNED: set[subprocess.Popen] = set()  # embedded servers running, for stop_embedded


def _spawn(args: list[str], env: dict) -> subprocess.Popen:
    # own session: one killpg stops the server and the workers it forks; the watchdog ends
    # the session when this process dies without doing so (kill -9)
    proc = subprocess.Popen([sys.executable, "-m", "tvmshuffle.watchdog", str(os.getpid()),
                             *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    _SPAWNED.add(proc)
    return proc


def stop_embedded() -> None:
    """Stop every embedded server still running (the command line, ending the process on
    Ctrl-C without unwinding the command that started them)."""
    for proc in list(_SPAWNED):
        _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    _SPAWNED.discard(proc)
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@contextlib.contextmanager
def embedded_device(threads: int = 1, key: str = EMBEDDED_KEY,
                    ready_timeout: float = 120.0) -> Iterator[TrackerConfig]:
    """A tracker and one host-CPU RPC server on 127.0.0.1, stopped on exit (also on Ctrl-C and
    on error). The server's TVM thread pool has ``threads`` threads."""
    with embedded_device_starting(threads, key, ready_timeout) as ready:
        yield ready()


@contextlib.contextmanager
def embedded_device_starting(threads: int = 1, key: str = EMBEDDED_KEY,
                             ready_timeout: float = 120.0
                             ) -> Iterator[Callable[[], TrackerConfig]]:
    """The embedded device of ``embedded_device``, started in the background: yields at once a
    ``ready()`` that waits until the server is registered and returns the tracker's config
    (DeviceError if it could not start). The tracker and server import TVM (seconds each)
    while the caller imports its model. Stopped on exit, ready or not."""
    port = _free_port()
    env = {**os.environ, "TVM_NUM_THREADS": str(threads)}
    config = TrackerConfig(LOOPBACK, port, key)
    procs = {"tracker": _spawn(["tvm.exec.rpc_tracker", "--host", LOOPBACK, "--port", str(port),
                                "--port-end", str(port + 1), "--silent"], env)}
    cancel = threading.Event()
    outcome: dict[str, BaseException] = {}

    def start_server() -> None:
        try:
            # the server starts while the tracker is still starting: each is a Python importing
            # TVM that starts a worker Python importing it again. Once the tracker has its
            # worker it is one import from listening and the server two from registering; a
            # server that comes first retries after 5 s.
            _wait(lambda: _started_worker(procs["tracker"], config), dict(procs),
                  ready_timeout, cancel)
            if cancel.is_set():
                return
            server_port = _free_port()
            procs["device server"] = _spawn(
                ["tvm.exec.rpc_server", "--host", LOOPBACK, "--port", str(server_port),
                 "--port-end", str(server_port + 50), "--tracker", config.address, "--key", key,
                 "--silent"], env)
            _wait(lambda: free_devices(config, timeout=1.0), dict(procs), ready_timeout, cancel)
        except BaseException as err:  # handed to ready()
            outcome["error"] = err

    starter = threading.Thread(target=start_server, name="tvmshuffle-embedded-device",
                               daemon=True)
    starter.start()

    def ready() -> TrackerConfig:
        starter.join()
        if "error" in outcome:
            raise outcome["error"]
        log.info("embedded tracker %s with device key '%s'", config.address, key)
        return config

    try:
        yield ready
    finally:
        cancel.set()
        starter.join()
        for name in ("device server", "tracker"):
            if name in procs:
                _stop(procs[name])


def _started_worker(tracker: subprocess.Popen, config: TrackerConfig) -> None:
    """DeviceError until the tracker process has a child (its worker) or answers."""
    import psutil

    with contextlib.suppress(psutil.Error):
        if psutil.Process(tracker.pid).children():
            return
    summary(config, timeout=1.0)


def _wait(probe, procs: dict[str, subprocess.Popen], timeout: float,
          cancel: threading.Event | None = None) -> None:
    """Until ``probe`` stops raising DeviceError or ``cancel`` is set; DeviceError if one of
    ``procs`` (by what it is) exits first or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while not (cancel and cancel.is_set()):
        for what, proc in procs.items():
            if proc.poll() is not None:
                raise DeviceError(f"the embedded {what} exited with code {proc.returncode}")
        try:
            probe()
            return
        except DeviceError as err:
            if time.monotonic() > deadline:
                were = "were" if len(procs) > 1 else "was"
                raise DeviceError(f"the embedded {' and '.join(procs)} {were} not ready after "
                                  f"{timeout:g} s") from err
            time.sleep(0.2)
