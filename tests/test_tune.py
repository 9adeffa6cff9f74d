"""Tuning through a loopback tracker with real RPC servers: records, resume, faults."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
from conftest import assert_one_line_error, invoke, spawn_server, wait_registered
from tvmshuffle import records, remote, tune

pytestmark = pytest.mark.slow

MODEL = ("shufflenet_v1_g3_0.25x", "--input-size", "64x64")


def tune_json(*args: str) -> dict:
    result = invoke("tune", *MODEL, "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def tracker():
    """A loopback tracker with one real `tvm.exec.rpc_server` registered under 'testcpu'."""
    with remote.embedded_device(threads=1, key="testcpu") as config:
        yield config


def record_lines(db) -> list[bytes]:
    return (db / records.RECORD_FILE).read_bytes().splitlines()


def test_embedded_tune_writes_records_resumes_and_compiles(tmp_path, monkeypatch):
    """With no tracker and no --db: records are appended to the user's database
    ($TVMSHUFFLE_HOME), nothing under the working directory; a re-run resumes; compile applies
    it. Here with prepacked weights and flushed caches, which the re-run and compile take from
    the database (and the shipped database, made otherwise, is not applied beside it)."""
    from tvmshuffle import places, target

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv(places.HOME_ENV, str(tmp_path / "home"))
    db = places.user_db(target.resolve("host", "generic", None), "generic")
    assert db.is_relative_to(tmp_path / "home")
    first = tune_json("--ops", "depthwise", "--trials", "4", "--prepack", "--flush-caches")
    ran = [t for t in first["tasks"] if t["trials_run"]]
    assert ran and all(t["kind"] == "depthwise" for t in first["tasks"])
    assert first["method"] == {"prepack": True, "flush_caches": True}
    assert json.loads((db / records.METHOD_FILE).read_text()) == first["method"]
    lines = record_lines(db)
    # a record per candidate measured, and one per unscheduled kernel kept for being faster
    recorded = {t["name"]: t["trials_run"] + t["kept_untuned"] for t in ran}
    assert len(lines) == sum(recorded.values()) and sum(t["trials_run"] for t in ran) >= 4

    again = tune_json("--ops", "depthwise", "--trials", "4")
    assert sum(t["trials_run"] for t in again["tasks"]) == 0, "everything was at budget"
    assert {t["name"]: t["trials_before"] for t in again["tasks"] if t["trials_before"]} == {
        name: n for name, n in recorded.items() if n}
    assert record_lines(db) == lines, "a resumed run rewrote nothing"

    out = tmp_path / "out"
    result = invoke("compile", *MODEL, "-o", str(out), "--json")
    assert result.exit_code == 0, result.output
    tuning = json.loads(result.stdout)["tuning"]
    assert tuning["db"] == str(db) and tuning["fallback_dbs"] == []
    assert tuning["method"] == first["method"]
    assert not list(work.iterdir())
    # a kernel that reads weights repacked at build time is named <task>_prepacked
    assert {t["name"] for t in ran} <= {k.removesuffix("_prepacked")
                                        for k in tuning["tuned_kernels"]}
    run = json.loads(invoke("run", str(out), "--json", "--repeat", "3").stdout)
    assert run["max_abs_err"] < 1e-4


def test_tensor_intrinsics_are_registered_and_inspect_left_as_it_was():
    """import_tensor_intrinsics (in a fresh process, with torch loaded as in the CLI) registers
    the intrinsics MetaSchedule's rules name, for x86 and Arm, and leaves inspect's cache without
    the file names it added."""
    code = (
        "import inspect, torch, tvm\n"
        "from tvmshuffle import tune\n"
        "from tvm.s_tir._tensor_intrin import TensorIntrin\n"
        "assert TensorIntrin.get('dot_16x4_avx512', allow_missing=True) is None\n"
        "tune.import_tensor_intrinsics()\n"
        "assert TensorIntrin.get('dot_16x4_avx512') is not None\n"
        "assert TensorIntrin.get('dot_4x4_i8i8s32_sdot') is not None\n"
        "assert not set(tune._NO_MODULE_FILES) & set(inspect.modulesbyfile)\n"
        "print('ok')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert done.stdout.strip() == "ok", done.stderr


def test_a_task_that_stops_improving_stops_early(tracker, tmp_path):
    """--patience: a task whose last measured batch brought no 1% gain ends before its budget
    and is reported converged; a task never ends early without that flag."""
    data = tune_json("--ops", "depthwise", "--trials-per-task", "40", "--trials", "80",
                     "--patience", "1", "--db", str(tmp_path / "db"), "--rpc-tracker",
                     tracker.address, "--rpc-key", tracker.key)
    tuned = [t for t in data["tasks"] if t["trials_run"]]
    assert len(tuned) == 2
    for task in tuned:
        # the default schedule is a task's first trial, then batches of up to 32
        first = 1 if task["default_ms"] is not None else 0
        assert task["trials_run"] == (first + 32 if task["converged"] else 40)
    assert any(task["converged"] for task in tuned)


def _schedules(lines: list[bytes]) -> list[tuple[int, str]]:
    """(workload, the trace up to its postprocessing with its decisions) of each record."""
    found = []
    for line in lines:
        workload, (trace, *_) = json.loads(line)
        insts, decisions = trace
        kinds = [inst[0] for inst in insts]
        end = kinds.index("EnterPostproc") if "EnterPostproc" in kinds else len(insts)
        found.append((workload, json.dumps([insts[:end], [d for d in decisions if d[0] < end]])))
    return found


def test_refine_times_tile_neighbours_of_the_best_once(tracker, tmp_path):
    """--refine: after the search, neighbours of each task's best schedule are timed on the
    same device and appended (but those faster warm and slower with the caches flushed); a
    re-run times others, never a schedule the database holds. --rpc-tracker/--rpc-key measure
    on the device registered there."""
    db = tmp_path / "db"
    args = ("--ops", "depthwise", "--trials", "2", "--db", str(db), "--rpc-tracker",
            tracker.address, "--rpc-key", tracker.key, "--refine", "3")
    first = tune_json(*args)
    assert first["tracker"] == tracker.address and first["key"] == "testcpu"
    searched = [t["trials_run"] - t["refined"] + t["refined_rejected"] for t in first["tasks"]]
    assert sum(searched) == 2 and any(t["tuned_ms"] for t in first["tasks"])
    refined = [t for t in first["tasks"] if t["refined"]]
    assert refined and all(t["refined"] <= 3 for t in first["tasks"])
    for task in refined:
        assert task["tuned_ms"] <= task["refined_from_ms"]
        assert task["trials_run"] > task["refined"] - task["refined_rejected"], "searched first"
    lines = record_lines(db)
    assert len(lines) == sum(t["trials_run"] + t["kept_untuned"] for t in first["tasks"])

    again = tune_json(*args)
    assert sum(t["trials_run"] for t in again["tasks"]) == sum(
        t["refined"] - t["refined_rejected"] for t in again["tasks"]), "only neighbours"
    assert any(t["refined"] for t in again["tasks"])
    after = record_lines(db)
    assert after[:len(lines)] == lines, "appended, nothing rewritten"
    schedules = _schedules(after)
    assert len(set(schedules)) == len(schedules), "no schedule timed twice"


def test_unreachable_tracker_fails_fast(tmp_path):
    """A tracker nobody listens on is reported in one line within the timeout."""
    start = time.monotonic()
    result = invoke("tune", *MODEL, "--rpc-tracker", f"127.0.0.1:{remote._free_port()}",
                    "--rpc-key", "x", "--timeout", "5", "--db", str(tmp_path / "db"))
    assert_one_line_error(result, "unreachable")
    assert time.monotonic() - start < 60


def test_bad_model_stops_the_embedded_device_it_started(model_files, tmp_path):
    """The embedded device starts before the model is imported: a model that fails to import
    ends the command with its one-line error and no tracker or server left running."""
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    result = invoke("tune", str(model_files["corrupt"]), "--db", str(tmp_path / "db"))
    assert_one_line_error(result, "is not a valid ONNX model")
    left = [p for p in psutil.Process().children(recursive=True) if p.pid not in before
            and p.status() != psutil.STATUS_ZOMBIE]
    assert not left, [" ".join(p.cmdline()) for p in left]


def test_unknown_key_lists_the_keys(tracker, tmp_path):
    """No device under the key: the error lists the keys the tracker has."""
    result = invoke("tune", *MODEL, "--rpc-tracker", tracker.address, "--rpc-key", "pixel9",
                    "--db", str(tmp_path / "db"))
    assert_one_line_error(result, "testcpu (1 device(s), 1 free)")


def test_corrupt_database_line_is_named_and_kept(tmp_path):
    """A truncated record names its file and line; the database is left as it was."""
    db = tmp_path / "db"
    db.mkdir()
    (db / records.WORKLOAD_FILE).write_text("")
    (db / records.RECORD_FILE).write_text('[0, [[], [1e-05], {"kind": "llvm"}\n')
    before = (db / records.RECORD_FILE).read_bytes()
    result = invoke("tune", *MODEL, "--db", str(db), "--trials", "1")
    assert_one_line_error(result, f"{records.RECORD_FILE}:1: corrupt line")
    assert (db / records.RECORD_FILE).read_bytes() == before


def _read_only(db) -> list[str]:
    """A command prefix under which ``db`` cannot be written, root included: a read-only bind
    mount in a mount namespace of its own (root cannot be refused by permissions), else the
    folder's write bits removed."""
    if os.geteuid() != 0:
        db.chmod(0o555)
        return []
    if subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode != 0:
        pytest.skip("root here cannot make a mount namespace for a read-only folder")
    return ["unshare", "-m", "sh", "-c",
            'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"', str(db)]


