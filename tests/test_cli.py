"""The command line, driven with click's CliRunner: outputs, JSON and one-line errors."""

from __future__ import annotations

import json

import pytest
from conftest import assert_one_line_error, invoke


def test_help_lists_the_commands():
    """--help names every command a script relies on."""
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("models", "flops", "compile", "run", "tune", "deploy", "compare"):
        assert command in result.output


def test_models_json_lists_matching_models():
    """`models PATTERN --json` gives FLOPs and parameters of the matching models."""
    result = invoke("models", "shufflenet_v1_g3_*", "--json")
    assert result.exit_code == 0
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert set(rows) == {f"shufflenet_v1_g3_{s}x" for s in (0.25, 0.5, 1.0, 1.5, 2.0)}
    assert rows["shufflenet_v1_g3_1.0x"]["mflops"] == pytest.approx(137, rel=0.03)
    assert 1.5e6 < rows["shufflenet_v1_g3_1.0x"]["params"] < 2.5e6


def test_flops_json_scales_with_input_size():
    """`flops --input-size` counts the larger input: convs scale with pixels, FC does not."""
    small = json.loads(invoke("flops", "shufflenet_v1_g3_1.0x", "--json").stdout)
    large = json.loads(invoke("flops", "shufflenet_v1_g3_1.0x", "--input-size", "480x640",
                              "--json").stdout)
    assert large["input_shape"] == [1, 3, 480, 640]
    conv_small = small["macs"] - small["by_kind"]["matmul"]
    conv_large = large["macs"] - large["by_kind"]["matmul"]
    assert conv_large / conv_small == pytest.approx(480 * 640 / 224**2, rel=0.05)
    assert large["by_kind"]["matmul"] == small["by_kind"]["matmul"]


@pytest.mark.slow
def test_compile_then_run_json(tmp_path):
    """compile writes model.so, manifest.json and final_ir.py; run --json checks numerics."""
    out = tmp_path / "out"
    result = invoke("compile", "shufflenet_v1_g3_0.25x", "--target", "host", "--input-size",
                    "96x96", "-o", str(out), "--dump-ir")
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["input"]["shape"] == [1, 3, 96, 96]
    assert manifest["target"]["tvm"]["num-cores"] >= 1
    assert manifest["kernels"] and all(k in (out / "final_ir.py").read_text()
                                       for k in manifest["kernels"])
    assert len(manifest["library"]["sha256"]) == 64
    run = invoke("run", str(out), "--json", "--repeat", "3")
    assert run.exit_code == 0, run.output
    data = json.loads(run.stdout)
    assert data["max_abs_err"] < 1e-4
    assert data["latency_ms"]["samples"] == 3
    assert 0 < data["latency_ms"]["min_ms"] <= data["latency_ms"]["median_ms"]


@pytest.mark.slow
def test_run_refuses_a_tampered_library(tmp_path):
    """A model.so whose sha256 no longer matches the manifest is refused."""
    out = tmp_path / "out"
    assert invoke("compile", "mobilenet_v1_0.25", "--input-size", "64x64", "-o",
                  str(out)).exit_code == 0
    with open(out / "model.so", "ab") as f:
        f.write(b"\0")
    assert_one_line_error(invoke("run", str(out)), "does not match the sha256")


