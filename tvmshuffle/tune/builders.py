"""How candidates are built and timed: the build linked like the final library, a pool of
builder workers kept for the whole tune, the RPC runner, and one batch built and run."""

from __future__ import annotations

import functools
import inspect
import logging
import os
import sys
import tempfile
import threading
from typing import Callable

import tvm

from .. import toolchain
from ..remote import TrackerConfig, registered_devices
from .tasks import TuneConfig

log = logging.getLogger(__name__)


def build_candidate(mod: tvm.IRModule, target: tvm.target.Target, _params) -> tvm.runtime.Module:
    """MetaSchedule's default build without ``import tvm.s_tir.tensor_intrin``, which costs about
    29 s in every fresh builder worker and so hits the 30 s build timeout."""
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm_build(mod, target=target)


def export_candidate(linker: toolchain.Toolchain, mod: tvm.runtime.Module) -> str:
    """Link a candidate into a ``.so`` here, with the final library's toolchain: a phone has no
    compiler to link MetaSchedule's default ``.tar`` export."""
    path = os.path.join(tempfile.mkdtemp(prefix="tvmshuffle-candidate-"), "candidate.so")
    mod.export_library(path, fcompile=linker)
    return path


def _build_in_worker(f_build, f_export, mod: tvm.IRModule, target: tvm.target.Target) -> str:
    return f_export(f_build(mod, target, None))


BUILDS_PER_WORKER = 64  # then a builder worker is replaced (LLVM leaks a little per build)


@functools.cache
def _pooled_builder_class():
    from tvm.ir.utils import derived_object
    from tvm.s_tir import meta_schedule as ms
    from tvm.support.popen_pool import PopenPoolExecutor, StatusKind

    @derived_object
    class PooledBuilder(ms.builder.PyBuilder):
        """MetaSchedule's LocalBuilder with worker processes that outlive a batch. LocalBuilder
        starts new ones for every batch (against a memory leak), and each fresh worker imports
        TVM, which imports PyTorch: about 3 s a batch on 2 cores, more than building a small
        batch. Here a worker is replaced after BUILDS_PER_WORKER builds or a timeout."""

        def __init__(self, max_workers: int, timeout: float, f_build, f_export):
            super().__init__()
            self.f_build, self.f_export = f_build, f_export
            self.pool = PopenPoolExecutor(max_workers=max_workers, timeout=timeout,
                                          maximum_process_uses=BUILDS_PER_WORKER)
            self.timeout = timeout

        def build(self, build_inputs):
            results = []
            outcomes = self.pool.map_with_error_catching(
                lambda args: _build_in_worker(*args),
                [(self.f_build, self.f_export, inp.mod, inp.target) for inp in build_inputs])
            for outcome in outcomes:
                if outcome.status == StatusKind.COMPLETE:
                    results.append(ms.builder.BuilderResult(outcome.value, None))
                elif outcome.status == StatusKind.TIMEOUT:
                    results.append(ms.builder.BuilderResult(
                        None, f"build timed out after {self.timeout:g} s"))
                else:
                    results.append(ms.builder.BuilderResult(
                        None, f"build failed: {outcome.value}"))
            return results

        def close(self) -> None:
            self.pool.shutdown()

    return PooledBuilder


def _builder(config: TuneConfig):
    linker = toolchain.find(config.target, config.android_api)
    return _pooled_builder_class()(os.cpu_count() or 1, config.timeout, build_candidate,
                                   functools.partial(export_candidate, linker))


def bounded_session(rpc_config):
    """MetaSchedule's session request (``RPCConfig.connect_server``) with its waits bounded; it
    runs in the runner's worker process. MetaSchedule's waits forever for the tracker to hand
    out a device under the key, so a tune whose only device died blocked with no output (seen:
    11 minutes, killed): here a key with no device registered fails the candidate at once, and
    the wait for a free one, like every exchange with the tracker, ends after the session
    timeout (``--timeout``)."""
    import socket

    from tvm import rpc

    # the tracker's sockets are made by Python in this worker; the session's, by C++, are not
    socket.setdefaulttimeout(rpc_config.session_timeout_sec)
    tracker = rpc.connect_tracker(rpc_config.tracker_host, rpc_config.tracker_port)
    try:
        if not registered_devices(tracker.summary()).get(rpc_config.tracker_key):
            raise RuntimeError(f"no device registered under key '{rpc_config.tracker_key}' "
                               f"at {rpc_config.tracker_host}:{rpc_config.tracker_port}")
        return tracker.request(rpc_config.tracker_key, priority=rpc_config.session_priority,
                               session_timeout=rpc_config.session_timeout_sec, max_retry=1)
    finally:
        tracker.close()


