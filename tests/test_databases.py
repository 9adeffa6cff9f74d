"""Which tuning database `tune`, `compile` and `compare` use when none is given, and how
compile reads one."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import assert_one_line_error, invoke
from tvmshuffle import records, target, taskdb, tune
from tvmshuffle.errors import DatabaseError


def _host(mcpu: str) -> target.TargetConfig:
    return target.TargetConfig.from_json({"name": "host", "tvm": {
        "kind": "llvm", "mtriple": "x86_64-unknown-linux-gnu", "mcpu": mcpu, "num-cores": 1}})


def _make_db(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / records.RECORD_FILE).write_text("")
    return path


def test_a_host_cpu_uses_its_own_database_first(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _make_db(tmp_path / "schedules" / "host-znver4")
    assert records.default_db_dir(_host("znver4"), "generic") == Path("schedules/host-znver4")
    assert records.shipped_db_dir(_host("znver4"), "generic") == Path("schedules/host-znver4")


def test_a_host_cpu_without_a_database_uses_a_siblings(tmp_path, monkeypatch):
    """Zen 4, Zen 5 and Intel's AVX-512 CPUs share a vector ISA: such a host with no database
    of its own applies and resumes the Zen 5 one, here or shipped beside the package."""
    monkeypatch.chdir(tmp_path)
    sibling = _make_db(tmp_path / "schedules" / "host-znver5")
    for cpu in ("znver4", "skylake-avx512", "rocketlake"):
        assert records.default_db_dir(_host(cpu), "generic") == Path("schedules/host-znver5")
        assert records.shipped_db_dir(_host(cpu), "generic") == Path("schedules/host-znver5")
    (sibling / records.RECORD_FILE).unlink()
    shipped = Path(records.__file__).resolve().parent.parent / "schedules" / "host-znver5"
    if (shipped / records.RECORD_FILE).exists():  # a source checkout
        assert records.shipped_db_dir(_host("znver4"), "generic") == shipped


def test_a_host_cpu_without_siblings_gets_a_new_database(tmp_path, monkeypatch):
    """A CPU of a vector ISA no database has (AVX2 only, when only AVX-512 records exist), or
    one LLVM does not know, tunes its own; the checkout's shipped databases are out of play."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(records, "SOURCE_ROOT", tmp_path / "no-checkout")
    _make_db(tmp_path / "schedules" / "host-znver5")
    _make_db(tmp_path / "schedules" / "host-not-a-cpu")
    for cpu in ("haswell", "x86-64", "not-a-cpu"):
        assert records.default_db_dir(_host(cpu), "generic") == Path(f"schedules/host-{cpu}")
    assert records.shipped_db_dir(_host("haswell"), "generic") is None