@pytest.mark.slow
def test_run_refuses_an_edited_manifest_and_a_corrupt_reference(tmp_path):
    """A manifest whose input shape was edited, a cut library whose sha256 was updated, and a
    reference.npz that is no archive, are refused in one line, not run as if nothing were
    wrong."""
    import hashlib
    import shutil

    out = tmp_path / "out"
    assert invoke("compile", "mobilenet_v1_0.25", "--input-size", "64x64", "-o",
                  str(out)).exit_code == 0
    edited = tmp_path / "edited"
    shutil.copytree(out, edited)
    manifest = json.loads((edited / "manifest.json").read_text())
    manifest["input"]["shape"] = [1, 3, 128, 128]
    (edited / "manifest.json").write_text(json.dumps(manifest))
    assert_one_line_error(invoke("run", str(edited)), "the manifest was edited")
    # a cut library whose sha256 was updated to match: refused, not loaded (SIGBUS)
    cut = tmp_path / "cut"
    shutil.copytree(out, cut)
    library = cut / manifest["library"]["file"]
    library.write_bytes(library.read_bytes()[: library.stat().st_size // 2])
    manifest = json.loads((cut / "manifest.json").read_text())
    manifest["library"]["sha256"] = hashlib.sha256(library.read_bytes()).hexdigest()
    (cut / "manifest.json").write_text(json.dumps(manifest))
    assert_one_line_error(invoke("run", str(cut)), "is damaged (cut:")
    (out / "reference.npz").write_bytes(b"not an archive")
    assert_one_line_error(invoke("run", str(out)), "damaged artifact")


@pytest.mark.slow
def test_run_refuses_wrong_numerics(tmp_path):
    """A reference that disagrees with the module fails with the error size, no latency."""
    import numpy as np

    out = tmp_path / "out"
    assert invoke("compile", "mobilenet_v1_0.25", "--input-size", "64x64", "-o",
                  str(out)).exit_code == 0
    data = dict(np.load(out / "reference.npz"))
    data["output_0"] = data["output_0"] + 0.5
    np.savez(out / "reference.npz", **data)
    result = invoke("run", str(out), "--json")
    assert_one_line_error(result, "max abs error 0.5")
    assert result.stdout == ""


@pytest.mark.parametrize("args,fragments", [
    (("compile", "shufflenet_g3_1.0x", "-o", "{tmp}/o"), ("unknown model", "did you mean")),
    (("compile", "{tmp}/missing.onnx", "-o", "{tmp}/o"), ("not found", "missing.onnx")),
    (("compile", "{tmp}/missing.pt2", "-o", "{tmp}/o"), ("not found",)),
    (("compile", "alexnet", "--input-size", "224", "-o", "{tmp}/o"), ("bad input size",)),
    (("compile", "alexnet", "--target", "riscv", "-o", "{tmp}/o"), ("unknown target",)),
    (("compile", "alexnet", "--target", '{"kind": "llvm", "mcpu": "z80"}', "-o", "{tmp}/o"),
     ("mcpu 'z80'",)),
    (("compile", "alexnet", "-o", "{tmp}/file/o"), ("not writable",)),
    (("flops", "alexnet", "--input-size", "10x10"), ("too small",)),
    (("compile", "alexnet", "--input-size", "100000x100000", "-o", "{tmp}/o"), ("too large",)),
    (("compile", "shufflenet_v1_g3_0.25x", "--state-dict", "{tmp}/file", "-o", "{tmp}/o"),
     ("cannot load state_dict", "not a file torch.load reads as weights")),
    (("compile", "shufflenet_v1_g3_0.25x", "--state-dict", "{tmp}/random.pt", "-o", "{tmp}/o"),
     ("cannot load state_dict",)),
    (("models", "resnet*"), ("no zoo model matches",)),
    (("run", "{tmp}"), ("not a tvmshuffle artifact",)),
])
def test_bad_input_is_one_line(args, fragments, tmp_path):
    """Each kind of bad input gives one 'Error:' line and a non-zero exit, no traceback."""
    (tmp_path / "file").write_text("a file, not a directory")
    (tmp_path / "random.pt").write_bytes(bytes(range(256)) * 64)
    result = invoke(*(a.replace("{tmp}", str(tmp_path)) for a in args))
    assert_one_line_error(result, *fragments)


def test_corrupt_and_unsupported_onnx_are_one_line(model_files, unsupported_onnx, tmp_path):
    """A corrupt ONNX file and one with an op TVM lacks each fail in one line naming it."""
    assert_one_line_error(invoke("compile", str(model_files["corrupt"]), "-o",
                                 str(tmp_path / "o")), "not a valid ONNX model")
    assert_one_line_error(invoke("compile", str(unsupported_onnx), "-o", str(tmp_path / "o")),
                          "DFT")


def _relu_onnx(path, dims, opset: int):
    """A one-ReLU ONNX model of input and output ``dims`` (names for dynamic ones) at ``opset``,
    saved at ``path``."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), str(path))
    return path


def test_an_onnx_opset_the_reference_does_not_know_is_one_line(tmp_path):
    """ONNX opset 99 passes onnx's checker and TVM's importer; ONNX Runtime, the reference,
    refuses it: one line before any compiling, and no library left without a manifest."""
    path = _relu_onnx(tmp_path / "future.onnx", [1, 3, 8, 8], opset=99)
    out = tmp_path / "o"
    assert_one_line_error(invoke("compile", str(path), "--input-size", "8x8", "-o", str(out)),
                          "ONNX Runtime", "future.onnx")
    assert not (out / "model.so").exists()


def test_long_stages_print_a_plain_line_where_no_terminal_shows_progress(monkeypatch):
    """Where stderr is no terminal (CI logs), a stage that runs longer than the heartbeat says
    what it is doing, n of N included, in plain lines; a quick one prints nothing."""
    import io
    import time

    from tvmshuffle import report

    stream = io.StringIO()
    monkeypatch.setattr(report.err, "file", stream)
    monkeypatch.setattr(report, "HEARTBEAT_SECONDS", 0.2)
    with report.step("timing every model") as at:
        at("shufflenet at 224x224 (cell 2 of 5)")
        time.sleep(2.5)
    lines = stream.getvalue().splitlines()
    assert lines and all(line.endswith("timing every model: shufflenet at 224x224 (cell 2 of 5)")
                         for line in lines), lines
    assert lines[0].startswith("[")
    stream.truncate(0)
    stream.seek(0)
    time.sleep(1.5)  # nothing running: nothing said
    assert stream.getvalue() == ""


def test_other_libraries_output_goes_to_the_log_file(tmp_path):
    """From the entry point, PyTorch's warning traceback about a damaged .pt2 goes to the log
    file and the terminal gets the one `Error:` line; with --verbose it prints."""
    import os
    import subprocess
    import sys

    damaged = tmp_path / "damaged.pt2"
    damaged.write_bytes(b"PK\x03\x04 not a whole zip file" * 4)
    env = {**os.environ, "TVMSHUFFLE_LOG_DIR": str(tmp_path / "logs")}
    quiet = subprocess.run([sys.executable, "-m", "tvmshuffle.cli", "flops", str(damaged)],
                           capture_output=True, text=True, env=env, timeout=300)
    assert quiet.returncode == 2
    assert quiet.stderr.strip().splitlines() == [quiet.stderr.strip()]
    assert quiet.stderr.startswith("Error: cannot read") and "Traceback" not in quiet.stderr
    (log,) = (tmp_path / "logs").glob("flops-*.log")
    assert "Traceback" in log.read_text()  # torch's, kept for whoever needs it
    verbose = subprocess.run([sys.executable, "-m", "tvmshuffle.cli", "-v", "flops",
                              str(damaged)], capture_output=True, text=True, env=env,
                             timeout=300)
    assert verbose.returncode == 2 and "Traceback" in verbose.stderr
    # a bad option is parsed after stderr went to the log file: its message still shows
    usage = subprocess.run([sys.executable, "-m", "tvmshuffle.cli", "flops", "alexnet",
                            "--batch", "0"], capture_output=True, text=True, env=env, timeout=300)
    assert usage.returncode == 2 and "Error: Invalid value for '--batch'" in usage.stderr


def test_a_silent_tracker_is_one_line_and_exit_6(tmp_path):
    """From the command line, a tracker that accepts the connection and never answers ends
    `deploy` with exit 6 and a line saying what was waited for, not a hang."""
    from conftest import silent_tracker

    out = tmp_path / "o"
    assert invoke("compile", "shufflenet_v1_g3_0.25x", "--input-size", "64x64", "-o",
                  str(out)).exit_code == 0
    with silent_tracker() as port:
        result = invoke("deploy", str(out), "--rpc-tracker", f"127.0.0.1:{port}",
                        "--rpc-key", "phone")
    assert_one_line_error(result, "did not answer within", exit_code=6)


def test_a_dynamic_onnx_model_is_compiled_at_the_size_and_batch_given(tmp_path, caplog):
    """An ONNX file with dynamic batch, height and width: the command line says what it fixed
    them to, and --input-size / --batch set them (manifest and numerics follow)."""
    path = _relu_onnx(tmp_path / "dynamic.onnx", ["n", 3, "h", "w"], opset=17)
    result = invoke("compile", str(path), "--input-size", "8x12", "-o", str(tmp_path / "a"))
    assert result.exit_code == 0, result.output
    # a warning on the terminal (the command line's log handler; here pytest's)
    assert "dynamic batch (--batch) compiled as 1x3x8x12" in caplog.text
    caplog.clear()
    result = invoke("compile", str(path), "--input-size", "8x12", "--batch", "2", "-o",
                    str(tmp_path / "b"), "--json")
    assert result.exit_code == 0, result.output
    assert "dynamic" not in caplog.text
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["input"]["shape"] == [2, 3, 8, 12]
    assert invoke("run", str(tmp_path / "b")).exit_code == 0
