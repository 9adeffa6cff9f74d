#!/usr/bin/env bash
# An emulated arm64 device: an aarch64 CPython with TVM's aarch64 runtime, run under qemu-user,
# registered at a tracker like a phone would be. For proving ARM builds end to end where no ARM
# hardware exists (CI). Its timings mean nothing: qemu translates every instruction.
#
#   rpc/emu_arm64.sh setup                               install qemu-user and the cross linkers
#                                                        (as root), build the root (idempotent)
#   rpc/emu_arm64.sh start [TRACKER_HOST:PORT] [KEY]     register (default 127.0.0.1:9190 emu-arm64),
#                                                        in the foreground; Ctrl-C / SIGTERM stops it
#   rpc/emu_arm64.sh python ARGS...                      run the emulated python (diagnostics)
#   rpc/emu_arm64.sh counter                             (re)build the instruction counter alone
#   rpc/emu_arm64.sh ncnn                                PyPI's aarch64 ncnn wheel into the root's
#                                                        site-ncnn/ (benchmarks/arm_instructions.py)
#
# Everything comes from package registries at set-up time: Debian's qemu-user, arm64 Debian
# packages (python3.11 and the C/C++ runtime, fetched by an apt confined to the root, with arm64
# as its only architecture, download-only, then unpacked with dpkg -x: installing python3:arm64
# system-wide would replace the host's python), and PyPI's manylinux_2_28_aarch64 wheels.
# The root lives in $TVMSHUFFLE_EMU_ROOT (default ~/.cache/tvmshuffle/emu-arm64).
# The instruction counter of `tvmshuffle deploy --count-instructions` (rpc/insn_count.c, a qemu
# plugin) is built at set-up time against the qemu-plugin.h of Debian's source package of the
# installed qemu-user (fetched with a deb-src entry kept inside the root, then removed).
# The server binds 127.0.0.1: it runs whatever code it is sent.
set -euo pipefail

root=${TVMSHUFFLE_EMU_ROOT:-$HOME/.cache/tvmshuffle/emu-arm64}
tvm_version=${TVMSHUFFLE_EMU_TVM:-0.27.0.post1}
ffi_version=${TVMSHUFFLE_EMU_TVM_FFI:-0.1.14.post1}
here=$(cd "$(dirname "$0")" && pwd)

die() { echo "emu_arm64: $*" >&2; exit 1; }

