"""`tvmshuffle compare`: the speedup arithmetic, the report files, and bad input."""

from __future__ import annotations

import json

import pytest
from conftest import assert_one_line_error, invoke
from tvmshuffle import compare


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


def test_speedup_over_the_baselines_fastest_engine():
    """On the machine the peers ran on, the speedup is also given over the baseline as the
    fastest engine of the run ran it: our AlexNet 4x slower than ONNX Runtime's no longer
    flatters ShuffleNet; on another device (a phone) it is not given."""
    alexnet = compare.Cell("alexnet", (224, 224), 720, latency_ms=240.0,
                           peers_ms={"onnxruntime": 60.0, "torch": 90.0})
    cells = [alexnet, cell("shufflenet", 40, 10.0)]
    entry = compare.speedups(cells, "alexnet", peers_comparable=True)[("shufflenet", (224, 224))]
    assert entry["measured"] == pytest.approx(24.0)
    assert entry["fastest_engine"] == "onnxruntime"
    assert entry["measured_vs_fastest"] == pytest.approx(6.0)
    assert entry["efficiency_vs_fastest"] == pytest.approx(6.0 / 18.0)
    assert "measured_vs_fastest" not in compare.speedups(cells, "alexnet")[("shufflenet",
                                                                           (224, 224))]


def test_an_emulated_devices_speedups_are_measured_by_instructions():
    """Counted instructions, where the emulated device's cells have them, measure the speedups
    and the family's slope instead of the emulator's milliseconds (which here say otherwise)."""
    cells = [compare.Cell("alexnet", (224, 224), 720, latency_ms=100.0, instructions=900),
             compare.Cell("shufflenet_v1_g3_0.5x", (224, 224), 40, latency_ms=50.0,
                          instructions=60),
             compare.Cell("shufflenet_v1_g3_1.0x", (224, 224), 160, latency_ms=60.0,
                          instructions=60 * 4 ** 0.8)]
    assert compare.measured_by(cells) == "instructions"
    entry = compare.speedups(cells, "alexnet")[("shufflenet_v1_g3_0.5x", (224, 224))]
    assert entry["measured"] == pytest.approx(15.0)  # 900 / 60, not 100 / 50
    assert compare.flops_to_speed(cells)["slope"] == pytest.approx(0.8)
    for c in cells:
        c.instructions = None
    assert compare.measured_by(cells) == "latency_ms"
    assert compare.speedups(cells, "alexnet")[("shufflenet_v1_g3_0.5x", (224, 224))][
        "measured"] == pytest.approx(2.0)


def test_flops_to_speed_fit():
    """Latency growing as FLOPs**0.69 at every size gives the paper's 4x -> 2.6x."""
    cells = []
    for size, scale in (((224, 224), 1.0), ((480, 640), 6.0)):
        for macs in (40, 140, 520):
            cells.append(cell("shufflenet_v1_g3", macs * scale, 2.0 * scale * macs ** 0.69, size))
    fit = compare.flops_to_speed(cells)
    assert fit["slope"] == pytest.approx(0.69, abs=1e-9)
    assert fit["speed_for_4x_fewer_flops"] == pytest.approx(4 ** 0.69)


def test_the_device_is_awaited_once_after_the_first_import(monkeypatch):
    """`run` waits for the device (``connect``) only once the first model has imported, so an
    embedded device starts meanwhile; every cell is measured with the tracker it gave."""
    from tvmshuffle import frontends, remote, target

    events = []
    tracker = remote.TrackerConfig("127.0.0.1", 9190, "host")
    monkeypatch.setattr(frontends, "load", lambda spec: events.append(("import", spec.model)))

    def measure(imported, name, size, config, work):
        events.append(("measure", name, config.tracker, config.devices))
        return cell(name, 1, 1.0)

    def connect():
        events.append(("connect",))
        return tracker, 3

    monkeypatch.setattr(compare, "measure_cell", measure)
    config = compare.CompareConfig(target.resolve("host"), None, ("a", "b"), ((64, 64),), ())
    compare.run(config, connect=connect)
    assert events == [("import", "a"), ("connect",), ("measure", "a", tracker, 3),
                      ("import", "b"), ("measure", "b", tracker, 3)]


