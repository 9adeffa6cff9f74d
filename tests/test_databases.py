"""Which tuning database `tune`, `compile` and `compare` use when none is given."""

from __future__ import annotations

from pathlib import Path

from tvmshuffle import target, tune


def _host(mcpu: str) -> target.TargetConfig:
    return target.TargetConfig.from_json({"name": "host", "tvm": {
        "kind": "llvm", "mtriple": "x86_64-unknown-linux-gnu", "mcpu": mcpu, "num-cores": 1}})


def _make_db(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / tune.RECORD_FILE).write_text("")
    return path


def test_a_host_cpu_uses_its_own_database_first(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _make_db(tmp_path / "schedules" / "host-znver4")
    assert tune.default_db_dir(_host("znver4"), "generic") == Path("schedules/host-znver4")
    assert tune.shipped_db_dir(_host("znver4"), "generic") == Path("schedules/host-znver4")


def test_a_host_cpu_without_a_database_uses_a_siblings(tmp_path, monkeypatch):
    """Zen 4 and Zen 5 share AVX-512: a Zen 4 host with no database of its own applies and
    resumes the Zen 5 one, here or shipped beside the package."""
    monkeypatch.chdir(tmp_path)
    sibling = _make_db(tmp_path / "schedules" / "host-znver5")
    assert tune.default_db_dir(_host("znver4"), "generic") == Path("schedules/host-znver5")
    assert tune.shipped_db_dir(_host("znver4"), "generic") == Path("schedules/host-znver5")
    (sibling / tune.RECORD_FILE).unlink()
    shipped = Path(tune.__file__).resolve().parent.parent / "schedules" / "host-znver5"
    if (shipped / tune.RECORD_FILE).exists():  # a source checkout
        assert tune.shipped_db_dir(_host("znver4"), "generic") == shipped


def test_a_host_cpu_without_siblings_gets_a_new_database(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _make_db(tmp_path / "schedules" / "host-znver5")
    assert tune.default_db_dir(_host("skylake-avx512"), "generic") == Path(
        "schedules/host-skylake-avx512")
    assert tune.shipped_db_dir(_host("skylake-avx512"), "generic") is None