host_tools() {
    # The emulator, and the cross linkers `tvmshuffle compile --target arm|arm-linux` uses.
    local want=() tool pkg
    for tool in qemu-aarch64:qemu-user clang:clang ld.lld:lld \
        aarch64-linux-gnu-g++:g++-aarch64-linux-gnu file:file; do
        command -v "${tool%%:*}" >/dev/null || want+=("${tool#*:}")
    done
    [ ${#want[@]} = 0 ] && return
    [ "$(id -u)" = 0 ] || die "missing tools: apt-get install ${want[*]}"
    echo "emu_arm64: installing ${want[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends "${want[@]}" >/dev/null 2>&1 || {
        apt-get update -q >/dev/null
        apt-get install -y -q --no-install-recommends "${want[@]}" >/dev/null
    }
}

debian_root() {
    [ -x "$root/usr/bin/python3.11" ] && return
    local apt=$root/.apt
    mkdir -p "$apt/lists/partial" "$apt/archives/partial" "$apt/etc/preferences.d" "$apt/debs"
    : > "$apt/status"
    # The host's own Debian sources, read at set-up time; only the architecture differs.
    local sources=/etc/apt/sources.list.d/debian.sources
    [ -f "$sources" ] || sources=/etc/apt/sources.list
    [ -f "$sources" ] || die "no Debian apt sources on this machine"
    cp "$sources" "$apt/etc/$(basename "$sources")"
    local opts=(-o "APT::Architecture=arm64" -o "APT::Architectures=arm64"
        -o "Dir::State=$apt" -o "Dir::State::status=$apt/status" -o "Dir::Cache=$apt"
        -o "Dir::Cache::archives=$apt/archives" -o "Dir::Etc::SourceParts=$apt/etc"
        -o "Dir::Etc::SourceList=/dev/null" -o "Dir::Etc::Preferences=/dev/null"
        -o "Dir::Etc::PreferencesParts=$apt/etc/preferences.d"
        -o "Debug::NoLocking=1" -o "APT::Sandbox::User=root" -o "APT::Install-Recommends=0" -o "quiet=2")
    echo "emu_arm64: fetching arm64 Debian packages into $root" >&2
    apt-get "${opts[@]}" update
    # An empty status file makes apt resolve the whole closure; nothing is installed anywhere.
    apt-get "${opts[@]}" install -y -d python3.11 libstdc++6 libgcc-s1 >/dev/null
    local deb
    for deb in "$apt"/archives/*.deb; do dpkg -x "$deb" "$root"; done
    rm -rf "$apt/archives" "$apt/lists"
    [ -x "$root/usr/bin/python3.11" ] || die "arm64 python3.11 missing after unpacking"
}

python_packages() {
    [ -f "$root/site/.done-$tvm_version-$ffi_version" ] && return
    echo "emu_arm64: fetching aarch64 wheels (apache-tvm $tvm_version)" >&2
    rm -rf "$root/site"
    local pip=(python3 -m pip)
    [ -n "${PYTHON:-}" ] && pip=("$PYTHON" -m pip)
    "${pip[@]}" install -q --root-user-action=ignore --disable-pip-version-check \
        --target "$root/site" --only-binary=:all: \
        --python-version 3.11 --implementation cp --abi cp311 \
        --platform manylinux_2_28_aarch64 --platform manylinux_2_17_aarch64 \
        --platform manylinux2014_aarch64 --platform linux_aarch64 \
        "apache-tvm==$tvm_version" "apache-tvm-ffi==$ffi_version" numpy cloudpickle psutil
    # tvm.exec.rpc_server starts its server process from sys.executable, which inside the
    # emulator is the aarch64 binary the host kernel cannot execute: point it at the wrapper.
    cat > "$root/site/sitecustomize.py" <<'EOF'
import os
import sys

if os.environ.get("TVMSHUFFLE_EMU_PYTHON"):
    sys.executable = os.environ["TVMSHUFFLE_EMU_PYTHON"]
EOF
    # Libraries linked for Android ask for libc.so / libm.so / libdl.so by those names; in
    # Debian they are linker scripts or absent, so name the real glibc objects.
    # Relative links: the host kernel resolves them, and absolute ones would name host files.
    mkdir -p "$root/android-libs"
    local lib=lib/aarch64-linux-gnu
    [ -f "$root/$lib/libc.so.6" ] || lib=usr/lib/aarch64-linux-gnu
    ln -sfn "../$lib/libc.so.6" "$root/android-libs/libc.so"
    ln -sfn "../$lib/libm.so.6" "$root/android-libs/libm.so"
    ln -sfn "../$lib/libdl.so.2" "$root/android-libs/libdl.so"
    touch "$root/site/.done-$tvm_version-$ffi_version"
}

counter_plugin() {
    # Rebuilt when its source is newer than the plugin (a fresh clone: a few seconds).
    local out=$root/plugins/libinsncount.so src=$here/insn_count.c
    [ -f "$out" ] && [ "$out" -nt "$src" ] && return
    command -v cc >/dev/null || die "cannot build the instruction counter: no C compiler (apt-get install gcc)"
    local version
    version=$(dpkg-query -W -f='${source:Version}' qemu-user 2>/dev/null) ||
        die "cannot build the instruction counter: qemu-user is not installed"
    local work=$root/.qemu-src
    rm -rf "$work"
    mkdir -p "$work/lists/partial" "$work/archives/partial" "$work/etc" "$root/plugins"
    local sources=/etc/apt/sources.list.d/debian.sources
    if [ -f "$sources" ]; then
        sed 's/^Types: deb$/Types: deb-src/' "$sources" > "$work/etc/src.sources"
    else
        sed -n 's/^deb /deb-src /p' /etc/apt/sources.list > "$work/etc/src.list"
    fi
    local opts=(-o "Dir::State=$work" -o "Dir::State::status=/var/lib/dpkg/status"
        -o "Dir::Cache=$work" -o "Dir::Etc::SourceParts=$work/etc" -o "Dir::Etc::SourceList=/dev/null"
        -o "Debug::NoLocking=1" -o "APT::Sandbox::User=root" -o "quiet=2")
    echo "emu_arm64: fetching Debian's source of qemu $version for qemu-plugin.h" >&2
    apt-get "${opts[@]}" update >/dev/null ||
        die "cannot build the instruction counter: Debian's source lists could not be fetched"
    (cd "$work" && apt-get "${opts[@]}" source --download-only "qemu=$version" >/dev/null) ||
        die "cannot build the instruction counter: Debian's source package qemu=$version could not be fetched"
    tar -xJf "$work"/qemu_*.orig.tar.xz -C "$work" --wildcards '*/include/qemu/qemu-plugin.h' ||
        die "cannot build the instruction counter: no qemu-plugin.h in Debian's qemu source"
    local include
    include=$(dirname "$(find "$work" -name qemu-plugin.h | head -n 1)")
    cc -shared -fPIC -O2 -Wall -Werror -I "$include" "$src" -o "$out.tmp" -lpthread ||
        die "cannot build the instruction counter: the compiler failed on $src"
    mv "$out.tmp" "$out"
    rm -rf "$work"
    echo "emu_arm64: instruction counter built: $out" >&2
}

wrapper() {
    mkdir -p "$root/bin"
    cat > "$root/bin/python" <<EOF
#!/bin/sh
# The emulated aarch64 python (written by rpc/emu_arm64.sh setup).
export TVMSHUFFLE_EMU_PYTHON="$root/bin/python"
export PYTHONPATH="$root/site"
export PYTHONNOUSERSITE=1
export LD_LIBRARY_PATH="/android-libs"
# TVMSHUFFLE_EMU_PLUGIN: a qemu plugin and its arguments (the instruction counter's runs)
exec qemu-aarch64 \${TVMSHUFFLE_EMU_PLUGIN:+-plugin "\$TVMSHUFFLE_EMU_PLUGIN"} -L "$root" "$root/usr/bin/python3.11" "\$@"
EOF
    chmod +x "$root/bin/python"
}

case "${1:-}" in
setup)
    host_tools
    debian_root
    python_packages
    wrapper
    # the device works without the counter: only `deploy --count-instructions` needs it
    ( counter_plugin ) || echo "emu_arm64: continuing without the instruction counter" >&2
    "$root/bin/python" -c "import platform, tvm; print('emu_arm64: ready,', platform.machine(), 'tvm', tvm.__version__)"
    ;;