@pytest.mark.slow
def test_compare_writes_table_json_and_png(tmp_path):
    """A small grid writes report.md, report.json (numbers that agree with the FLOPs) and a
    real PNG."""
    out = tmp_path / "report"
    result = invoke("compare", "--models", "shufflenet_v1_g3_0.25x,alexnet",
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
    (("--models", "alexnet", "--sizes", "224x224,32x32"), "32x32 is too small for alexnet"),
    (("-o", "/proc/nowhere/report"), "not writable"),
])
def test_compare_bad_input(args, fragment):
    """Bad --models, --sizes, --baselines or report dir: one line, non-zero exit."""
    assert_one_line_error(invoke("compare", *args), fragment)


@pytest.mark.slow
def test_compare_tunes_first_when_asked(tmp_path):
    """--tune-trials tunes each model at each size into --db before compiling, and the cells
    are compiled with those records."""
    db = tmp_path / "db"
    result = invoke("compare", "--models", "shufflenet_v1_g3_0.25x", "--sizes", "64x64",
                    "--baselines", "none", "--repeat", "2", "--tune-trials", "4", "--db",
                    str(db), "-o", str(tmp_path / "report"), "--json")
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)["rows"][0]
    assert len((db / "database_tuning_record.json").read_bytes().splitlines()) >= 4
    assert row["tuned_kernels"] >= 1 and row["max_abs_err"] <= 1e-4
    assert row["measured_elsewhere"] == 0  # tuned on this CPU


@pytest.mark.slow
def test_a_cell_lost_on_the_device_is_marked_and_the_others_finish(tmp_path, monkeypatch):
    """A device failure in one cell (here MobileNet's) marks that cell missing with the error
    and the grid goes on; its speedups are absent, the others' present."""
    from tvmshuffle import deploy, errors, remote, target

    real = deploy.run_remote

    def flaky(artifact, tracker, config):
        if artifact.manifest["model"].startswith("mobilenet"):
            raise errors.DeviceError("device 'host' at 127.0.0.1:1 failed while timing: lost")
        return real(artifact, tracker, config)

    monkeypatch.setattr(deploy, "run_remote", flaky)
    with remote.embedded_device() as tracker:
        config = compare.CompareConfig(target.resolve("host"), tracker,
                                       ("shufflenet_v1_g3_0.25x", "mobilenet_v1_0.25"),
                                       ((64, 64),), (), repeat=2)
        cells = compare.run(config)
    lost = [c for c in cells if c.error]
    assert [c.model for c in lost] == ["mobilenet_v1_0.25"] and "lost" in lost[0].error
    assert lost[0].latency_ms is None
    done = [c for c in cells if not c.error]
    assert len(done) == 1 and done[0].latency_ms > 0


def test_the_plot_joins_the_shufflenet_family_and_names_the_other_models():
    """A line through each ShuffleNet family (v1 g3, v2); MobileNet and AlexNet are points with
    their names, not joined to them as if they were one family."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tvmshuffle import compare_report

    fig, ax = plt.subplots()
    compare_report._family_and_points(ax, [(38, 6.0, "shufflenet_v1_g3_0.5x"),
                                           (714, 100.0, "alexnet"),
                                           (137, 9.0, "shufflenet_v1_g3_1.0x"),
                                           (41, 5.0, "shufflenet_v2_0.5x"),
                                           (146, 8.0, "shufflenet_v2_1.0x"),
                                           (569, 30.0, "mobilenet_v1_1.0")],
                                      "o", "C3", "-", "tvmshuffle 224x224", label_points=True)
    lines = ax.get_lines()
    assert [list(line.get_xdata()) for line in lines] == [[38, 137], [41, 146], [569], [714]]
    assert [line.get_linestyle() for line in lines] == ["-", "-", "None", "None"]
    assert [line.get_label() for line in lines[:2]] == [
        "tvmshuffle 224x224 (ShuffleNet v1 g3)", "tvmshuffle 224x224 (ShuffleNet v2)"]
    assert sorted(text.get_text() for text in ax.texts) == ["alexnet", "mobilenet_v1_1.0"]
    plt.close(fig)
