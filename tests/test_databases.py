"""Which tuning database `tune`, `compile` and `compare` use when none is given, and how
compile reads one."""

from __future__ import annotations

import lzma
import os
from pathlib import Path

import pytest
from conftest import assert_one_line_error, invoke
from tvmshuffle import cachedir, places, records, target, taskdb
from tvmshuffle.errors import DatabaseError


def _host(mcpu: str) -> target.TargetConfig:
    return target.TargetConfig.from_json({"name": "host", "tvm": {
        "kind": "llvm", "mtriple": "x86_64-unknown-linux-gnu", "mcpu": mcpu, "num-cores": 1}})


def _make_db(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / records.RECORD_FILE).write_text("")
    return path


@pytest.fixture
def shipped(tmp_path, monkeypatch):
    """A shipped root of this test's own (the package's databases out of play), the user's
    folder in TVMSHUFFLE_HOME, and the working directory elsewhere."""
    root = tmp_path / "shipped"
    root.mkdir()
    monkeypatch.setattr(places, "PACKAGE_SCHEDULES", root)
    monkeypatch.setenv(places.HOME_ENV, str(tmp_path / "home"))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return root


def test_a_compressed_shipped_database_is_unpacked_once_into_the_cache(shipped, tmp_path,
                                                                      monkeypatch):
    """`compact --compress` stores the large files as .xz; the shipped database is read from a
    plain copy in the cache folder, made once per content (a second lookup reuses it, a changed
    database gets a new one); a damaged .xz is one DatabaseError."""
    monkeypatch.setenv(cachedir.CACHE_ENV, str(tmp_path / "cache"))
    db = shipped / "host-znver4"
    db.mkdir()
    lines = b'[0, [["trace"], [1e-05]]]\n'
    (db / (records.RECORD_FILE + places.PACKED)).write_bytes(lzma.compress(lines))
    (db / (records.WORKLOAD_FILE + places.PACKED)).write_bytes(lzma.compress(b"{}\n"))
    (db / records.METHOD_FILE).write_text('{"prepack": false, "flush_caches": false}')
    assert places.has_records(db)
    first = places.shipped_db(_host("znver4"), "generic")
    assert first.parent == tmp_path / "cache" / "shipped" and first != db
    assert (first / records.RECORD_FILE).read_bytes() == lines
    assert (first / records.METHOD_FILE).is_file()
    stamp = (first / records.RECORD_FILE).stat().st_mtime_ns
    assert places.shipped_db(_host("znver4"), "generic") == first
    assert (first / records.RECORD_FILE).stat().st_mtime_ns == stamp
    (db / (records.RECORD_FILE + places.PACKED)).write_bytes(lzma.compress(lines * 2))
    second = places.shipped_db(_host("znver4"), "generic")
    assert second != first and (second / records.RECORD_FILE).read_bytes() == lines * 2
    # --db naming it: compile reads the unpacked copy, tune and pick refuse to append to it
    from tvmshuffle import export, picks

    assert export.CompileConfig(_host("znver4"), db=db).db == second
    result = invoke("tune", "shufflenet_v1_g3_0.25x", "--db", str(db), "--trials", "2")
    assert_one_line_error(result, "compressed shipped database, read-only", exit_code=2)
    with pytest.raises(places.BadInputError, match="read-only"):
        picks.PickConfig(_host("znver4"), db)
    (db / (records.RECORD_FILE + places.PACKED)).write_bytes(b"not xz")
    with pytest.raises(DatabaseError, match="cannot unpack the shipped database"):
        places.shipped_db(_host("znver4"), "generic")
    assert not [p for p in first.parent.iterdir() if p.name.startswith(".")], "no half copy"


def test_a_host_cpu_uses_its_own_shipped_database_first(shipped):
    _make_db(shipped / "host-znver4")
    _make_db(shipped / "host-znver5")
    assert places.shipped_db(_host("znver4"), "generic") == shipped / "host-znver4"


def test_a_host_cpu_without_a_database_uses_a_siblings(shipped):
    """Zen 4, Zen 5 and Intel's AVX-512 CPUs share a vector ISA: such a host with no shipped
    database of its own applies and starts from the Zen 5 one."""
    _make_db(shipped / "host-znver5")
    for cpu in ("znver4", "skylake-avx512", "rocketlake"):
        assert places.shipped_db(_host(cpu), "generic") == shipped / "host-znver5"


def test_a_host_cpu_without_siblings_gets_none(shipped):
    """A CPU of a vector ISA no database has (AVX2 only, when only AVX-512 records exist), or
    one LLVM does not know, has no shipped database; a folder without records is none."""
    _make_db(shipped / "host-znver5")
    (shipped / "host-haswell").mkdir()
    for cpu in ("haswell", "x86-64", "not-a-cpu"):
        assert places.shipped_db(_host(cpu), "generic") is None
        assert places.compile_dbs(_host(cpu), "generic") == (None, ())


