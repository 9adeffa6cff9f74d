"""The linker that turns TVM's object files into a ``.so`` the target device can ``dlopen``.

``host`` links with TVM's default (the machine's ``g++``). ``arm`` (Android aarch64) links,
in order of preference, with the Android NDK's clang (``TVM_NDK_CC``, else
``ANDROID_NDK_HOME`` / ``ANDROID_NDK_ROOT`` and the API level), or without an NDK with clang +
lld for ``aarch64-linux-android<API>``: TVM's objects need only ``memcpy``/``memset``/libm from
bionic, so the library is linked against empty stand-ins named ``libc.so``, ``libm.so`` and
``libdl.so`` (built once into a cache directory) that only record those dependencies
(``DT_NEEDED``); the phone's loader resolves the symbols. Android 15+ devices use 16 KB pages,
so segments are aligned to 16 KB. ``arm-linux`` links with ``aarch64-linux-gnu-g++``.

A ``Toolchain`` is a small frozen value: it pickles into MetaSchedule's builder workers, so tuning
candidates are linked exactly like the final library.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import BuildError, first_line
from .target import TargetConfig

DEFAULT_ANDROID_API = 24
ANDROID_PAGE = 16384
NDK_HOST_TAG = "linux-x86_64"
INSTALL_HINT = {
    "arm": "install the Android NDK and set ANDROID_NDK_HOME (or TVM_NDK_CC), or install "
           "clang and lld (Debian: apt-get install clang lld)",
    "arm-linux": "install an aarch64 cross compiler (Debian: apt-get install "
                 "g++-aarch64-linux-gnu)",
}


@dataclass(frozen=True)
class Toolchain:
    """How to link for one target: ``compiler [before] -o OUT OBJECTS [after]``."""

    name: str  # host, android-ndk, clang+lld, aarch64-linux-gnu-g++
    compiler: str | None  # None: TVM's default for this machine
    before: tuple[str, ...] = ()
    after: tuple[str, ...] = ()

    output_format = "so"  # read by TVM's export_library

    def __call__(self, output: str, objects: list[str], options: list[str] | None = None) -> None:
        """The ``fcompile`` of ``export_library``."""
        if self.compiler is None:
            from tvm.support import cc

            cc.create_shared(output, objects, options)
            return
        cmd = [self.compiler, "-shared", "-fPIC", *self.before, *(options or []),
               "-o", output, *objects, *self.after]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise BuildError(f"{self.name} failed to link {Path(output).name}: "
                             f"{first_line(proc.stderr or proc.stdout)} (command: "
                             f"{' '.join(cmd)})")

    def as_json(self) -> dict:
        return {"name": self.name, "compiler": self.compiler or "default (g++)",
                "version": _version(self.compiler), "flags": [*self.before, *self.after]}


def find(target: TargetConfig, android_api: int = DEFAULT_ANDROID_API) -> Toolchain:
    """The toolchain for ``target``, or a BuildError saying what to install."""
    if target.runs_on_host:
        return Toolchain("host", None)
    triple = target.triple
    if triple.startswith("aarch64") and "android" in triple:
        return _android(android_api)
    if triple.startswith("aarch64") and "linux" in triple:
        gxx = shutil.which("aarch64-linux-gnu-g++")
        if gxx:
            return Toolchain("aarch64-linux-gnu-g++", gxx)
        raise BuildError(f"no linker for {triple}: {INSTALL_HINT['arm-linux']}")
    raise BuildError(f"tvmshuffle cannot link for {triple}: it cross-compiles for "
                     "aarch64 Android and aarch64 Linux")


def _android(api: int) -> Toolchain:
    if api < 21:
        raise BuildError(f"Android API level {api} has no 64-bit ARM: use 21 or later")
    page = (f"-Wl,-z,max-page-size={ANDROID_PAGE}",)
    ndk_cc = os.environ.get("TVM_NDK_CC")
    if ndk_cc:
        if not shutil.which(ndk_cc):
            raise BuildError(f"TVM_NDK_CC={ndk_cc} is not an executable compiler")
        return Toolchain("android-ndk", shutil.which(ndk_cc), page, ("-lm", "-ldl"))
    for var in ("ANDROID_NDK_HOME", "ANDROID_NDK_ROOT"):
        home = os.environ.get(var)
        if not home:
            continue
        clang = (Path(home) / "toolchains" / "llvm" / "prebuilt" / NDK_HOST_TAG / "bin"
                 / f"aarch64-linux-android{api}-clang")
        if not clang.is_file():
            raise BuildError(f"{var}={home} has no {clang.name} (is it an NDK, r19 or newer, "
                             f"with API level {api}?)")
        return Toolchain("android-ndk", str(clang), page, ("-lm", "-ldl"))
    clang, lld = shutil.which("clang"), shutil.which("ld.lld")
    if not (clang and lld):
        raise BuildError(f"no linker for Android: {INSTALL_HINT['arm']}")
    flags = (f"--target=aarch64-linux-android{api}", "-fuse-ld=lld", "-nostdlib", *page)
    stubs = _android_stubs(clang, flags)
    return Toolchain("clang+lld", clang, flags, (f"-L{stubs}", "-lc", "-lm", "-ldl"))


def _android_stubs(clang: str, flags: tuple[str, ...]) -> Path:
    """Empty shared objects named like bionic's libraries, so the linked ``.so`` names them
    as its dependencies (the device's loader then resolves memcpy, expf ... in the real ones)."""
    key = flags[0].split("=", 1)[1]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    stubs = cache / "tvmshuffle" / f"stubs-{key}"
    names = ("libc.so", "libm.so", "libdl.so")
    if all((stubs / name).is_file() for name in names):
        return stubs
    stubs.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        empty = Path(tmp) / "empty.c"
        empty.write_text("")
        for name in names:
            part = Path(tmp) / name
            cmd = [clang, *flags, "-shared", f"-Wl,-soname,{name}", "-o", str(part), str(empty)]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise BuildError(f"clang could not build the {name} stand-in: "
                                 f"{first_line(proc.stderr)}")
            os.replace(part, stubs / name)  # atomic: parallel builder workers may race here
    return stubs


def _version(compiler: str | None) -> str:
    try:
        out = subprocess.run([compiler or "g++", "--version"], capture_output=True, text=True,
                             check=False, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.splitlines()[0].strip() if out else "unknown"
