"""`tvmshuffle compare`: the speedup arithmetic, the report files, and bad input."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from tvmshuffle import compare
from tvmshuffle.cli import cli


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def cell(model, macs, latency, size=(224, 224)):
    return compare.Cell(model, size, macs, latency_ms=latency)


def test_speedup_arithmetic():
    """Theoretical speedup is the FLOPs ratio, measured the latency ratio, efficiency their
    quotient, each against the baseline at the same size."""
    cells = [cell("alexnet", 720, 180.0), cell("shufflenet", 40, 15.0),
             cell("alexnet", 1000, 400.0, (480, 640)), cell("shufflenet", 100, 100.0, (480, 640))]
    result = compare.speedups(cells, "alexnet")
    small = result[("shufflenet", (224, 224))]
    assert small["theoretical"] == pytest.approx(18.0)
    assert small["measured"] == pytest.approx(12.0)
    assert small["efficiency"] == pytest.approx(12.0 / 18.0)
    large = result[("shufflenet", (480, 640))]
    assert (large["theoretical"], large["measured"]) == (pytest.approx(10.0), pytest.approx(4.0))


def test_flops_to_speed_fit():
    """Latency growing as FLOPs**0.69 at every size gives the paper's 4x -> 2.6x."""
    cells = []
    for size, scale in (((224, 224), 1.0), ((480, 640), 6.0)):
        for macs in (40, 140, 520):
            cells.append(cell("shufflenet_v1_g3", macs * scale, 2.0 * scale * macs ** 0.69, size))
    fit = compare.flops_to_speed(cells)
    assert fit["slope"] == pytest.approx(0.69, abs=1e-9)
    assert fit["speed_for_4x_fewer_flops"] == pytest.approx(4 ** 0.69)


@pytest.mark.slow
def test_compare_writes_table_json_and_png(tmp_path):
    """A small grid writes report.md, report.json (numbers that agree with the FLOPs) and a
    real PNG."""
    out = tmp_path / "report"
    result = invoke("compare", "--models", "shufflenet_v1_g3_0.25x,alexnet,mobilenet_v1_0.25",
                    "--sizes", "64x64", "--repeat", "2", "-o", str(out), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads((out / "report.json").read_text())
    assert json.loads(result.stdout) == data
    rows = {row["model"]: row for row in data["rows"]}
    alexnet, shufflenet = rows["alexnet"], rows["shufflenet_v1_g3_0.25x"]
    over = shufflenet["speedup_over"]["alexnet"]
    assert over["theoretical"] == pytest.approx(alexnet["mflops"] / shufflenet["mflops"], rel=1e-2)
    assert over["measured"] == pytest.approx(alexnet["latency_ms"] / shufflenet["latency_ms"])
    assert all(row["max_abs_err"] < 1e-4 for row in data["rows"])
    assert set(shufflenet["peers_ms"]) == {"torch", "onnxruntime"}
    assert (out / "speedup.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    with Image.open(out / "speedup.png") as image:
        assert image.size[0] > 400 and image.size[1] > 300
    assert "shufflenet_v1_g3_0.25x" in (out / "report.md").read_text()


@pytest.mark.parametrize("args,fragment", [
    (("--models", "shufflenet_v1_g3_1.0x,resnet50"), "unknown model 'resnet50'"),
    (("--sizes", "224x224,640"), "bad input size '640'"),
    (("--baselines", "tflite"), "unknown baseline"),
    (("-o", "/proc/nowhere/report"), "not writable"),
])
def test_compare_bad_input(args, fragment):
    """Bad --models, --sizes, --baselines or report dir: one line, non-zero exit."""
    result = invoke("compare", *args)
    assert result.exit_code != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and fragment in lines[0], lines