def test_an_avx2_host_uses_the_avx2_database(shipped):
    """An AVX2 CPU with no database of its own (Haswell) applies the one tuned on Zen 3
    (znver3: AVX2 as its widest vector ISA), not the AVX-512 one."""
    _make_db(shipped / "host-znver5")
    _make_db(shipped / "host-znver3")
    for cpu in ("haswell", "znver2", "alderlake"):
        assert places.shipped_db(_host(cpu), "generic") == shipped / "host-znver3"


def test_the_users_database_comes_first_and_tune_writes_only_there(shipped, tmp_path):
    """tune appends to $TVMSHUFFLE_HOME/schedules/<target>/, starting from the shipped
    database; compile reads the user's first, the shipped one after; nothing is written
    under the working directory."""
    _make_db(shipped / "host-znver3")
    user = tmp_path / "home" / "schedules" / "host-znver3"
    assert places.tune_dbs(_host("znver3"), "generic") == (user, (shipped / "host-znver3",))
    assert places.compile_dbs(_host("znver3"), "generic") == (shipped / "host-znver3", ())
    _make_db(user)
    assert places.compile_dbs(_host("znver3"), "generic") == (user, (shipped / "host-znver3",))
    assert places.tune_dbs(_host("haswell"), "generic")[0] == user.parent / "host-haswell"
    assert not list(Path.cwd().iterdir())


def test_a_database_an_earlier_version_left_in_the_working_directory_is_named(shipped,
                                                                              caplog):
    import logging

    _make_db(Path("schedules") / "host-znver3")
    with caplog.at_level(logging.WARNING):
        assert places.compile_dbs(_host("znver3"), "generic") == (None, ())
    assert "schedules/host-znver3 holds tuning records of an earlier tvmshuffle" in caplog.text
    assert "pass --db schedules/host-znver3" in caplog.text


def test_a_tune_starts_from_the_shipped_records_of_its_kernels_only(tmp_path):
    """Kernels the user's database has no workload of get the shipped database's records
    copied in, once, under their own kernel; kernels it has keep their own; other kernels'
    shipped records stay out."""
    here = _host("znver4").tvm_target
    doubled, tripled, halved = _kernel(2.0), _kernel(3.0), _kernel(0.5)
    shipped = records.open_database(tmp_path / "shipped")
    for mod, secs in ((doubled, 1e-6), (doubled, 2e-6), (tripled, 3e-6), (halved, 4e-6)):
        _commit(shipped, mod, secs, here)
    user = records.open_database(tmp_path / "user")
    _commit(user, tripled, 9e-6, here)
    del shipped, user

    def secs_by_kernel(view) -> dict:
        found = {}
        for record in view.database.get_all_tuning_records():
            for name, mod in (("doubled", doubled), ("tripled", tripled)):
                if tvm_ffi.structural_equal(record.workload.mod, mod):
                    found.setdefault(name, []).append(float(record.run_secs[0]))
        return {name: sorted(secs) for name, secs in found.items()}

    import tvm_ffi

    view = taskdb.TaskDatabase(tmp_path / "user", [doubled, tripled], (tmp_path / "shipped",))
    assert view.seeded == 2
    assert secs_by_kernel(view) == {"doubled": [1e-6, 2e-6], "tripled": [9e-6]}
    view.close()
    again = taskdb.TaskDatabase(tmp_path / "user", [doubled, tripled], (tmp_path / "shipped",))
    assert again.seeded == 0 and secs_by_kernel(again) == {"doubled": [1e-6, 2e-6],
                                                           "tripled": [9e-6]}
    again.close()
    assert len((tmp_path / "user" / records.RECORD_FILE).read_text().splitlines()) == 3


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


def test_compile_takes_a_kernels_record_from_the_users_database_before_the_shipped_one(
        tmp_path):
    """The user's record of a kernel wins over the shipped one (even a faster one: the user
    measured on this machine); a kernel only the shipped database has takes the shipped
    record."""
    here = _host("znver4").tvm_target
    doubled, tripled = _kernel(2.0), _kernel(3.0)
    shipped = records.open_database(tmp_path / "shipped")
    _commit(shipped, doubled, 1e-6, here)
    _commit(shipped, tripled, 2e-6, here)
    user = records.open_database(tmp_path / "user")
    _commit(user, doubled, 5e-6, here)
    del shipped, user
    database = records.apply_database(tmp_path / "user", here)
    ranked = records.read_ranked(tmp_path / "shipped", here)
    records.memory_database(ranked, records.choose(ranked, {})[0], into=database)
    assert [float(database.query_tuning_record(mod, here, "main").run_secs[0])
            for mod in (doubled, tripled)] == [5e-6, 2e-6]


