"""Where tuning databases live: the shipped ones, read-only, and the user's own.

* **Shipped** databases come with the package: in a wheel or a plain ``pip install .`` they
  are package data (``tvmshuffle/schedules/``, built from the repository's ``schedules/``); in a
  source checkout they are its ``schedules/``. They are never written to. Their large files
  are compressed (``.xz``) and unpacked once into the cache folder (``unpacked``), which is
  the path commands read and name.
* **The user's own** are in ``$TVMSHUFFLE_HOME/schedules/``, else in the platform's user data
  folder (``platformdirs``: ``~/.local/share/tvmshuffle/schedules/`` on Linux): ``tune`` and
  ``compare --tune-trials`` append there, whatever folder they are run from.

A database folder is named for what measured it: ``host-<LLVM mcpu>`` for this machine's CPU,
``<target>-<device preset>`` for a device, ``custom`` for a JSON target. ``compile`` reads the
user's database first and the shipped one for the kernels the user's has no record of; a host
CPU with no shipped database of its own uses that of a CPU with the same widest vector ISA
(``vector_isa``), whose records ``tune`` re-times here before counting them. ``--db`` names
one database and only it is used.

Earlier versions wrote ``./schedules/<name>/`` under the working directory: such a folder is
no longer read unless given with ``--db``, and commands say so when they find one.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import lzma
import os
import shutil
import tempfile
from pathlib import Path

import tvm

from . import dbfiles
from .cachedir import cache_root
from .errors import BadInputError, DatabaseError
from .records import RECORD_FILE
from .target import TargetConfig

log = logging.getLogger(__name__)

HOME_ENV = "TVMSHUFFLE_HOME"

# a source checkout this package runs from (an editable install included), whose schedules/
# ship with it
SOURCE_ROOT = Path(__file__).resolve().parent.parent
# an installed package's copy of them (pyproject.toml maps schedules/ to tvmshuffle.schedules)
PACKAGE_SCHEDULES = Path(__file__).resolve().parent / "schedules"


def shipped_root() -> Path:
    """The folder of the databases that ship with this package."""
    return PACKAGE_SCHEDULES if PACKAGE_SCHEDULES.is_dir() else SOURCE_ROOT / "schedules"


def user_root() -> Path:
    """The folder of the user's own databases."""
    home = os.environ.get(HOME_ENV)
    if home:
        return Path(home).expanduser() / "schedules"
    import platformdirs

    return platformdirs.user_data_path("tvmshuffle") / "schedules"


# The shipped databases' large files are stored compressed (``compact --compress``: 34 MB of
# JSON in 0.4 MB) and unpacked once into the cache folder, where every reader finds plain files.
PACKED = ".xz"


def has_records(db_dir: Path | None) -> bool:
    return db_dir is not None and ((db_dir / RECORD_FILE).is_file()
                                   or (db_dir / (RECORD_FILE + PACKED)).is_file())


def unpacked(db_dir: Path) -> Path:
    """``db_dir`` with its compressed files decompressed: a folder of plain files in the cache
    folder, made once per content (a folder per digest of the compressed files, written whole
    and renamed into place, so that two processes never see half of one); ``db_dir`` itself
    when nothing in it is compressed."""
    packed = sorted(db_dir.glob("*" + PACKED))
    if not packed:
        return db_dir
    digest = hashlib.sha256()
    for path in packed:
        digest.update(path.name.encode() + path.read_bytes())
    name = f"{db_dir.name}-{digest.hexdigest()[:16]}"
    try:
        parent = cache_root() / "shipped"
        parent.mkdir(parents=True, exist_ok=True)
    except OSError:  # a read-only cache folder
        parent = Path(tempfile.gettempdir()) / f"tvmshuffle-{os.getuid()}-shipped"
        parent.mkdir(parents=True, exist_ok=True)
    dest = parent / name
    if (dest / RECORD_FILE).is_file():
        return dest
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{name}-"))
    try:
        for item in db_dir.iterdir():
            if item.name.endswith(PACKED):
                (tmp / item.name[:-len(PACKED)]).write_bytes(lzma.decompress(item.read_bytes()))
            elif item.is_file():
                shutil.copyfile(item, tmp / item.name)
        os.replace(tmp, dest)
    except (OSError, lzma.LZMAError) as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if (dest / RECORD_FILE).is_file():  # another process unpacked it first
            return dest
        raise DatabaseError(f"cannot unpack the shipped database {db_dir}: {err}") from err
    log.info("unpacked %s into %s", db_dir, dest)
    return dest


# The widest vector ISA a host CPU has, as LLVM names its features: CPUs with the same one share
# vector width and instructions, so schedules tuned on one are a start on the other (each record
# keeps the target it was measured with, and tune re-times them before counting them).
VECTOR_ISAS = {"x86_64": ("avx512f", "avx2", "avx"), "aarch64": ("sve2", "sve", "neon")}