def test_an_avx2_host_uses_the_avx2_database(tmp_path, monkeypatch):
    """An AVX2 CPU with no database of its own (Haswell) applies the one tuned on Zen 3
    (znver3: AVX2 as its widest vector ISA), not the AVX-512 one."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(records, "SOURCE_ROOT", tmp_path / "no-checkout")
    _make_db(tmp_path / "schedules" / "host-znver5")
    _make_db(tmp_path / "schedules" / "host-znver3")
    for cpu in ("haswell", "znver2", "alderlake"):
        assert records.default_db_dir(_host(cpu), "generic") == Path("schedules/host-znver3")


def _scheduled(mod, split: bool, factor: int = 4):
    from tvm import s_tir

    schedule = s_tir.Schedule(mod)
    block = schedule.get_sblock("C")
    if split:
        i, _ = schedule.get_loops(block)
        schedule.split(i, factors=[None, factor])
    return schedule.trace


def test_compile_prefers_records_measured_on_its_own_cpu(tmp_path):
    """Times measured on another CPU do not compare with this one's: per kernel, the best
    record with the compile target wins when there is one (even if another CPU's time is
    lower), else the best of all."""
    import tvm
    from tvm import te
    from tvm.s_tir import meta_schedule as ms

    a = te.placeholder((16, 16), name="A")
    c = te.compute((16, 16), lambda i, j: a[i, j] * 2.0, name="C")
    mod = tvm.IRModule({"main": te.create_prim_func([a, c])})
    here, there, elsewhere = (_host(cpu).tvm_target for cpu in ("znver4", "znver5", "znver3"))
    database = records.open_database(tmp_path)
    workload = database.commit_workload(mod)
    args = ms.arg_info.ArgInfo.from_prim_func(mod["main"])
    for split, secs, where in ((True, 1e-6, there), (False, 3e-6, here), (True, 2e-6, here)):
        database.commit_tuning_record(ms.database.TuningRecord(
            _scheduled(mod, split), workload, [secs], where, args))

    picked = records.apply_database(tmp_path, here).query_tuning_record(mod, here, "main")
    assert [float(s) for s in picked.run_secs] == [2e-6] and str(picked.target) == str(here)
    fallback = records.apply_database(tmp_path, elsewhere).query_tuning_record(mod, elsewhere,
                                                                            "main")
    assert [float(s) for s in fallback.run_secs] == [1e-6]


@pytest.mark.parametrize("line,fragment", [
    ('[0, [[], [1e-05], {"kind": "llvm"}\n', f"{records.RECORD_FILE}:1: corrupt line"),
    ('[0, "schedule"]\n', "record 1 is not a MetaSchedule tuning record"),
    ('[3, [[], [1e-05], {"kind": "llvm"}, []]]\n', "record 1 names workload 3, but"),
    ('[0, [[], [1e-05], {"kind": "no-such-kind"}, []]]\n', "record 1 has a target TVM rejects"),
])
def test_compile_names_a_bad_record(line, fragment, tmp_path):
    """compile reads a database's lines itself (parsing every schedule took 45 s a compile):
    a line it cannot use is named in one line, before any build."""
    db = _make_db(tmp_path / "db")
    (db / records.WORKLOAD_FILE).write_text('["1", "x"]\n')
    (db / records.RECORD_FILE).write_text(line)
    result = invoke("compile", "shufflenet_v1_g3_0.25x", "--input-size", "64x64", "--db",
                    str(db), "-o", str(tmp_path / "out"))
    assert_one_line_error(result, fragment)


def _kernel(scale: float):
    import tvm
    from tvm import te

    a = te.placeholder((16, 16), name="A")
    c = te.compute((16, 16), lambda i, j: a[i, j] * scale, name="C")
    return tvm.IRModule({"main": te.create_prim_func([a, c])})


def _commit(database, mod, secs: float, target) -> None:
    from tvm.s_tir import meta_schedule as ms

    database.commit_tuning_record(ms.database.TuningRecord(
        _scheduled(mod, True), database.commit_workload(mod), [secs], target,
        ms.arg_info.ArgInfo.from_prim_func(mod["main"])))


def test_a_tune_sees_its_kernels_records_and_appends_to_the_database(tmp_path):
    """tune parses only the records of the kernels it tunes (all of a large database took
    45 s); what it records, for a kernel new or old, reaches the database's own files after
    sync, appended after the lines that were there, and reads back under the right kernel."""
    here = _host("znver4").tvm_target
    doubled, tripled, halved = _kernel(2.0), _kernel(3.0), _kernel(0.5)
    full = records.open_database(tmp_path)
    _commit(full, doubled, 1e-6, here)
    _commit(full, tripled, 2e-6, here)
    _commit(full, tripled, 3e-6, here)
    del full
    before = {name: (tmp_path / name).read_bytes() for name in (records.WORKLOAD_FILE,
                                                                 records.RECORD_FILE)}

    view = taskdb.TaskDatabase(tmp_path, [tripled, halved])
    assert sorted(float(r.run_secs[0]) for r in view.database.get_all_tuning_records()) == \
        [2e-6, 3e-6]
    _commit(view.database, tripled, 4e-6, here)
    _commit(view.database, halved, 5e-6, here)  # a kernel the database did not have
    view.sync()
    view.sync()  # nothing new: nothing written twice
    after = {name: (tmp_path / name).read_bytes() for name in before}
    for name in before:
        assert after[name].startswith(before[name]) and after[name] != before[name]
    _commit(view.database, halved, 6e-6, here)
    view.close()

    reopened = records.open_database(tmp_path)
    times = {scale:
             sorted(float(r.run_secs[0]) for r in reopened.get_all_tuning_records()
                    if r.workload.same_as(reopened.commit_workload(mod)))
             for scale, mod in ((2.0, doubled), (3.0, tripled), (0.5, halved))}
    assert times == {2.0: [1e-6], 3.0: [2e-6, 3e-6, 4e-6], 0.5: [5e-6, 6e-6]}


def test_compile_follows_a_pick_until_a_faster_record_comes(tmp_path):
    """A kernel's schedule picked in the network (tvmshuffle pick) is compiled instead of its
    fastest record, for the target it was picked on, until a later tune records one faster
    than the fastest it was picked against."""
    import json

    from tvm.s_tir import meta_schedule as ms

    mod = _kernel(2.0)
    here, there = _host("znver4").tvm_target, _host("znver5").tvm_target
    database = records.open_database(tmp_path)
    workload = database.commit_workload(mod)
    args = ms.arg_info.ArgInfo.from_prim_func(mod["main"])
    for factor, secs in ((4, 1e-6), (2, 2e-6)):
        database.commit_tuning_record(ms.database.TuningRecord(
            _scheduled(mod, True, factor), workload, [secs], here, args))
    lines = (tmp_path / records.RECORD_FILE).read_text().splitlines()
    slower_trace = json.loads(lines[1])[1][0]
    shash = json.loads((tmp_path / records.WORKLOAD_FILE).read_text().splitlines()[0])[0]
    records.append_picks(tmp_path, [{"workload": shash, "trace": records.trace_key(slower_trace),
                                     "target": str(here), "fastest_ms": 1e-3}])

    def compiled_secs(target):
        record = records.apply_database(tmp_path, target).query_tuning_record(mod, target,
                                                                              "main")
        return [float(s) for s in record.run_secs]

    assert compiled_secs(here) == [2e-6], "the pick"
    ranked = records.read_ranked(tmp_path, here)
    assert len(records.choose(ranked, records.read_picks(tmp_path, here))[1]) == 1
    unpicked = records.apply_database(tmp_path, here, with_picks=False)
    assert [float(s) for s in unpicked.query_tuning_record(mod, here, "main").run_secs] == [1e-6]
    database.commit_tuning_record(ms.database.TuningRecord(
        _scheduled(mod, True, 2), workload, [1e-6], there, args))
    assert compiled_secs(here) == [2e-6], "another CPU's record does not make a pick stale"
    database.commit_tuning_record(ms.database.TuningRecord(
        _scheduled(mod, True, 8), workload, [5e-7], here, args))
    assert compiled_secs(here) == [5e-7], "stale: a faster record came"


def test_a_bad_pick_line_is_named(tmp_path):
    db = _make_db(tmp_path / "db")
    (db / records.PICKS_FILE).write_text('{"workload": "1", "target": "x"}\n')
    with pytest.raises(DatabaseError, match="tvmshuffle_picks.json: line 1 is not a pick"):
        records.read_picks(db, _host("znver4").tvm_target)