def test_a_compacted_database_keeps_the_fastest_and_counts_what_it_dropped(tmp_path):
    """compact keeps per kernel and target the fastest few schedules that ran (a failed one
    never), drops kernels left with none, and counts what it dropped: compile chooses the same
    record, and a tune from the compact copy (directly, or seeded from it as from the shipped
    database) counts every trial the full one had."""
    from tvm.s_tir import meta_schedule as ms

    from tvmshuffle import compact

    here, there = _host("znver4").tvm_target, _host("znver5").tvm_target
    doubled, tripled = _kernel(2.0), _kernel(3.0)
    full = records.open_database(tmp_path / "full")

    def commit(mod, secs, target, factor):  # schedules told apart by their split
        full.commit_tuning_record(ms.database.TuningRecord(
            _scheduled(mod, True, factor), full.commit_workload(mod), [secs], target,
            ms.arg_info.ArgInfo.from_prim_func(mod["main"])))

    # five schedules, one timed twice (1e-6 and 2e-6: kept once), one failed
    for secs, factor in ((5e-6, 2), (1e-6, 4), (2e-6, 4), (3e-6, 8), (1e10, 16)):
        commit(doubled, secs, here, factor)
    commit(doubled, 7e-6, there, 2)
    full.commit_tuning_record(ms.database.TuningRecord(  # a kernel with a failure only
        _scheduled(tripled, False), full.commit_workload(tripled), [1e10], here,
        ms.arg_info.ArgInfo.from_prim_func(tripled["main"])))
    del full
    summary = compact.compact(tmp_path / "full", tmp_path / "small", keep=2)
    assert summary.workloads == (2, 1) and summary.records == (7, 3)  # 2 here, 1 there
    small = tmp_path / "small"
    assert records.read_dropped(small) == {
        (records.kernel_hashes([doubled])[0], str(here)): 3,
        (records.kernel_hashes([tripled])[0], str(here)): 1}
    for db in (tmp_path / "full", small):
        best = records.apply_database(db, here).query_tuning_record(doubled, here, "main")
        assert [float(s) for s in best.run_secs] == [1e-6]

    def spent_here(view, mod) -> int:
        found = [r for r in view.database.get_all_tuning_records()
                 if str(r.target) == str(here) and r.workload.mod.script() == mod.script()]
        return len(found) + view.spent(mod, here)

    direct = taskdb.TaskDatabase(small, [doubled, tripled])
    assert (spent_here(direct, doubled), spent_here(direct, tripled)) == (5, 1)
    direct.close()
    seeded = taskdb.TaskDatabase(tmp_path / "user", [doubled, tripled], (small,))
    assert (spent_here(seeded, doubled), spent_here(seeded, tripled)) == (5, 1)
    seeded.close()
    again = taskdb.TaskDatabase(tmp_path / "user", [doubled, tripled], (small,))
    assert again.seeded == 0
    assert (spent_here(again, doubled), spent_here(again, tripled)) == (5, 1)
    again.close()
    with pytest.raises(FileExistsError):
        compact.compact(tmp_path / "full", small)


@pytest.mark.slow
def test_a_wheel_carries_the_shipped_databases_and_finds_them_without_a_checkout(tmp_path):
    """`pip wheel` of the repository holds its schedules/ as package data; installed (here into
    a folder of its own, the dependencies taken from this environment) and run from a folder
    that is no checkout, it applies them: an AVX-512 host the Zen 5 database, an AVX2 one the
    Zen 3 one, both from the installed package, unpacked into the cache folder."""
    import json
    import subprocess
    import sys

    repo = Path(__file__).resolve().parent.parent
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "--no-deps", "-w", str(tmp_path / "wheel"), str(repo)],
                   check=True, timeout=600, capture_output=True)
    (wheel,) = (tmp_path / "wheel").glob("tvmshuffle-*.whl")
    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, timeout=600, capture_output=True)
    shipped = sorted(d.name for d in (repo / "schedules").iterdir() if places.has_records(d))
    code = (
        "import json\n"
        "from tvmshuffle import places, target\n"
        "def host(cpu):\n"
        "    return target.TargetConfig.from_json({'name': 'host', 'tvm': {'kind': 'llvm',\n"
        "        'mtriple': 'x86_64-unknown-linux-gnu', 'mcpu': cpu, 'num-cores': 1}})\n"
        "root = places.shipped_root()\n"
        "print(json.dumps({'root': str(root), 'folders': sorted(\n"
        "    d.name for d in root.iterdir() if places.has_records(d)),\n"
        "    'avx512': str(places.shipped_db(host('skylake-avx512'), 'generic')),\n"
        "    'avx2': str(places.shipped_db(host('haswell'), 'generic'))}))\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=str(site), **{places.HOME_ENV: str(tmp_path / "home"),
                                        cachedir.CACHE_ENV: str(tmp_path / "cache")})
    work = tmp_path / "work"
    work.mkdir()
    found = json.loads(subprocess.run([sys.executable, "-c", code], cwd=work, env=env,
                                      check=True, timeout=300, capture_output=True,
                                      text=True).stdout)
    assert found["root"] == str(site / "tvmshuffle" / "schedules")
    assert found["folders"] == shipped
    # compressed in the package, unpacked once into the cache folder
    for key, name in (("avx512", "host-znver5"), ("avx2", "host-znver3")):
        if name in shipped:
            unpacked = Path(found[key])
            assert unpacked.parent == tmp_path / "cache" / "shipped"
            assert unpacked.name.startswith(f"{name}-")
            assert (unpacked / records.RECORD_FILE).stat().st_size > 0