start)
    [ -x "$root/bin/python" ] || die "not set up: run rpc/emu_arm64.sh setup"
    tracker=${2:-127.0.0.1:9190}
    key=${3:-emu-arm64}
    extra=$("$root/bin/python" -c "import os, tvm; print(os.path.join(os.path.dirname(tvm.__file__), 'lib', 'libtvm_runtime_extra.so'))")
    export TVM_NUM_THREADS=${TVM_NUM_THREADS:-1}
    # The server forks workers and re-executes itself: run it as its own process group and
    # stop the whole group on Ctrl-C or SIGTERM, so no emulated process outlives the script.
    set -m
    "$root/bin/python" -m tvm.exec.rpc_server --host 127.0.0.1 --port 9090 --port-end 9190 \
        --tracker "$tracker" --key "$key" --load-library "$extra" &
    server=$!
    trap 'kill -TERM -- "-$server" 2>/dev/null; wait "$server"; exit 143' TERM INT
    wait "$server"
    ;;
counter)
    counter_plugin
    ;;
ncnn)
    # Kept apart from site/ (the device's TVM): only the ncnn comparison puts it on its path.
    [ -x "$root/bin/python" ] || die "not set up: run rpc/emu_arm64.sh setup"
    if [ ! -f "$root/site-ncnn/.done" ]; then
        echo "emu_arm64: fetching the aarch64 ncnn wheel" >&2
        rm -rf "$root/site-ncnn"
        pip=(python3 -m pip)
        [ -n "${PYTHON:-}" ] && pip=("$PYTHON" -m pip)
        "${pip[@]}" install -q --root-user-action=ignore --disable-pip-version-check --no-deps \
            --target "$root/site-ncnn" --only-binary=:all: \
            --python-version 3.11 --implementation cp --abi cp311 \
            --platform manylinux_2_28_aarch64 --platform manylinux_2_17_aarch64 \
            --platform manylinux2014_aarch64 --platform linux_aarch64 "ncnn${TVMSHUFFLE_EMU_NCNN:+==$TVMSHUFFLE_EMU_NCNN}"
        touch "$root/site-ncnn/.done"
    fi
    "$root/bin/python" -c "import sys; sys.path.insert(0, '$root/site-ncnn'); import ncnn; print('emu_arm64: ncnn', ncnn.__version__)"
    ;;
python)
    shift
    exec "$root/bin/python" "$@"
    ;;
*)
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
    exit 2
    ;;
esac
