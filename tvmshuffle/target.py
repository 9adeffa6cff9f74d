"""Compilation targets, built in this one place from dicts (TVM 0.27 rejects many strings).

``host`` is this machine's CPU (its LLVM ``mcpu``, so AVX-512 and NEON rules apply) with
``num-cores`` (which MetaSchedule requires) set to the threads the model will run with: 1 by
default, as in the paper's single-thread Table 8. ``arm`` is Android aarch64 with NEON,
``arm-linux`` aarch64 Linux; a device preset (``snapdragon820`` ...) sets their core count and
``mcpu``. Anything else is read as a TVM target given as JSON.
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass

import tvm

from .errors import BadInputError, first_line

TARGET_NAMES = ("host", "arm", "arm-linux")
ANDROID_TRIPLE = "aarch64-linux-android"
ARM_LINUX_TRIPLE = "aarch64-linux-gnu"


@dataclass(frozen=True)
class DevicePreset:
    cores: int
    mcpu: str | None  # as LLVM names it; None when LLVM has no exact model of the core


# Cores of the fast cluster, where a tuned model is meant to run.
DEVICE_PRESETS = {
    "snapdragon820": DevicePreset(4, "kryo"),
    "snapdragon835": DevicePreset(4, "cortex-a73"),
    "snapdragon855": DevicePreset(4, "cortex-a76"),
    "snapdragon865": DevicePreset(4, "cortex-a77"),
    "rk3399": DevicePreset(2, "cortex-a72"),
    "rpi4": DevicePreset(4, "cortex-a72"),
    "generic": DevicePreset(4, None),
}


@dataclass(frozen=True)
class TargetConfig:
    """A resolved target: its short name, the TVM target dict, and whether it runs here."""

    name: str
    spec: tuple[tuple[str, object], ...]  # the target dict, frozen

    @property
    def tvm_target(self) -> tvm.target.Target:
        return tvm.target.Target(dict(self.spec))

    @property
    def num_cores(self) -> int:
        return int(dict(self.spec).get("num-cores", 1))

    @property
    def triple(self) -> str:
        return str(dict(self.spec).get("mtriple", ""))

    @property
    def runs_on_host(self) -> bool:
        """Whether code for this target loads in this process (same arch, not Android)."""
        arch = self.triple.split("-")[0]
        return arch == host_arch() and "android" not in self.triple

    def as_json(self) -> dict:
        return {"name": self.name, "tvm": dict(self.spec), "str": str(self.tvm_target)}

    @classmethod
    def from_json(cls, data: dict) -> "TargetConfig":
        """The inverse of ``as_json`` (as a manifest stores it)."""
        return cls(data["name"], _freeze(data["tvm"]))


def _freeze(spec: dict) -> tuple[tuple[str, object], ...]:
    return tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in spec.items())


def host_arch() -> str:
    """This machine's architecture as LLVM triples name it (x86_64, aarch64)."""
    return platform.machine() or "x86_64"


def host_spec(threads: int = 1) -> dict:
    from tvm.target import codegen

    return {
        "kind": "llvm",
        "mtriple": f"{host_arch()}-unknown-linux-gnu",
        "mcpu": codegen.llvm_get_system_cpu(),
        "num-cores": threads,
    }


def arm_spec(triple: str, device: str, threads: int | None = None) -> dict:
    preset = DEVICE_PRESETS.get(device)
    if preset is None:
        raise BadInputError(f"unknown device preset '{device}'; known: "
                            f"{', '.join(DEVICE_PRESETS)}")
    spec: dict = {"kind": "llvm", "mtriple": triple, "mattr": ["+neon"],
                  "num-cores": threads or preset.cores}
    if preset.mcpu:
        spec["mcpu"] = preset.mcpu
    return spec


def resolve(text: str, device: str = "generic", threads: int | None = None) -> TargetConfig:
    """``host``, ``arm``, ``arm-linux`` or a TVM target as JSON -> a checked TargetConfig.

    ``threads`` sets ``num-cores``: default 1 for the host, the preset's cores for a device."""
    text = (text or "").strip()
    if threads is not None and threads < 1:
        raise BadInputError(f"threads must be at least 1, not {threads}")
    if text == "host":
        name, spec = "host", host_spec(threads or 1)
    elif text == "arm":
        name, spec = "arm", arm_spec(ANDROID_TRIPLE, device, threads)
    elif text == "arm-linux":
        name, spec = "arm-linux", arm_spec(ARM_LINUX_TRIPLE, device, threads)
    elif text.startswith("{"):
        try:
            spec = json.loads(text)
        except json.JSONDecodeError as err:
            raise BadInputError(f"target JSON does not parse: {err}") from err
        if not isinstance(spec, dict):
            raise BadInputError("target JSON must be an object such as {\"kind\": \"llvm\"}")
        name = "custom"
    else:
        raise BadInputError(f"unknown target '{text}': use {', '.join(TARGET_NAMES)} or a TVM "
                            "target as JSON, e.g. '{\"kind\": \"llvm\", \"num-cores\": 4}'")
    if name == "custom" and spec.get("kind") == "llvm" and "num-cores" not in spec:
        spec = {**spec, "num-cores": threads or 1}
    config = TargetConfig(name, _freeze(spec))
    try:
        config.tvm_target  # noqa: B018 - validate now, with a clear message
    except Exception as err:  # TVM raises ValueError or its own errors for bad attributes
        raise BadInputError(f"TVM rejects target {spec}: {first_line(err)}") from err
    if name == "custom" and config.tvm_target.kind.name != "llvm":
        raise BadInputError(f"target kind '{config.tvm_target.kind.name}' is not supported: "
                            "tvmshuffle compiles for CPUs (kind llvm)")
    if name == "custom" and not config.triple:
        spec = {**dict(config.spec), "mtriple": host_spec()["mtriple"]}
        config = TargetConfig("custom", _freeze(spec))
    _check_mcpu(config)
    return config


def _check_mcpu(config: TargetConfig) -> None:
    """LLVM only warns about an unknown -mcpu and falls back to generic code: refuse it."""
    from tvm.target import codegen

    mcpu = dict(config.spec).get("mcpu")
    if mcpu and not codegen.llvm_is_valid_cpu(str(mcpu), config.triple):
        raise BadInputError(f"LLVM does not know mcpu '{mcpu}' for {config.triple}")