def _runner(config: TuneConfig, tracker: TrackerConfig, devices: int):
    from tvm.s_tir import meta_schedule as ms

    rpc_config = ms.runner.RPCConfig(tracker_host=tracker.host, tracker_port=tracker.port,
                                     tracker_key=tracker.key,
                                     session_timeout_sec=int(max(config.timeout,
                                                                 tracker.session_timeout)))
    if config.method.flush_caches:  # one call a timing: a second would find the caches warm
        evaluator = ms.runner.EvaluatorConfig(number=1, repeat=20, min_repeat_ms=0,
                                              enable_cpu_cache_flush=True)
    else:
        evaluator = ms.runner.EvaluatorConfig(number=3, repeat=3, min_repeat_ms=20,
                                              enable_cpu_cache_flush=False)
    return ms.runner.RPCRunner(rpc_config, evaluator, max_workers=devices,
                               f_create_session=bounded_session)


def _build_and_run(builder, runner, kernels: list, stop: threading.Event | None = None,
                   device_left: Callable[[], bool] | None = None
                   ) -> list[tuple[int, str, str | None, list[float] | None]]:
    """Build ``kernels`` ((module, target, args info) each) in one batch and run those that
    built on the device: (index, step, error, run seconds) for each, step "build" or "run",
    error None when it ran. Build directories are removed at the end.

    A kernel that failed to build, or failed to run while another kernel of the batch ran, failed
    by itself. When every run of the batch failed and ``device_left()`` says no device is left
    under the key, the device failed (it was lost, or no session could be had): those runs are
    left out, so that no caller records them as the kernels' failures (MetaSchedule's 1e10 s,
    never timed again) and a later tune times them anew.
    Once ``stop`` is set (Ctrl-C) the results end there: a build or run that failed because the
    same Ctrl-C killed its worker is not the kernel's failure either."""
    from tvm.s_tir import meta_schedule as ms

    def stopped() -> bool:
        return stop is not None and stop.is_set()

    results = []
    built = builder.build([ms.builder.BuilderInput(mod, target) for mod, target, _ in kernels])
    try:
        if stopped():
            return []
        for i, result in enumerate(built):
            if result.error_msg:
                results.append((i, "build", _summary(result.error_msg), None))
        ran = [i for i, result in enumerate(built) if not result.error_msg]
        futures = runner.run([ms.runner.RunnerInput(built[i].artifact_path, "cpu", kernels[i][2])
                              for i in ran])
        runs = []
        for i, future in zip(ran, futures):
            result = future.result()
            if stopped():
                break
            if result.error_msg or not result.run_secs:
                runs.append((i, "run", _summary(result.error_msg or "no timing"), None))
            else:
                runs.append((i, "run", None, [float(s) for s in result.run_secs]))
    finally:
        for result in built:
            if result.artifact_path:
                ms.utils.remove_build_dir(result.artifact_path)
    if runs and all(error for _, _, error, _ in runs) and device_left is not None \
            and not device_left():
        log.warning("all %d runs of a batch failed (%s) and no device is left: the device's "
                    "failure, not the kernels'; not recorded", len(runs), runs[-1][2])
        runs = []
    return results + runs


def _summary(error: str) -> str:
    """A build's or run's error as one line for a warning (its last line: the exception; a
    worker's traceback is most of MetaSchedule's message); the whole of it to the log file."""
    lines = [line.strip() for line in error.strip().splitlines() if line.strip()]
    if len(lines) > 1:
        log.info("in full: %s", error)
    return lines[-1] if lines else error


# Files of stack frames that no module is loaded from: importlib's frozen modules, the code
# TVMScript's parser evaluates, and `python -c`. Never keys of sys.modules, so inspect finds no
# module for them, as its scan of sys.modules does.
_NO_MODULE_FILES = ("<frozen importlib._bootstrap>", "<frozen importlib._bootstrap_external>",
                    "<ast>", "<string>")


def import_tensor_intrinsics() -> None:
    """Import ``tvm.s_tir.tensor_intrin`` (MetaSchedule's TuneContext does, to register the
    intrinsics its schedule rules name) in about 4 s instead of 35-65
    (``benchmarks/intrin_import.py``).

    Each of its ~500 TVMScript functions calls ``inspect.stack()``, which asks
    ``inspect.getmodule`` for every frame's module; for a frame whose file is not on disk (the
    frozen importlib frames of any import, TVMScript's "<ast>", ``python -c``) it scans all of
    sys.modules (about 2,000 with torch loaded) and finds none. Telling inspect's file-to-module
    cache that these files have no module gives the same answer without the scans."""
    if "tvm.s_tir.tensor_intrin" in sys.modules:
        return
    added = [name for name in _NO_MODULE_FILES if name not in inspect.modulesbyfile]
    for name in added:
        inspect.modulesbyfile[name] = name
    try:
        import tvm.s_tir.tensor_intrin  # noqa: F401
    finally:
        for name in added:
            inspect.modulesbyfile.pop(name, None)
