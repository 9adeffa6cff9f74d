"""Shared fixtures: small model files written once per session."""

from __future__ import annotations

import pytest
import torch

from tvmshuffle import frontends, models


@pytest.fixture(scope="session")
def model_files(tmp_path_factory):
    """ShuffleNet 0.25x g3 at 64x64 as a .pt2 and an .onnx file, plus a corrupt file."""
    root = tmp_path_factory.mktemp("models")
    name, shape = "shufflenet_v1_g3_0.25x", (1, 3, 64, 64)
    model = models.build(name)
    pt2 = root / "small.pt2"
    torch.export.save(torch.export.export(model, (torch.zeros(shape),)), str(pt2))
    onnx_path = frontends.export_onnx(model, shape, root / "small.onnx")
    corrupt = root / "corrupt.onnx"
    corrupt.write_bytes(b"this is not a protobuf \x00\xff" * 10)
    return {"pt2": pt2, "onnx": onnx_path, "corrupt": corrupt, "name": name, "shape": shape}


@pytest.fixture(scope="session")
def unsupported_onnx(tmp_path_factory):
    """A valid ONNX model using DFT, which TVM's importer does not implement."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("DFT", ["r"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path_factory.mktemp("unsupported") / "dft.onnx"
    onnx.save(model, str(path))
    return path


def compile_and_run(spec: frontends.ModelSpec, out_dir, threads: int = 1):
    """Import, optimize, build for the host, write the artifact, run it: (manifest, result)."""
    from tvmshuffle import bench, export, target

    config = export.CompileConfig(target.resolve("host"))
    manifest = export.build_artifact(frontends.load(spec), config, out_dir)
    result = bench.run_local(bench.load_artifact(out_dir), threads=threads, repeat=2)
    return manifest, result
