"""Shared fixtures (small model files written once per session) and helpers: the CLI driven
in-process, its one-line errors, and device servers registered at a loopback tracker."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pytest
import torch
from click.testing import CliRunner

from tvmshuffle import frontends, logs, models, places, remote, schedule_cache
from tvmshuffle.cli import cli

# Default schedules derived once per run, shared by the commands the tests start, never in the
# user's own cache folder: a folder of this run (kept only as long as the machine's /tmp).
os.environ[schedule_cache.CACHE_ENV] = tempfile.mkdtemp(prefix="tvmshuffle-test-cache-")
# the log files of the commands the tests start, likewise
os.environ[logs.LOG_ENV] = tempfile.mkdtemp(prefix="tvmshuffle-test-logs-")
# and the user's own tuning databases: a test that tunes without --db never adds to the user's
os.environ[places.HOME_ENV] = tempfile.mkdtemp(prefix="tvmshuffle-test-home-")


@contextlib.contextmanager
def silent_tracker():
    """A loopback port that accepts connections and never answers (a hung tracker): yields
    its port."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    accepted = []

    def accept():
        while True:
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()
        for sock in accepted:
            sock.close()


def invoke(*args: str):
    """The command line in this process (click's CliRunner), exceptions not swallowed."""
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def assert_one_line_error(result, *fragments: str, exit_code: int | None = None) -> None:
    """A failed command printed one line, 'Error: ...', holding every fragment, no traceback;
    with ``exit_code``, it exited with that code. The plain progress lines a long stage prints
    every 30 s where no terminal shows a live one (``report``'s heartbeat: "[m:ss] stage") are
    not error output: on a busy machine a stage may last that long before its error."""
    assert result.exit_code != 0
    if exit_code is not None:
        assert result.exit_code == exit_code, result.output
    lines = [line for line in result.stderr.strip().splitlines()
             if not re.match(r"\[\d+:\d\d\] ", line)]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ") and "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines


def spawn_server(tracker: remote.TrackerConfig, key: str) -> subprocess.Popen:
    """A host-CPU `tvm.exec.rpc_server` registering under ``key``, in its own session (stop it
    with killpg)."""
    port = remote._free_port()
    return subprocess.Popen(
        [sys.executable, "-m", "tvm.exec.rpc_server", "--host", "127.0.0.1", "--port",
         str(port), "--port-end", str(port + 20), "--tracker", tracker.address, "--key", key,
         "--silent"], env={**os.environ, "TVM_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True)


def wait_registered(config: remote.TrackerConfig, proc: subprocess.Popen, timeout: float,
                    count: int = 1) -> None:
    """Wait until ``count`` devices are registered under ``config.key``."""
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"device server '{config.key}' exited"
        try:
            if remote.free_devices(config, timeout=1.0) >= count:
                return
        except Exception:
            pass
        assert time.monotonic() < deadline, f"'{config.key}' did not register in {timeout} s"
        time.sleep(0.5)


@pytest.fixture(scope="session")
def model_files(tmp_path_factory):
    """ShuffleNet 0.25x g3 at 64x64 as a .pt2 and an .onnx file, plus a corrupt file."""
    root = tmp_path_factory.mktemp("models")
    name, shape = "shufflenet_v1_g3_0.25x", (1, 3, 64, 64)
    model = models.build(name)
    pt2 = root / "small.pt2"
    torch.export.save(torch.export.export(model, (torch.zeros(shape),)), str(pt2))
    onnx_path = frontends.export_onnx(model, shape, root / "small.onnx")
    corrupt = root / "corrupt.onnx"
    corrupt.write_bytes(b"this is not a protobuf \x00\xff" * 10)
    return {"pt2": pt2, "onnx": onnx_path, "corrupt": corrupt, "name": name, "shape": shape}


@pytest.fixture(scope="session")
def _depthwise_db(tmp_path_factory):
    db = tmp_path_factory.mktemp("tuned") / "db"
    result = invoke("tune", "shufflenet_v1_g3_0.25x", "--input-size", "64x64", "--ops",
                    "depthwise", "--trials-per-task", "5", "--trials", "10", "--patience", "0",
                    "--db", str(db), "--json")
    assert result.exit_code == 0, result.output
    return db


@pytest.fixture
def depthwise_db(_depthwise_db, tmp_path):
    """A copy of a database tuned once per session (on the embedded device): ShuffleNet 0.25x
    g3 at 64x64, two depthwise tasks with five schedules each."""
    db = tmp_path / "db"
    shutil.copytree(_depthwise_db, db)
    return db


@pytest.fixture(scope="session")
def unsupported_onnx(tmp_path_factory):
    """A valid ONNX model using DFT, which TVM's importer does not implement."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("DFT", ["r"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path_factory.mktemp("unsupported") / "dft.onnx"
    onnx.save(model, str(path))
    return path


def compile_and_run(spec: frontends.ModelSpec, out_dir, threads: int = 1,
                    default_schedules: bool = False):
    """Import, optimize, build for the host, write the artifact, run it: (manifest, result).

    TVM's unscheduled loops unless ``default_schedules``: a test of an importer or a graph
    pass checks the graph, and LLVM takes 3-6x longer on the default schedules' unrolled
    kernels (ShuffleNet 1x at 64x64: 55 s against 9 s to export); test_numerics and
    test_defaults build with them, as a user does."""
    from tvmshuffle import bench, export, target

    config = export.CompileConfig(target.resolve("host"), default_schedules=default_schedules)
    manifest = export.build_artifact(frontends.load(spec), config, out_dir)
    result = bench.run_local(bench.load_artifact(out_dir), threads=threads, repeat=2)
    return manifest, result


def relax_ops(mod) -> list:
    """Names of the operators ``main`` of a Relax module calls, in post order."""
    import tvm
    from tvm import relax

    names = []
    relax.analysis.post_order_visit(
        mod["main"], lambda node: names.append(node.op.name)
        if isinstance(node, relax.Call) and isinstance(node.op, tvm.ir.Op) else None)
    return names


def export_to_relax(module, shape):
    """A module through torch.export into Relax, as the .pt2 importer does."""
    from tvm.relax.frontend.torch import from_exported_program

    program = torch.export.export(module.eval(), (torch.zeros(shape),))
    return from_exported_program(program, unwrap_unit_return_tuple=True)


def run_on_host(mod, x):
    """A Relax module built for the host with tvmshuffle's pipeline, run on ``x``; its output
    as numpy (the first of a 1-tuple, as ONNX imports return)."""
    import tvm
    from tvm import relax

    from tvmshuffle import pipeline, target

    tgt = target.resolve("host").tvm_target
    exe = tvm.compile(pipeline.lower(mod, tgt), target=tgt, relax_pipeline=None)
    out = relax.VirtualMachine(exe, tvm.cpu())["main"](tvm.runtime.tensor(x))
    return out.numpy() if hasattr(out, "numpy") else out[0].numpy()