def test_a_read_only_database_is_refused_before_any_work(model_files, tmp_path):
    """A database folder that cannot be written is one line (exit 7) before the model is even
    read (the model here is a corrupt file, which would be exit 2), not a traceback after
    minutes of measuring; the folder is left as it was."""
    db = tmp_path / "db"
    db.mkdir()
    for name in (records.WORKLOAD_FILE, records.RECORD_FILE):
        (db / name).write_text("")
    before = sorted(p.name for p in db.iterdir())
    proc = subprocess.run([*_read_only(db), sys.executable, "-m", "tvmshuffle.cli", "tune",
                           str(model_files["corrupt"]), "--db", str(db), "--trials", "4"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 7, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"Error: the tuning database {db} is not writable: Read-only file system"
        if os.geteuid() == 0 else
        f"Error: the tuning database {db} is not writable: Permission denied"], proc.stderr
    assert sorted(p.name for p in db.iterdir()) == before


def test_a_database_holds_one_method(tmp_path):
    """Records timed warm and records timed with flushed caches do not compare, prepacked
    kernels are other workloads: tuning a database with another method than its records' is
    refused before any work, the database left as it was."""
    legacy = tmp_path / "legacy"  # records from before the method file: warm, unpacked
    legacy.mkdir()
    (legacy / records.RECORD_FILE).write_text("[0]\n")
    assert records.database_method(legacy) == records.LEGACY_METHOD
    assert records.settle_method(legacy) == records.LEGACY_METHOD
    assert records.settle_method(tmp_path / "new") == records.DEFAULT_METHOD
    assert records.settle_method(tmp_path / "new", prepack=True) == records.Method(
        True, records.DEFAULT_METHOD.flush_caches)
    # a new database takes the method of the one it starts from, whose records then seed it
    assert records.settle_method(tmp_path / "new", start_from=(legacy,)) == \
        records.LEGACY_METHOD != records.DEFAULT_METHOD
    result = invoke("tune", *MODEL, "--db", str(legacy), "--flush-caches")
    assert_one_line_error(result, "warm caches, not unpacked weights, flushed caches")
    assert not (legacy / records.METHOD_FILE).exists()
    (legacy / records.METHOD_FILE).write_text("{")
    assert_one_line_error(invoke("tune", *MODEL, "--db", str(legacy)),
                          f"{records.METHOD_FILE}: unreadable")


def test_a_failure_inside_metaschedules_search_is_one_line(tmp_path, monkeypatch):
    """MetaSchedule's C++ search raising (as a replayed trace once did: "parallel_for_dynamic
    error with Check failed: old_outputs.size() == new_outputs.size()") ends the tune with one
    line naming the kernel, not a C++ traceback; the records measured before are kept."""
    from tvm.s_tir import meta_schedule as ms

    def failing(*args, **kwargs):
        raise RuntimeError("parallel_for_dynamic error with Check failed: old_outputs.size() "
                           "== new_outputs.size() (20 vs. 19) :\nTraceback (most recent call "
                           "last):\n  File ...")

    monkeypatch.setattr(ms, "tune_tasks", failing)
    db = tmp_path / "db"
    result = invoke("tune", *MODEL, "--ops", "grouped", "--trials", "200", "--db", str(db))
    assert_one_line_error(result, "failed inside MetaSchedule", "old_outputs.size()")
    records.check_database(db)


def test_target_tvm_rejects(tmp_path):
    """A target TVM refuses is reported before any work."""
    result = invoke("tune", *MODEL, "--target", '{"kind": "llvm", "mtriple": 7}',
                    "--db", str(tmp_path / "db"))
    assert result.exit_code != 0 and result.stderr.startswith("Error: ")


def test_ctrl_c_keeps_records_and_stops_servers(tmp_path):
    """SIGINT mid-tuning: exit 130, records so far intact and loadable, no server left."""
    db = tmp_path / "db"
    # as from a terminal: a suite started in the background (`cmd &` in a script) inherits SIGINT
    # ignored, and a Python started so never installs its KeyboardInterrupt handler
    proc = subprocess.Popen(
        [sys.executable, "-m", "tvmshuffle.cli", "tune", *MODEL, "--ops", "all", "--trials",
         "64", "--db", str(db)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    record_file = db / records.RECORD_FILE
    deadline = time.monotonic() + 400
    while (not record_file.exists() or len(record_file.read_bytes().splitlines()) < 2):
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "no record written in time"
        time.sleep(1)
    servers = [child for child in psutil.Process(proc.pid).children(recursive=True)
               if "tvm.exec.rpc_" in " ".join(child.cmdline())]
    assert len(servers) == 2, "the embedded tracker and device server"
    started = time.monotonic()
    records_then = len(record_file.read_bytes().splitlines())
    os.killpg(proc.pid, signal.SIGINT)
    # the batch being measured finishes first: under a loaded CI machine that can take minutes
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, (
        f"exit {proc.returncode} {time.monotonic() - started:.0f} s after SIGINT, sent at "
        f"{records_then} records, ended at {len(record_file.read_bytes().splitlines())}: "
        f"{stderr.decode()[-2000:]}")
    assert "Error: interrupted" in stderr.decode()
    records.check_database(db)  # every line still parses
    assert len(record_file.read_bytes().splitlines()) >= 2
    assert not [server for server in servers if server.is_running()
                and server.status() != psutil.STATUS_ZOMBIE], "servers left running"


@pytest.mark.parametrize("sig, delay, code, word", [
    (signal.SIGINT, 6.0, 130, "interrupted"), (signal.SIGTERM, 25.0, 143, "terminated")])
def test_a_signal_before_measuring_ends_at_once(tmp_path, sig, delay, code, word):
    """Ctrl-C or SIGTERM while the model is imported or its kernels are found (TVM's C++ passes
    calling back into Python): one line and the signal's exit code within seconds, no
    traceback, no server left, no database begun (it used to give a C++ traceback, or be
    swallowed and the tune run to its end)."""
    db = tmp_path / "db"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tvmshuffle.cli", "tune", *MODEL, "--ops", "all", "--trials",
         "40", "--db", str(db)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(delay)
    assert proc.poll() is None, proc.stderr.read().decode()
    children = psutil.Process(proc.pid).children(recursive=True)
    if (db / records.RECORD_FILE).exists():
        pytest.skip("this machine reached measuring before the signal")
    os.killpg(proc.pid, sig)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stderr.decode()[-2000:]
    assert stderr.decode().strip().splitlines() == [f"Error: {word}"]
    assert not (db / records.RECORD_FILE).exists()
    time.sleep(1)
    assert not [child for child in children if child.is_running()
                and child.status() != psutil.STATUS_ZOMBIE], "processes left running"


@pytest.mark.parametrize("sig, code, word", [
    (signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")])
def test_a_signal_while_compiling_ends_at_once(tmp_path, sig, code, word):
    """SIGTERM or Ctrl-C during `compile` (import, graph passes, the build, the export): one
    line and the signal's exit code, no traceback, and never a manifest beside a library it
    does not describe."""
    out = tmp_path / "o"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tvmshuffle.cli", "compile", *MODEL, "-o", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not out.exists():  # made before the import starts (a bad folder fails at once)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "compile never started"
        time.sleep(0.2)
    time.sleep(8.0)  # into the import or the build
    if proc.poll() is not None:
        pytest.skip("this machine compiled the model before the signal")
    os.killpg(proc.pid, sig)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stderr.decode()[-2000:]
    assert stderr.decode().strip().splitlines() == [f"Error: {word}"]
    assert not (out / "manifest.json").exists()


def test_the_only_device_dying_mid_tuning_ends_it_with_exit_6(tracker, tmp_path):
    """One device under a key, killed mid-run: the tune ends with exit 6 and one line saying
    no device is left, in bounded time (it used to wait for the tracker forever), keeping
    every record written before."""
    key_config = remote.TrackerConfig(tracker.host, tracker.port, "solo")
    server = spawn_server(tracker, "solo")
    try:
        wait_registered(key_config, server, 120)
        db = tmp_path / "db"
        proc = subprocess.Popen(
            [sys.executable, "-m", "tvmshuffle.cli", "tune", *MODEL, "--ops", "grouped",
             "--trials", "64", "--timeout", "20", "--db", str(db), "--rpc-tracker",
             tracker.address, "--rpc-key", "solo"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        record_file = db / records.RECORD_FILE
        deadline = time.monotonic() + 600
        while not record_file.exists() or len(record_file.read_bytes().splitlines()) < 2:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no record written in time"
            time.sleep(0.5)
        os.killpg(server.pid, signal.SIGKILL)
        at_kill = len(record_file.read_bytes().splitlines())
        _, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 6, stderr.decode()[-2000:]
        lines = stderr.decode().strip().splitlines()
        assert lines[-1].startswith("Error: ") and "no device registered under key 'solo'" \
            in lines[-1], lines
        records.check_database(db)
        assert len(record_file.read_bytes().splitlines()) >= at_kill
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)


def test_a_device_dying_mid_tuning_does_not_stop_it(tracker, tmp_path):
    """Two devices under a key, one killed mid-run: tuning finishes on the other, every record
    written before and after is kept."""
    key_config = remote.TrackerConfig(tracker.host, tracker.port, "dual")
    servers = [spawn_server(tracker, "dual") for _ in range(2)]
    try:
        deadline = time.monotonic() + 120
        wait_registered(key_config, servers[0], 120, count=2)
        db = tmp_path / "db"
        proc = subprocess.Popen(
            [sys.executable, "-m", "tvmshuffle.cli", "tune", *MODEL, "--ops", "depthwise",
             "--trials", "12", "--timeout", "20", "--db", str(db), "--rpc-tracker",
             tracker.address, "--rpc-key", "dual", "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        record_file = db / records.RECORD_FILE
        while not record_file.exists() or not record_file.read_bytes().strip():
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline + 600, "no record written in time"
            time.sleep(0.5)
        os.killpg(servers[0].pid, signal.SIGKILL)
        at_kill = len(record_file.read_bytes().splitlines())
        stdout, stderr = proc.communicate(timeout=900)
        assert proc.returncode == 0, stderr.decode()[-2000:]
        data = json.loads(stdout)
        records.check_database(db)
        assert len(record_file.read_bytes().splitlines()) > at_kill, "tuning went on"
        written = sum(t["trials_run"] + t["kept_untuned"] for t in data["tasks"])
        assert written == len(record_file.read_bytes().splitlines())
    finally:
        for server in servers:
            if server.poll() is None:
                os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def test_the_unscheduled_kernel_is_kept_when_it_is_faster(tmp_path):
    """A kernel whose unscheduled form beat every candidate is recorded with a no-op trace and
    its measured time; a slower one is not; compile applies the record and stays correct."""
    from tvmshuffle import frontends, target

    db_dir = tmp_path / "db"
    config = tune.TuneConfig(target.resolve("host"), db_dir)
    tasks = tune.extract_tasks(frontends.load(frontends.ModelSpec(MODEL[0], (64, 64))).mod,
                               config)
    task = next(t for t in tasks if t.name.startswith("max_pool2d"))
    database = records.open_database(db_dir)
    records.write_method(db_dir, config.method)  # as a tune writes it: compile follows it
    assert tune.keep_untuned_if_faster(database, task, [2e-6, 2e-6], None)
    best = records.best_ms(database.get_all_tuning_records())
    assert not tune.keep_untuned_if_faster(database, task, [1e-3], best), "slower: not recorded"
    (record,) = database.get_all_tuning_records()
    assert len(record.trace.insts) == 1 and records.best_ms([record]) == pytest.approx(2e-3)

    out = tmp_path / "out"
    result = invoke("compile", *MODEL, "--db", str(db_dir), "-o", str(out), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["tuning"]["tuned_kernels"] == [task.name]
    run = json.loads(invoke("run", str(out), "--json", "--repeat", "2").stdout)
    assert run["max_abs_err"] < 1e-4


def test_schedules_of_another_cpu_are_retimed_here_before_tuning(tracker, depthwise_db,
                                                                 tmp_path):
    """Records measured on a sibling CPU (another mcpu) do not count as this CPU's: a tune
    first re-times the fastest distinct ones here and records them with this target (once: a
    re-run re-times nothing), and compile picks from those; its manifest counts the kernels it
    compiled with another CPU's records."""
    from tvmshuffle import target

    ours = json.loads(str(target.resolve("host").tvm_target))["mcpu"]
    sibling = "znver3" if ours != "znver3" else "znver4"
    db = depthwise_db  # two depthwise tasks, five schedules each
    device = ("--rpc-tracker", tracker.address, "--rpc-key", tracker.key)
    # the same records as a sibling CPU would have made them
    foreign = [line.replace(f'"mcpu":"{ours}"'.encode(), f'"mcpu":"{sibling}"'.encode())
               for line in record_lines(db)]
    assert all(f'"{sibling}"'.encode() in line for line in foreign)
    (db / records.RECORD_FILE).write_bytes(b"\n".join(foreign) + b"\n")
    result = invoke("compile", *MODEL, "--db", str(db), "-o", str(tmp_path / "out"), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["tuning"]["measured_elsewhere"] == {sibling: 2}

    # a budget the records already cover: this run only re-times
    first = tune_json("--ops", "depthwise", "--trials-per-task", "1", "--trials", "1", "--db",
                      str(db), *device)
    tasks = [t for t in first["tasks"] if t["remeasured"]]
    assert len(tasks) == 2 and all(t["remeasured"] == tune.REMEASURE for t in tasks)
    assert all(t["trials_before"] == tune.REMEASURE and t["trials_run"] == 0 for t in tasks)
    lines = record_lines(db)
    assert lines[:len(foreign)] == foreign, "appended, nothing rewritten"
    retimed = [json.loads(line) for line in lines[len(foreign):]]
    assert len(retimed) == 2 * tune.REMEASURE
    assert all(r[1][2]["mcpu"] == ours for r in retimed)
    assert {json.dumps(r[1][0]) for r in retimed} <= {json.dumps(json.loads(f)[1][0])
                                                      for f in foreign}

    again = tune_json("--ops", "depthwise", "--trials-per-task", "1", "--trials", "1", "--db",
                      str(db), *device)
    assert sum(t["remeasured"] for t in again["tasks"]) == 0 and record_lines(db) == lines
    result = invoke("compile", *MODEL, "--db", str(db), "-o", str(tmp_path / "out"), "--json")
    assert result.exit_code == 0, result.output
    tuning = json.loads(result.stdout)["tuning"]
    assert {t["name"] for t in tasks} <= set(tuning["tuned_kernels"])
    assert tuning["measured_elsewhere"] == {}
