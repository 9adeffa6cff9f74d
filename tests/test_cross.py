"""Cross-compiled libraries: what the .so is (AArch64 ELF, NEON, Android dependencies and page
alignment), which toolchain links it, and what is said when none is installed."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess

import pytest
from conftest import assert_one_line_error, invoke
from tvmshuffle import target, toolchain

SMALL = ("shufflenet_v1_g3_0.25x", "--input-size", "64x64", "--no-db")


def need(*tools: str) -> None:
    """Skip where a developer has not installed the cross tools; CI installs them, so fail
    there rather than pass by skipping."""
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        message = f"missing {', '.join(missing)} (apt-get install clang lld g++-aarch64-linux-gnu)"
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)


def compile_for(name: str, out, *extra: str) -> dict:
    result = invoke("compile", *SMALL, "--target", name, "-o", str(out), "--json", *extra)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def readelf(*args: str) -> str:
    return subprocess.run(["readelf", *args], capture_output=True, text=True, check=True).stdout


@pytest.fixture(scope="module")
def arm_builds(tmp_path_factory):
    need("clang", "ld.lld", "aarch64-linux-gnu-g++", "aarch64-linux-gnu-objdump")
    root = tmp_path_factory.mktemp("arm")
    return {name: (root / name, compile_for(name, root / name)) for name in ("arm", "arm-linux")}


@pytest.mark.parametrize("name", ["arm", "arm-linux"])
def test_library_is_aarch64_with_neon(arm_builds, name):
    """Both ARM targets give an AArch64 shared object whose kernels use NEON vector registers."""
    out, manifest = arm_builds[name]
    so = out / "model.so"
    assert "ARM aarch64" in subprocess.run(["file", str(so)], capture_output=True, text=True,
                                           check=True).stdout
    assert "AArch64" in readelf("-h", str(so))
    disassembly = subprocess.run(["aarch64-linux-gnu-objdump", "-d", str(so)],
                                 capture_output=True, text=True, check=True).stdout
    vector_ops = [line for line in disassembly.splitlines()
                  if "fmla" in line and ".4s" in line]
    assert len(vector_ops) > 10, "no NEON fmla v.4s in the kernels"
    assert manifest["target"]["tvm"]["mattr"] == ["+neon"]


def test_android_library_declares_bionic_and_16k_pages(arm_builds):
    """The Android .so names libc/libm/libdl as dependencies (so the phone's loader finds
    memcpy, expf...) and aligns its segments to 16 KB pages; the manifest says how it was
    linked."""
    out, manifest = arm_builds["arm"]
    so = str(out / "model.so")
    needed = [line.split("[")[1].rstrip("]") for line in readelf("-d", so).splitlines()
              if "(NEEDED)" in line]
    assert needed == ["libc.so", "libm.so", "libdl.so"]
    aligns = [int(line.split()[-1], 16) for line in readelf("-lW", so).splitlines()
              if line.strip().startswith("LOAD")]
    assert aligns and all(a >= toolchain.ANDROID_PAGE for a in aligns)
    assert manifest["toolchain"]["name"] == "clang+lld"
    assert manifest["toolchain"]["android_api"] == 24
    assert "--target=aarch64-linux-android24" in manifest["toolchain"]["flags"]
    assert arm_builds["arm-linux"][1]["toolchain"]["name"] == "aarch64-linux-gnu-g++"


def test_android_api_level_reaches_the_linker(tmp_path):
    """--android-api picks the clang target (and so the bionic the library is meant for)."""
    need("clang", "ld.lld")
    manifest = compile_for("arm", tmp_path / "o", "--android-api", "29")
    assert "--target=aarch64-linux-android29" in manifest["toolchain"]["flags"]
    assert manifest["toolchain"]["android_api"] == 29


def test_ndk_is_preferred_and_its_flags_used(tmp_path, monkeypatch):
    """With ANDROID_NDK_HOME set, the NDK's API-level clang links the library, with 16 KB pages
    and -lm -ldl (a stand-in NDK records its command line and delegates to clang+lld)."""
    need("clang", "ld.lld")
    stubs = toolchain._android_stubs(shutil.which("clang"),
                                     ("--target=aarch64-linux-android24",))
    bindir = tmp_path / "ndk" / "toolchains" / "llvm" / "prebuilt" / "linux-x86_64" / "bin"
    bindir.mkdir(parents=True)
    fake = bindir / "aarch64-linux-android24-clang"
    log = tmp_path / "ndk.log"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {log}\nexec clang --target=aarch64-linux-android24 '
                    f'-fuse-ld=lld -nostdlib -L{stubs} -lc "$@"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.delenv("TVM_NDK_CC", raising=False)
    monkeypatch.setenv("ANDROID_NDK_HOME", str(tmp_path / "ndk"))
    manifest = compile_for("arm", tmp_path / "o")
    assert manifest["toolchain"]["name"] == "android-ndk"
    assert manifest["toolchain"]["compiler"] == str(fake)
    links = [line.split() for line in log.read_text().splitlines() if "-shared" in line.split()]
    assert len(links) == 1
    assert f"-Wl,-z,max-page-size={toolchain.ANDROID_PAGE}" in links[0] and "-lm" in links[0]


@pytest.mark.parametrize("name,env,fragment", [
    ("arm", {"PATH": "{empty}"}, "apt-get install clang lld"),
    ("arm-linux", {"PATH": "{empty}"}, "apt-get install g++-aarch64-linux-gnu"),
    ("arm", {"ANDROID_NDK_HOME": "{empty}"}, "has no aarch64-linux-android24-clang"),
    ("arm", {"TVM_NDK_CC": "/nonexistent/clang"}, "not an executable compiler"),
])
def test_missing_toolchain_says_what_to_install(name, env, fragment, tmp_path, monkeypatch):
    """No usable linker for the target: one line naming what to install, before any import."""
    for var in ("TVM_NDK_CC", "ANDROID_NDK_HOME", "ANDROID_NDK_ROOT"):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value.replace("{empty}", str(tmp_path)))
    assert_one_line_error(invoke("compile", *SMALL, "--target", name, "-o",
                                 str(tmp_path / "o")), fragment)
    assert not (tmp_path / "o" / "model.so").exists()


def test_host_needs_no_cross_toolchain():
    """The host target links with TVM's default and never looks for a cross toolchain."""
    assert toolchain.find(target.resolve("host")).name == "host"
