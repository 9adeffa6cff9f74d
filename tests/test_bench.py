"""Measuring: interleaved timing of several engines, and the host artifact as a callable."""

from __future__ import annotations

import time

import numpy as np

from conftest import compile_and_run
from tvmshuffle import bench, frontends


def test_interleaved_rounds_rotate_and_time_only_after_a_warm_up_call():
    """Each round gives every engine one untimed call then ``calls`` timed ones, starting
    from a different engine each round; each engine's latency is its own."""
    log: list[str] = []

    def engine(name: str, seconds: float):
        def call():
            log.append(name)
            time.sleep(seconds)
        return call

    latency = bench.time_interleaved({"a": engine("a", 0.004), "b": engine("b", 0.0),
                                      "c": engine("c", 0.0)}, rounds=3, calls=2)
    assert log == list("aaabbbccc" "bbbcccaaa" "cccaaabbb")
    assert {name: lat.samples for name, lat in latency.items()} == {"a": 6, "b": 6, "c": 6}
    assert latency["a"].min_ms >= 4.0 > latency["b"].median_ms


def test_vm_runner_computes_what_the_reference_holds(tmp_path):
    """The callable host_vs_peers times is the artifact's VM on the artifact's own input."""
    compile_and_run(frontends.ModelSpec("shufflenet_v1_g3_0.25x", (64, 64)), tmp_path)
    artifact = bench.load_artifact(tmp_path)
    out = bench.flatten_outputs(bench.vm_runner(artifact)())
    assert len(out) == 1
    np.testing.assert_allclose(out[0], artifact.expected[0], atol=1e-4)
