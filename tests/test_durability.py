"""Nothing lost, nothing left behind: a tuning database shared by several processes and left by
a crash (`dbfiles`, `taskdb`) keeps every record under its own kernel, sets a torn last line
aside without a person and reads a workload written twice as one; embedded servers and scratch
folders do not outlive a killed process; a silent tracker is an error in bounded time."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from tvmshuffle import records, taskdb

from test_databases import _commit, _host, _kernel

WRITER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {tests!r})
    from pathlib import Path
    from tvmshuffle import records, taskdb
    from test_databases import _commit, _host, _kernel
    db, proc = Path(sys.argv[1]), int(sys.argv[2])
    here = _host("znver4").tvm_target
    # each process a kernel of its own and one every process shares
    scales = [1.0 + proc, 0.5]
    mods = {{scale: _kernel(scale) for scale in scales}}
    view = taskdb.TaskDatabase(db, list(mods.values()))
    for i in range(6):
        for scale, mod in mods.items():
            # the time says which kernel and which process wrote it
            _commit(view.database, mod, scale * 1e-3 + proc * 1e-6 + i * 1e-8, here)
        view.sync()
        time.sleep(0.05)
    view.close()
""")


def _scale_of(secs: float) -> float:
    return round(secs * 1e3, 1)


@pytest.mark.parametrize("writers", [2, 4])
def test_concurrent_tunes_keep_every_record_under_its_own_kernel(tmp_path, writers):
    """Two or four processes append to one database at once, each its own kernel and one
    shared kernel: no workload is written twice, every record is present and names the kernel
    it was measured on."""
    db = tmp_path / "db"
    script = tmp_path / "writer.py"
    script.write_text(WRITER.format(tests=str(Path(__file__).parent)))
    procs = [subprocess.Popen([sys.executable, str(script), str(db), str(p)],
                              stderr=subprocess.PIPE) for p in range(writers)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()[-2000:]
    workloads = [json.loads(line)[0]
                 for line in (db / records.WORKLOAD_FILE).read_text().splitlines()]
    assert len(workloads) == len(set(workloads)) == writers + 1, "own kernels + 1 shared, once"
    scales = [1.0, 2.0, 3.0, 4.0][:writers] + [0.5]
    expected = dict(zip(scales, records.workload_hashes(db, [_kernel(s) for s in scales])))
    lines = [json.loads(line) for line in (db / records.RECORD_FILE).read_text().splitlines()]
    assert len(lines) == writers * 6 * 2
    for index, record in lines:
        assert workloads[index] == expected[_scale_of(float(record[1][0]))]
    ranked = records.read_ranked(db, _host("znver4").tvm_target)
    assert sorted(len(entries) for entries in ranked.records.values()) == \
        [6] * writers + [6 * writers]


def _one_record(db: Path):
    """A database in ``db`` with one record of one kernel: (target, kernel, record file)."""
    here = _host("znver4").tvm_target
    mod = _kernel(2.0)
    view = taskdb.TaskDatabase(db, [mod])
    _commit(view.database, mod, 1e-6, here)
    view.close()
    return here, mod, db / records.RECORD_FILE


def test_a_torn_last_line_is_set_aside_and_the_tune_goes_on(tmp_path, caplog):
    """A record line cut short by a crash (no newline, not JSON): compile reads around it and
    leaves the file alone; the next tune copies it to <file>.torn-<time>, truncates it away,
    says so, and appends after the intact lines."""
    here, mod, record_file = _one_record(tmp_path)
    intact = record_file.read_bytes()
    record_file.write_bytes(intact + b'[0, [[["GetSBlock", [], ["ro')
    assert len(records.read_ranked(tmp_path, here).records[0]) == 1
    assert record_file.read_bytes().endswith(b'["ro'), "a reader repairs nothing"

    view = taskdb.TaskDatabase(tmp_path, [mod])
    assert "cut short" in caplog.text
    (aside,) = tmp_path.glob(f"{records.RECORD_FILE}.torn-*")
    assert aside.read_bytes() == b'[0, [[["GetSBlock", [], ["ro'
    assert record_file.read_bytes() == intact
    _commit(view.database, mod, 2e-6, here)
    view.close()
    assert record_file.read_bytes().startswith(intact)
    assert len(records.read_ranked(tmp_path, here).records[0]) == 2


def test_a_torn_workload_line_is_set_aside_and_the_tune_goes_on(tmp_path, caplog):
    """The same for the workload file, whose line numbers the records point at: the torn
    last workload goes aside, every intact line keeps its number, the next tune appends."""
    here, mod, record_file = _one_record(tmp_path)
    workload_file = tmp_path / records.WORKLOAD_FILE
    intact = workload_file.read_bytes()
    workload_file.write_bytes(intact + b'["4f1c", ["tirx.Pr')
    assert len(records.read_ranked(tmp_path, here).records[0]) == 1

    view = taskdb.TaskDatabase(tmp_path, [mod, _kernel(3.0)])
    assert "cut short" in caplog.text
    (aside,) = tmp_path.glob(f"{records.WORKLOAD_FILE}.torn-*")
    assert aside.read_bytes() == b'["4f1c", ["tirx.Pr'
    assert workload_file.read_bytes().startswith(intact)
    _commit(view.database, mod, 2e-6, here)
    view.close()
    assert len(records.read_ranked(tmp_path, here).records[0]) == 2


def test_a_whole_last_line_without_its_newline_is_kept(tmp_path):
    """A last line that parses but lacks its newline is a record: ended, not set aside."""
    here, mod, record_file = _one_record(tmp_path)
    record_file.write_bytes(record_file.read_bytes().rstrip(b"\n"))
    taskdb.TaskDatabase(tmp_path, [mod]).close()
    assert record_file.read_bytes().endswith(b"\n")
    assert not list(tmp_path.glob("*.torn-*"))
    assert len(records.read_ranked(tmp_path, here).records[0]) == 1


def test_a_workload_written_twice_is_read_as_one(tmp_path):
    """Two unlocked tunes of an older version could write a workload twice and records under
    both lines: compile ranks them together, and a tune sees all of them."""
    here = _host("znver4").tvm_target
    mod = _kernel(2.0)
    view = taskdb.TaskDatabase(tmp_path, [mod])
    _commit(view.database, mod, 2e-6, here)
    view.close()
    workload_file, record_file = tmp_path / records.WORKLOAD_FILE, tmp_path / records.RECORD_FILE
    workload_file.write_bytes(workload_file.read_bytes() * 2)
    record = json.loads(record_file.read_text())[1]
    record[1] = [1e-6]
    with open(record_file, "a") as f:
        f.write(json.dumps([1, record]) + "\n")
    ranked = records.read_ranked(tmp_path, here)
    assert list(ranked.records) == [0] and len(ranked.records[0]) == 2
    view = taskdb.TaskDatabase(tmp_path, [mod])
    assert sorted(float(r.run_secs[0]) for r in view.database.get_all_tuning_records()) == \
        [1e-6, 2e-6]
    view.close()


def test_a_corrupt_line_in_the_middle_names_its_place_with_safe_advice(tmp_path):
    """Damage that is no torn tail stops with file:line; for the workload file the advice is
    not to delete the line (records name workloads by line number)."""
    from tvmshuffle.errors import DatabaseError

    here = _host("znver4").tvm_target
    (tmp_path / records.WORKLOAD_FILE).write_text('["1", "x"]\nnot json\n["2", "y"]\n')
    (tmp_path / records.RECORD_FILE).write_text("")
    with pytest.raises(DatabaseError, match=r"database_workload.json:2: .*do not delete it"):
        records.read_ranked(tmp_path, here)


def test_stale_scratch_folders_of_dead_tunes_are_removed(tmp_path, monkeypatch):
    """A tune killed with -9 leaves its scratch folder; the next tune removes the folders of
    processes that are gone, and keeps those of live ones."""
    import os
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f"{taskdb.SCRATCH_PREFIX}{dead.pid}-abc"
    live = tmp_path / f"{taskdb.SCRATCH_PREFIX}{os.getpid()}-abc"
    for path in (stale, live):
        path.mkdir()
        (path / records.RECORD_FILE).write_text("")
    assert taskdb.remove_stale_scratch() == [stale]
    assert not stale.exists() and live.exists()


@pytest.mark.slow
def test_embedded_servers_die_with_a_process_killed_with_9():
    """kill -9 of a process running the embedded tracker and device leaves neither (nor their
    workers) listening: their watchdog ends their process group."""
    import os
    import signal
    import time

    import psutil

    code = ("import time\nfrom tvmshuffle import remote\nwith remote.embedded_device() as c:\n"
            "    print(c.address, flush=True)\n    time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip(), "the embedded device started"
    children = psutil.Process(proc.pid).children(recursive=True)
    assert len(children) >= 2
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        alive = [c for c in children
                 if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
        if not alive:
            break
        time.sleep(0.5)
    assert not alive, [c.cmdline() for c in alive]


def test_a_silent_tracker_is_an_error_in_bounded_time():
    """A tracker that accepts connections and never answers: the query ends with a
    DeviceError saying what was waited for and how long, not a hang."""
    import time

    from conftest import silent_tracker
    from tvmshuffle import remote
    from tvmshuffle.errors import DeviceError

    start = time.monotonic()
    with silent_tracker() as port:
        config = remote.TrackerConfig("127.0.0.1", port, "any")
        with pytest.raises(DeviceError, match="did not answer within 2 s"):
            remote.free_devices(config, timeout=2)
    assert time.monotonic() - start < 30


def test_a_refused_connection_says_so_without_a_wait_it_did_not_make():
    """Nobody listening: 'unreachable (Connection refused)', no 'after N s'."""
    from tvmshuffle import remote
    from tvmshuffle.errors import DeviceError

    config = remote.TrackerConfig("127.0.0.1", remote._free_port(), "any")
    with pytest.raises(DeviceError, match=r"unreachable \(Connection refused\)$"):
        remote.summary(config, timeout=10)


class _Done:
    def __init__(self, result):
        self._result = result

    def result(self):
        return self._result


class _FakeBuilder:
    """Builds 'kernels' (strings) into scratch folders; 'bad-build' fails."""

    def __init__(self, tmp_path):
        self.tmp_path = tmp_path

    def build(self, inputs):
        from tvm.s_tir import meta_schedule as ms

        out = []
        for n, inp in enumerate(inputs):
            if inp.mod.get_global_vars()[0].name_hint == "bad_build":
                out.append(ms.builder.BuilderResult(None, "build failed: bad"))
            else:
                folder = self.tmp_path / f"build-{n}"
                folder.mkdir()
                out.append(ms.builder.BuilderResult(str(folder / "candidate.so"), None))
        return out


class _FakeRunner:
    def __init__(self, outcomes):
        self.outcomes = outcomes  # per run: seconds, or an error message

    def run(self, inputs):
        from tvm.s_tir import meta_schedule as ms

        return [_Done(ms.runner.RunnerResult(None, o) if isinstance(o, str)
                      else ms.runner.RunnerResult([o], None))
                for o in self.outcomes[:len(inputs)]]


def test_a_batch_whose_every_run_failed_with_no_device_left_is_not_the_kernels_failure(
        tmp_path):
    """Of one batch: a kernel that failed to build, or failed to run while another ran, or
    while a device is still there, failed by itself (the caller records it, as MetaSchedule
    does); when every run failed and no device is left under the key, the device was lost,
    and those runs are not returned as the kernels' failures (they would be recorded as 1e10 s
    and never timed again: a lost phone must not cost a kernel its default)."""
    import tvm
    from tvm import tirx
    from tvmshuffle.tune.builders import _build_and_run

    def kernel(name):
        return (tvm.IRModule({name: tirx.PrimFunc([], tirx.Evaluate(0))}),
                tvm.target.Target("llvm"), [])

    kernels = [kernel("bad_build"), kernel("a"), kernel("b")]
    failing = ["RPCError: connection reset", "RPCError: refused"]

    def runs(outcomes, folder, device_left=None):
        (tmp_path / folder).mkdir()
        found = _build_and_run(_FakeBuilder(tmp_path / folder), _FakeRunner(outcomes), kernels,
                               device_left=device_left)
        assert not list((tmp_path / folder).iterdir())  # build folders removed either way
        return [(i, step, secs) for i, step, _, secs in found]

    assert runs([1e-3, "crashed"], "1", lambda: False) == [
        (0, "build", None), (1, "run", [1e-3]), (2, "run", None)]
    assert runs(failing, "2", lambda: True) == [
        (0, "build", None), (1, "run", None), (2, "run", None)]
    assert runs(failing, "3", lambda: False) == [(0, "build", None)]
