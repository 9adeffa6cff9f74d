"""Importers: zoo, .pt2 and .onnx into Relax, their FLOPs agreement, and their input errors."""

from __future__ import annotations

import pytest
from tvm.script import ir as I
from tvm.script import relax as R

from tvmshuffle import flops, frontends, pipeline
from tvmshuffle.errors import BadInputError, ImportFailedError


@pytest.mark.parametrize("text,size", [("224x224", (224, 224)), ("480X640", (480, 640)),
                                       (" 720x1280 ", (720, 1280))])
def test_parse_input_size(text, size):
    """HxW parses height first, case-insensitively."""
    assert frontends.parse_input_size(text) == size


@pytest.mark.parametrize("text", ["224", "224x", "x224", "0x224", "224x-1", "a x b", ""])
def test_parse_input_size_rejects(text):
    """Anything but two positive integers is refused with the expected form."""
    with pytest.raises(BadInputError, match="expected HEIGHTxWIDTH"):
        frontends.parse_input_size(text)


def test_three_import_paths_agree(model_files):
    """The zoo model, its .pt2 and its .onnx import with the same shape and the same FLOPs."""
    size = model_files["shape"][2:]
    zoo = frontends.load(frontends.ModelSpec(model_files["name"], size))
    pt2 = frontends.load(frontends.ModelSpec(str(model_files["pt2"])))
    onnx_model = frontends.load(frontends.ModelSpec(str(model_files["onnx"]), size))
    assert zoo.input_shape == pt2.input_shape == onnx_model.input_shape == model_files["shape"]
    counts = {flops.count(m.mod).macs for m in (zoo, pt2, onnx_model)}
    assert len(counts) == 1 and counts.pop() > 0
    assert (zoo.reference_engine, pt2.reference_engine, onnx_model.reference_engine) == (
        "torch", "torch", "onnxruntime")


def test_graph_passes_fold_batchnorm():
    """After the graph passes no batch_norm is left and convolutions carry a bias add."""
    imported = frontends.load(frontends.ModelSpec("mobilenet_v1_0.25", (64, 64)))
    assert "R.nn.batch_norm" in imported.mod.script()
    optimized = pipeline.optimize(imported.mod)
    assert "batch_norm" not in optimized.script()
    assert flops.count(optimized).macs == flops.count(imported.mod).macs


def test_flops_of_a_hand_written_module():
    """A grouped conv and a matmul are counted as out elements x reduction length."""

    @I.ir_module
    class Module:
        @R.function
        def main(x: R.Tensor((1, 8, 10, 10), "float32"), w: R.Tensor((16, 2, 3, 3), "float32"),
                 m: R.Tensor((1600, 5), "float32")):
            with R.dataflow():
                y = R.nn.conv2d(x, w, padding=[1, 1, 1, 1], groups=4)
                z = R.reshape(y, (1, 1600))
                out = R.matmul(z, m)
                R.output(out)
            return out

    report = flops.count(Module)
    assert [layer.kind for layer in report.layers] == ["grouped", "matmul"]
    assert report.macs == 16 * 10 * 10 * (2 * 3 * 3) + 1600 * 5


def test_missing_and_corrupt_files(model_files, tmp_path):
    """Missing or corrupt model files fail with a message naming the file."""
    with pytest.raises(BadInputError, match="not found"):
        frontends.load(frontends.ModelSpec(str(tmp_path / "nope.onnx")))
    with pytest.raises(BadInputError, match="not found"):
        frontends.load(frontends.ModelSpec(str(tmp_path / "nope.pt2")))
    with pytest.raises(BadInputError, match="not a valid ONNX model"):
        frontends.load(frontends.ModelSpec(str(model_files["corrupt"])))
    bad_pt2 = tmp_path / "bad.pt2"
    bad_pt2.write_bytes(b"garbage")
    with pytest.raises(BadInputError, match="torch.export program"):
        frontends.load(frontends.ModelSpec(str(bad_pt2)))


def test_unsupported_onnx_op_is_named(unsupported_onnx):
    """An ONNX operator TVM cannot import is named in the error."""
    with pytest.raises(ImportFailedError, match="cannot import: DFT"):
        frontends.load(frontends.ModelSpec(str(unsupported_onnx)))


def test_fixed_size_files_refuse_another_size(model_files):
    """A .pt2 exported at 64x64 is not silently compiled at another size."""
    with pytest.raises(BadInputError, match="exported for input 64x64"):
        frontends.load(frontends.ModelSpec(str(model_files["pt2"]), (224, 224)))


def test_too_small_input_is_refused():
    """AlexNet's stride-4 stem and three pools need at least 63x63."""
    with pytest.raises(BadInputError, match="too small for alexnet"):
        frontends.load(frontends.ModelSpec("alexnet", (32, 32)))


def test_dynamic_onnx_dimensions_are_reported_and_settable(caplog, tmp_path):
    """An ONNX input with a dynamic batch, height and width is compiled as batch 1 at 224x224,
    and a warning names each dimension and the flag that sets it; --input-size and --batch set
    them (and silence the warning for what they set); a fixed batch that differs is refused."""
    import logging

    from onnx import TensorProto, helper

    def graph(dims):
        return helper.make_graph(
            [helper.make_node("Relu", ["x"], ["y"])], "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)])

    dynamic, path = graph(["n", 3, "h", "w"]), tmp_path / "m.onnx"
    with caplog.at_level(logging.WARNING):
        name, shape, dtype = frontends._onnx_input_shape(dynamic, path, None, None)
    assert (name, shape, dtype) == ("x", (1, 3, 224, 224), "float32")
    assert ("dynamic batch (--batch) and height (--input-size) and width (--input-size) "
            "compiled as 1x3x224x224") in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        _, shape, _ = frontends._onnx_input_shape(dynamic, path, (96, 128), None)
    assert shape == (1, 3, 96, 128)
    assert "dynamic batch (--batch) compiled as 1x3x96x128" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        _, shape, _ = frontends._onnx_input_shape(dynamic, path, (96, 128), 4)
    assert shape == (4, 3, 96, 128) and "dynamic" not in caplog.text
    with pytest.raises(BadInputError, match="fixed batch of 2, not 4"):
        frontends._onnx_input_shape(graph([2, 3, 8, 8]), path, None, 4)
    with pytest.raises(BadInputError, match="too large"):
        frontends._onnx_input_shape(dynamic, path, (4096, 4096), 1024)


def test_a_zoo_model_compiles_for_the_batch_asked(tmp_path):
    """--batch N builds a library for N images whose outputs match PyTorch's on all N."""
    from conftest import compile_and_run

    manifest, result = compile_and_run(
        frontends.ModelSpec("shufflenet_v1_g3_0.5x", (32, 32), batch=2), tmp_path / "out")
    assert manifest["input"]["shape"] == [2, 3, 32, 32]
    assert result.max_abs_err < 1e-4
