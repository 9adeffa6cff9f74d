"""`tvmshuffle deploy` and ARM tuning through a loopback tracker: an emulated arm64 device
(rpc/emu_arm64.sh, qemu-user) and host-CPU devices, with the faults a drawer of phones has."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_one_line_error, invoke, spawn_server, wait_registered
from tvmshuffle import deploy, remote

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
EMU_SCRIPT = REPO / "rpc" / "emu_arm64.sh"
EMU_KEY = "emu-arm64"
SMALL = ("shufflenet_v1_g3_0.25x", "--input-size", "64x64")


def deploy_json(out: Path, tracker: remote.TrackerConfig, *args: str) -> dict:
    result = invoke("deploy", str(out), "--rpc-tracker", tracker.address, "--rpc-key",
                    tracker.key, "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def compile_to(out: Path, *args: str) -> dict:
    result = invoke("compile", *args, "-o", str(out), "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def host_tracker():
    """A loopback tracker with a host-CPU device under 'testcpu'."""
    with remote.embedded_device(threads=1, key="testcpu") as config:
        yield config


@pytest.fixture(scope="module")
def emu(host_tracker):
    """The emulated arm64 device (rpc/emu_arm64.sh) registered at the loopback tracker."""
    probe = subprocess.run(["bash", str(EMU_SCRIPT), "python", "-c", "import tvm"],
                           capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        message = "emulated arm64 device not set up: run rpc/emu_arm64.sh setup"
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)
    proc = subprocess.Popen(["bash", str(EMU_SCRIPT), "start", host_tracker.address, EMU_KEY],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    config = remote.TrackerConfig(host_tracker.host, host_tracker.port, EMU_KEY, 600)
    try:
        wait_registered(config, proc, 180)
        yield config
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def host_small(tmp_path_factory):
    out = tmp_path_factory.mktemp("host") / "small"
    compile_to(out, *SMALL, "--no-db")
    return out


@pytest.mark.parametrize("name", ["arm", "arm-linux"])
def test_arm_library_runs_correctly_on_the_emulated_device(emu, name, tmp_path):
    """ShuffleNet 0.5x g3 linked for Android and for aarch64 Linux loads and runs on the
    emulated arm64 device through the tracker, matching PyTorch within 1e-4; the timings are
    labelled emulated."""
    compile_to(tmp_path / name, "shufflenet_v1_g3_0.5x", "--target", name, "--no-db")
    data = deploy_json(tmp_path / name, emu, "--repeat", "2", "--threads", "1")
    assert data["max_abs_err"] <= 1e-4
    assert data["device"]["emulated"] is True
    assert data["device"]["triple"].startswith("aarch64")
    assert data["latency_ms"]["samples"] == 2 and data["latency_ms"]["median_ms"] > 0


def test_arm_tune_through_the_emulated_device_then_deploy(emu, tmp_path):
    """A tiny `tune --target arm-linux` measures on the emulated device, appends records, and
    the database then compiles into a library that deploys correctly. The group convolutions
    are what it tunes: the search replays their NEON defaults (with the input's cache read)
    under other tile decisions, which once failed inside MetaSchedule (a GetLoops of another
    length) with a C++ traceback."""
    db = tmp_path / "db"
    result = invoke("tune", *SMALL, "--target", "arm-linux", "--rpc-tracker", emu.address,
                    "--rpc-key", EMU_KEY, "--ops", "grouped", "--trials", "24",
                    "--db", str(db), "--json")
    assert result.exit_code == 0, result.output
    tuned = json.loads(result.stdout)
    assert sum(t["trials_run"] for t in tuned["tasks"]) >= 4
    assert any(t["tuned_ms"] for t in tuned["tasks"])
    manifest = compile_to(tmp_path / "o", *SMALL, "--target", "arm-linux", "--db", str(db))
    assert manifest["tuning"]["tuned_kernels"], "the ARM records were not applied"
    assert deploy_json(tmp_path / "o", emu, "--repeat", "2")["max_abs_err"] <= 1e-4


def test_instructions_counted_on_the_emulated_device(emu, tmp_path):
    """`deploy --count-instructions`: one inference of an arm library counted on the emulated
    device after its deploy through the tracker, every kernel's MACs found, the counts the same
    within 1% when repeated (here without a tracker: the count alone), and TVM's unscheduled
    loops telling apart from the default schedules: more instructions per MAC."""
    default, loops = tmp_path / "default", tmp_path / "loops"
    manifest = compile_to(default, *SMALL, "--target", "arm", "--no-db")
    compile_to(loops, *SMALL, "--target", "arm", "--no-db", "--no-default-schedules")
    first = deploy_json(default, emu, "--count-instructions", "--repeat", "1")
    assert first["max_abs_err"] <= 1e-4 and first["device"]["emulated"] is True
    counted = first["instructions"]
    network = counted["network"]
    assert counted["max_abs_err"] <= 1e-4 and counted["triple"].startswith("aarch64")
    assert network["macs"] == manifest["flops"]["macs"], "a kernel's MACs were not found"
    assert network["vector_fma"] > 0 and network["fma_lane_utilisation"] > 0.5
    assert counted["kernels"][0]["instructions"] >= counted["kernels"][-1]["instructions"]

    def count_alone(out: Path) -> dict:
        result = invoke("deploy", str(out), "--count-instructions", "--json")
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)["instructions"]["network"]

    again = count_alone(default)
    assert abs(again["instructions"] - network["instructions"]) <= 0.01 * network["instructions"]
    unscheduled = count_alone(loops)
    assert unscheduled["macs"] == network["macs"]
    assert unscheduled["instructions_per_mac"] > 1.5 * network["instructions_per_mac"], (
        unscheduled, network)


def test_counting_refuses_what_it_cannot_count(emu, host_small, tmp_path):
    """A host library, and a device key that is not an emulator: one line before any work."""
    assert_one_line_error(invoke("deploy", str(host_small), "--count-instructions"),
                          "instructions are counted for aarch64 libraries", exit_code=2)
    compile_to(tmp_path / "arm", *SMALL, "--target", "arm", "--no-db")
    assert_one_line_error(invoke("deploy", str(tmp_path / "arm"), "--count-instructions",
                                 "--rpc-tracker", emu.address, "--rpc-key", "pixel9"),
                          "device 'pixel9' is not emulated", exit_code=2)


def test_host_library_refused_before_upload_to_an_arm_device(emu, host_small):
    """A host .so sent to the ARM key is refused by architecture, naming both."""
    result = invoke("deploy", str(host_small), "--rpc-tracker", emu.address, "--rpc-key",
                    EMU_KEY)
    assert_one_line_error(result, "is built for x86_64", exit_code=2)
    assert "aarch64" in result.stderr


def test_arm_library_refused_by_the_host_device(host_tracker, tmp_path):
    """The reverse: an arm-linux .so sent to a host-CPU key is refused before upload."""
    compile_to(tmp_path / "arm", *SMALL, "--target", "arm-linux", "--no-db")
    result = invoke("deploy", str(tmp_path / "arm"), "--rpc-tracker", host_tracker.address,
                    "--rpc-key", host_tracker.key)
    assert_one_line_error(result, "is built for aarch64-linux-gnu", exit_code=2)


def test_embedded_default_deploys_host_library(host_small):
    """Without a tracker, deploy starts the embedded host device and checks + times there."""
    result = invoke("deploy", str(host_small), "--repeat", "3", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["device"]["key"] == remote.EMBEDDED_KEY and data["device"]["emulated"] is False
    assert data["max_abs_err"] <= 1e-4 and data["latency_ms"]["samples"] == 3


def test_wrong_numerics_on_the_device_give_no_latency(host_tracker, host_small, tmp_path):
    """A device result that disagrees with the reference: exit 5 with the error size, nothing
    on stdout."""
    import shutil

    out = tmp_path / "bad"
    shutil.copytree(host_small, out)
    data = dict(np.load(out / "reference.npz"))
    data["output_0"] = data["output_0"] + 0.25
    np.savez(out / "reference.npz", **data)
    result = invoke("deploy", str(out), "--rpc-tracker", host_tracker.address, "--rpc-key",
                    host_tracker.key, "--json")
    assert_one_line_error(result, "max abs error 0.25", exit_code=5)
    assert result.stdout == ""


def test_no_free_device_within_the_wait(host_tracker, host_small):
    """Every device under the key busy: deploy gives up after --wait seconds in one line."""
    config = remote.TrackerConfig(host_tracker.host, host_tracker.port, host_tracker.key, 60)
    held = deploy.request(config, 30)  # the only 'testcpu' device, kept busy
    try:
        start = time.monotonic()
        result = invoke("deploy", str(host_small), "--rpc-tracker", host_tracker.address,
                        "--rpc-key", host_tracker.key, "--wait", "3")
        assert_one_line_error(result, "became free within 3 s", exit_code=6)
        assert time.monotonic() - start < 30
    finally:
        del held


def test_device_lost_mid_run(host_tracker, host_small):
    """The device dies while timing: exit 6 naming the device and the step, no latency."""
    victim = remote.TrackerConfig(host_tracker.host, host_tracker.port, "victim")
    server = spawn_server(host_tracker, "victim")
    try:
        wait_registered(victim, server, 120)
        proc = subprocess.Popen(
            [sys.executable, "-m", "tvmshuffle.cli", "deploy", str(host_small), "--rpc-tracker",
             host_tracker.address, "--rpc-key", "victim", "--repeat", "100000", "--number",
             "10", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while remote.summary(victim)["queue_info"].get("victim", {}).get("free", 0):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "deploy never took the device"
            time.sleep(0.2)
        time.sleep(2)  # uploaded, checked and timing by now
        os.killpg(server.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=120)
        lines = stderr.decode().strip().splitlines()
        assert proc.returncode == 6, stderr.decode()
        assert lines[-1].startswith("Error: device 'victim'"), lines
        assert stdout == b""
    finally:
        stop(server)


def test_compare_on_the_emulated_device(emu, tmp_path):
    """`compare --rpc-tracker --rpc-key` runs the grid on the emulated device: every cell is
    checked and timed there, the report says the timings are emulated, and the instructions of
    one inference, counted, are what it measures speedups by."""
    out = tmp_path / "report"
    result = invoke("compare", "--target", "arm-linux", "--rpc-tracker", emu.address,
                    "--rpc-key", EMU_KEY, "--models",
                    "shufflenet_v1_g3_0.25x,mobilenet_v1_0.25", "--sizes", "64x64",
                    "--baselines", "none", "--repeat", "3", "-o", str(out), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["environment"]["emulated"] is True
    assert data["environment"]["device_key"] == EMU_KEY
    assert all(row["latency_ms"] and row["max_abs_err"] <= 1e-4 for row in data["rows"]), \
        [row["error"] for row in data["rows"]]
    assert "EMULATED" in (out / "report.md").read_text()
    assert data["measured_by"] == "instructions"
    assert all(row["instructions"] > 0 and row["fma_lane_use"] > 0.5 for row in data["rows"])
    small, mobilenet = (next(r for r in data["rows"] if r["model"] == name)
                        for name in ("shufflenet_v1_g3_0.25x", "mobilenet_v1_0.25"))
    assert small["instructions"] < mobilenet["instructions"]  # 1.3 against 3.9 MMACs
    assert "speedups measured by: instructions counted" in (out / "report.md").read_text()


@pytest.mark.parametrize("sig, code, word", [
    (signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")])
def test_a_signal_mid_deploy_stops_the_embedded_servers(host_small, sig, code, word):
    """SIGTERM or Ctrl-C mid-deploy: one line, exit 143 / 130, and no tracker or device server
    left behind (they run in their own sessions, so nothing else would stop them)."""
    import psutil

    # as from a terminal: a suite started in the background (`cmd &` in a script) inherits SIGINT
    # ignored, and a Python started so never installs its KeyboardInterrupt handler
    proc = subprocess.Popen(
        [sys.executable, "-m", "tvmshuffle.cli", "deploy", str(host_small), "--repeat", "100000",
         "--number", "10"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while True:
        servers = [child for child in psutil.Process(proc.pid).children(recursive=True)
                   if "tvm.exec.rpc_" in " ".join(child.cmdline())]
        if len(servers) == 2:
            break
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "the embedded servers did not start"
        time.sleep(0.2)
    time.sleep(3)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, stderr.decode()
    assert stderr.decode().strip().splitlines()[-1] == f"Error: {word}", stderr.decode()
    assert "Traceback" not in stderr.decode()
    assert not [s for s in servers if s.is_running() and s.status() != psutil.STATUS_ZOMBIE]