@functools.cache
def vector_isa(mtriple: str, mcpu: str) -> str | None:
    """The widest of VECTOR_ISAS that LLVM's ``mcpu`` has; None when it has none of them or LLVM
    does not know the name."""
    from tvm.target import codegen

    arch = mtriple.split("-")[0]
    if arch not in VECTOR_ISAS:
        return None
    if not codegen.llvm_is_valid_cpu(mcpu, mtriple):
        return None
    features = set(codegen.llvm_get_cpu_features(
        tvm.target.Target({"kind": "llvm", "mtriple": mtriple, "mcpu": mcpu})))
    return next((isa for isa in VECTOR_ISAS[arch] if isa in features), None)


def db_name(target: TargetConfig, device: str) -> str:
    """The folder name of ``target``'s databases: host-<mcpu>, <target>-<device>, custom."""
    if target.name == "host":
        return f"host-{dict(target.spec).get('mcpu', 'generic')}"
    if target.name in ("arm", "arm-linux"):
        return f"{target.name}-{device}"
    return "custom"


def host_cpu_siblings(mtriple: str, mcpu: str, root: Path) -> list[str]:
    """CPUs with a host database under ``root`` and the same vector ISA as ``mcpu``, by name
    (``mcpu`` itself excluded)."""
    isa = vector_isa(mtriple, mcpu)
    if isa is None:
        return []
    names = {d.name.removeprefix("host-") for d in root.glob("host-*") if has_records(d)}
    return sorted(name for name in names - {mcpu} if vector_isa(mtriple, name) == isa)


def readable(db_dir: Path) -> Path:
    """A database to read records from (``compile --db``, seeds): a compressed one unpacked."""
    return unpacked(db_dir) if any(db_dir.glob("*" + PACKED)) else db_dir


def writable(db_dir: Path) -> Path:
    """A database to append to (``tune --db``, ``pick --db``): never a compressed one, whose
    unpacked copy is the cache's."""
    if any(db_dir.glob("*" + PACKED)):
        raise BadInputError(f"{db_dir} is a compressed shipped database, read-only: tune into "
                            "your own (no --db), or into a copy unpacked with `python -m "
                            f"tvmshuffle.compact {db_dir} NEW_DIR`")
    _probe_appends(db_dir)
    return db_dir


def _probe_appends(db_dir: Path) -> None:
    """Refuse a database this process cannot append to before any time is spent measuring for
    it: an existing folder by opening its lock file and its files for appending (which a
    read-only file system refuses to root too), a new one by its nearest existing parent."""
    try:
        if db_dir.exists():
            if not db_dir.is_dir():
                raise NotADirectoryError(20, "not a folder")
            for path in (db_dir / dbfiles.LOCK_NAME, *sorted(db_dir.glob("*.json"))):
                os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644))
            return
        parent = next(p for p in db_dir.parents if p.exists())
        if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
            raise PermissionError(13, f"cannot create folders in {parent}")
    except OSError as err:
        raise DatabaseError(f"the tuning database {db_dir} is not writable: "
                            f"{err.strerror or err}") from err


def shipped_db(target: TargetConfig, device: str) -> Path | None:
    """The shipped database for ``target``: its own, else (a host CPU) that of a CPU with the
    same vector ISA, unpacked; None if none holds records."""
    root = shipped_root()
    own = root / db_name(target, device)
    if has_records(own):
        return unpacked(own)
    if target.name != "host":
        return None
    spec = dict(target.spec)
    siblings = host_cpu_siblings(spec.get("mtriple", "x86_64-unknown-linux-gnu"),
                                 spec.get("mcpu", "generic"), root)
    return unpacked(root / f"host-{siblings[0]}") if siblings else None


def user_db(target: TargetConfig, device: str) -> Path:
    """The user's database for ``target``, where ``tune`` appends by default."""
    return user_root() / db_name(target, device)


def databases(target: TargetConfig, device: str) -> list[Path]:
    """What ``compile`` reads for ``target`` when no ``--db`` is given, first to last: the
    user's database and the shipped one, those that hold records."""
    warn_legacy(target, device)
    return [db for db in (user_db(target, device), shipped_db(target, device))
            if has_records(db)]


def warn_legacy(target: TargetConfig, device: str) -> None:
    """Say so when the working directory holds a database an earlier version wrote there."""
    legacy = Path("schedules") / db_name(target, device)
    if has_records(legacy) and legacy.resolve() != (shipped_root() / legacy.name).resolve():
        log.warning("%s holds tuning records of an earlier tvmshuffle, which are no longer read "
                    "from the working directory: pass --db %s, or move it to %s", legacy,
                    legacy, user_root())


def compile_dbs(target: TargetConfig, device: str) -> tuple[Path | None, tuple[Path, ...]]:
    """(the database ``compile`` applies first, those it falls back on) with no ``--db``."""
    found = databases(target, device)
    return (found[0], tuple(found[1:])) if found else (None, ())


def tune_dbs(target: TargetConfig, device: str) -> tuple[Path, tuple[Path, ...]]:
    """(the database ``tune`` appends to, the shipped ones it starts from) with no ``--db``."""
    warn_legacy(target, device)
    shipped = shipped_db(target, device)
    return user_db(target, device), (shipped,) if shipped is not None else ()
