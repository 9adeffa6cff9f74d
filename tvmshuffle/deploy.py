"""Run an artifact on a device reached through a TVM RPC tracker: upload, load, check, time.

The device is asked for its LLVM triple (``target.llvm_get_system_triple``, present where the
device runs a full TVM, as Linux boards and the emulated arm64 device do) so that a library
built for another architecture is refused before it is uploaded; a runtime-only device (the
Android RPC app) cannot say, and a wrong library is then caught when it fails to load. The
output is checked against the host reference in the artifact before any latency is measured: a
wrong result has no latency. Timing uses the device's own evaluator (``time_evaluator`` over
``invoke_stateful``), so no network round trip is in the numbers. The uploaded file is removed
afterwards.

Devices whose key starts with ``emu`` are flagged as emulated: their timings measure qemu, not
a phone.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from dataclasses import dataclass

from .bench import DEFAULT_TOLERANCE, Artifact, Latency, RunResult, flatten_outputs, max_abs_error
from .errors import BadInputError, DeviceError, NumericsError, TvmShuffleError, first_line
from .remote import TrackerConfig
from .target import host_arch

EMULATED_PREFIX = "emu"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeployConfig:
    threads: int = 1
    repeat: int = 30
    number: int = 1
    tolerance: float = DEFAULT_TOLERANCE
    wait: float = 60.0  # seconds to wait for a free device under the key
    emulated: bool | None = None  # None: judged from the key (EMULATED_PREFIX)
    budget_s: float | None = None  # cap timing near this (fewer repeats, never under 3)


@dataclass(frozen=True)
class DeviceInfo:
    key: str
    tracker: str
    triple: str | None  # None: the device runs the TVM runtime alone and cannot say
    emulated: bool

    def as_json(self) -> dict:
        return {"key": self.key, "tracker": self.tracker, "triple": self.triple,
                "emulated": self.emulated}


@dataclass(frozen=True)
class DeployResult:
    run: RunResult
    device: DeviceInfo
    upload_s: float


def request(tracker: TrackerConfig, wait: float):
    """A session on a free device under the key, or DeviceError after ``wait`` seconds.

    The tracker queues a request until a device is free and TVM's client waits forever, so
    the request runs in a daemon thread abandoned at the deadline."""
    from tvm import rpc

    box: dict = {}

    def ask() -> None:
        try:
            client = rpc.connect_tracker(tracker.host, tracker.port)
            box["session"] = client.request(tracker.key, priority=1,
                                            session_timeout=tracker.session_timeout)
        except Exception as err:  # TVM raises RPCError, RuntimeError, socket errors
            box["error"] = err

    thread = threading.Thread(target=ask, daemon=True, name="tvmshuffle-request")
    thread.start()
    thread.join(wait)
    if "session" in box:
        return box["session"]
    if "error" in box:
        raise DeviceError(f"no session with a '{tracker.key}' device from {tracker.address}: "
                          f"{first_line(box['error'])}") from box["error"]
    raise DeviceError(f"no '{tracker.key}' device at {tracker.address} became free within "
                      f"{wait:g} s (all busy); retry later or raise --wait")


def device_triple(session) -> str | None:
    try:
        return str(session.get_function("target.llvm_get_system_triple")())
    except Exception:  # runtime-only devices have no LLVM: the function is missing
        return None


def is_emulated(key: str, override: bool | None = None) -> bool:
    return key.startswith(EMULATED_PREFIX) if override is None else override


def check_architecture(artifact: Artifact, key: str, triple: str | None) -> None:
    """Refuse a library the device cannot execute, before uploading it."""
    built = artifact.target.triple.split("-")[0]
    if triple is None or not built:
        return
    device = triple.split("-")[0]
    if built != device:
        raise BadInputError(
            f"{artifact.library} is built for {artifact.target.triple} (target "
            f"{artifact.target.name}) but device '{key}' is {triple}: compile with --target "
            f"{'host' if device == host_arch() else 'arm or arm-linux'} for it")


def run_remote(artifact: Artifact, tracker: TrackerConfig, config: DeployConfig) -> DeployResult:
    """Upload the artifact's library to a device, check its output, time it, clean up.

    A session closes when the last reference to it (or to a remote module, VM or tensor) goes,
    and an exception's traceback keeps the frames that hold them: errors are raised here, after
    the frame that held the session has returned, so a failed deploy frees the device at once
    even in a long-lived process."""
    outcome = _in_session(artifact, tracker, config)
    gc.collect()  # a remote Relax VM sits in a reference cycle (closures, cells): free it now
    if isinstance(outcome, TvmShuffleError):
        raise outcome
    return outcome


def _in_session(artifact: Artifact, tracker: TrackerConfig,
                config: DeployConfig) -> DeployResult | TvmShuffleError:
    try:
        session = request(tracker, config.wait)
        triple = _remote(tracker, "asking the device what it is", device_triple, session)
        check_architecture(artifact, tracker.key, triple)
        device = DeviceInfo(tracker.key, tracker.address, triple,
                            is_emulated(tracker.key, config.emulated))
        remote_name = f"tvmshuffle-{artifact.manifest['library']['sha256'][:12]}.so"
        start = time.perf_counter()
        _remote(tracker, "uploading", session.upload, str(artifact.library), remote_name)
        upload_s = time.perf_counter() - start
        try:
            run = _check_and_time(artifact, session, remote_name, tracker, config)
        finally:
            try:
                session.remove(remote_name)
            except Exception:  # the device is gone: nothing left to clean on our side
                pass
        return DeployResult(run, device, upload_s)
    except TvmShuffleError as err:
        log.debug("deploy to '%s' failed", tracker.key, exc_info=True)
        err.__traceback__ = err.__cause__ = err.__context__ = None
        return err


def _check_and_time(artifact: Artifact, session, remote_name: str, tracker: TrackerConfig,
                    config: DeployConfig) -> RunResult:
    import tvm
    from tvm import relax

    def load():
        session.get_function("runtime.config_threadpool")(1, config.threads)
        return session.load_module(remote_name)

    library = _remote(tracker, "loading the library", load)
    dev = session.cpu()

    def infer():
        vm = relax.VirtualMachine(library, dev)
        vm.set_input("main", tvm.runtime.tensor(artifact.input, dev))
        vm.invoke_stateful("main")
        return vm, flatten_outputs(vm.get_outputs("main"))

    vm, outputs = _remote(tracker, "running the model", infer)
    err = max_abs_error(outputs, artifact.expected)
    if not err <= config.tolerance:
        raise NumericsError(f"max abs error {err:.3g} on device '{tracker.key}' exceeds "
                            f"tolerance {config.tolerance:g}: no latency reported for a wrong "
                            "result")

    def measure() -> list[float]:
        # one untimed-by-us run first: page in weights, warm caches; it also sizes the repeats
        once = vm.time_evaluator("invoke_stateful", dev, number=config.number,
                                 repeat=1)("main").mean
        repeat = config.repeat
        if config.budget_s:
            repeat = max(3, min(repeat, int(config.budget_s / max(once * config.number, 1e-9))))
        timer = vm.time_evaluator("invoke_stateful", dev, number=config.number, repeat=repeat)
        return list(timer("main").results)

    seconds = _remote(tracker, "timing", measure)
    return RunResult(err, Latency.from_seconds(seconds), config.threads)


def _remote(tracker: TrackerConfig, what: str, fn, *args):
    """Call ``fn``; a failure of the device or the link becomes one DeviceError line."""
    try:
        return fn(*args)
    except (BadInputError, NumericsError):
        raise
    except Exception as err:  # RPCError, TVMError, ConnectionError, OSError...
        message = first_line(err)
        if "Failed to load dynamic shared library" in str(err):
            message = ("the device could not load the library (built for another system?): "
                       + _dlopen_reason(str(err)))
        raise DeviceError(f"device '{tracker.key}' at {tracker.address} failed while {what}: "
                          f"{message}") from err


def _dlopen_reason(text: str) -> str:
    for line in text.splitlines():
        if "Failed to load dynamic shared library" in line:
            return line.split("Failed to load dynamic shared library", 1)[1].strip()
    return first_line(text)


from ._callable import make_callable  # noqa: E402 - tvmshuffle.deploy(...) is api.deploy

make_callable(__name__)
