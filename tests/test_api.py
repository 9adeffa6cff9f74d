"""The Python API (`tvmshuffle.load / compile / tune / deploy / compare`): an in-memory
nn.Module compiled in three lines and run on arrays it was never checked on, ONNX and
torch.export programs in memory, the artifact saved and reloaded, errors of the command line's
family."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

import tvmshuffle
from tvmshuffle import frontends, models


class TinyShuffle(torch.nn.Module):
    """A ShuffleNet unit's idioms: a grouped 1x1 convolution, a channel shuffle, a depthwise
    3x3, a residual, pooling and a classifier."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 12, 3, padding=1)
        self.group = torch.nn.Conv2d(12, 12, 1, groups=3)
        self.depthwise = torch.nn.Conv2d(12, 12, 3, padding=1, groups=12)
        self.fc = torch.nn.Linear(12, 5)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        y = self.group(x)
        b, c, h, w = y.shape
        y = y.reshape(b, 3, c // 3, h, w).transpose(1, 2).reshape(b, c, h, w)
        y = torch.relu(self.depthwise(y) + x)
        return self.fc(y.mean((2, 3)))


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return TinyShuffle().eval()


@pytest.fixture(scope="module")
def compiled(tiny, tmp_path_factory):
    model = tvmshuffle.load(tiny, input_size=(16, 16))
    return tvmshuffle.compile(model, out_dir=tmp_path_factory.mktemp("api") / "tiny")


def test_an_nn_module_compiles_in_three_lines_and_runs_on_new_inputs(tiny, compiled):
    """load, compile, run: outputs match the module on inputs other than the one the artifact
    was checked with at compile time."""
    assert compiled.manifest["model"] == "TinyShuffle"
    assert compiled.manifest["input"]["shape"] == [1, 3, 16, 16]
    for seed in (1, 2):
        x = np.random.default_rng(seed).standard_normal((1, 3, 16, 16)).astype("float32")
        with torch.no_grad():
            want = tiny(torch.from_numpy(x)).numpy()
        got = compiled.run(x)
        assert got.shape == (1, 5)
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
    # a torch tensor in, the same answer
    assert np.array_equal(compiled.run(torch.from_numpy(x)), got)
    assert compiled.check() < 1e-4


def test_an_artifact_times_itself_and_survives_a_save(compiled, tmp_path):
    result = compiled.benchmark(repeat=3)
    assert result.latency.samples == 3 and result.latency.median_ms > 0
    assert result.max_abs_err < 1e-4
    saved = compiled.save(tmp_path / "kept")
    assert (tmp_path / "kept" / "model.so").is_file()
    assert saved.manifest == compiled.manifest
    x = np.ones((1, 3, 16, 16), "float32")
    assert np.array_equal(saved.run(x), compiled.run(x))
    assert tvmshuffle.Artifact(tmp_path / "kept").check() < 1e-4


def test_an_input_of_another_shape_is_refused_in_one_sentence(compiled):
    with pytest.raises(tvmshuffle.BadInputError, match="compiled for"):
        compiled.run(np.zeros((1, 3, 32, 32), "float32"))


def test_onnx_and_exported_programs_load_from_memory(tiny, tmp_path):
    """An onnx.ModelProto (checked against ONNX Runtime on the same bytes) and a
    torch.export.ExportedProgram, neither written anywhere by the user."""
    path = frontends.export_onnx(tiny, (1, 3, 16, 16), tmp_path / "tiny.onnx")
    proto = onnx.load(str(path))
    path.unlink()
    from_onnx = tvmshuffle.load(proto, name="tiny_onnx")
    assert from_onnx.reference_engine == "onnxruntime" and from_onnx.kind == "onnx"
    lib = tvmshuffle.compile(from_onnx, out_dir=tmp_path / "onnx")
    assert lib.check() < 1e-4

    program = torch.export.export(tiny, (torch.zeros(1, 3, 16, 16),))
    from_program = tvmshuffle.load(program)
    assert from_program.input_shape == (1, 3, 16, 16)
    assert tvmshuffle.compile(from_program, out_dir=tmp_path / "program").check() < 1e-4


def test_what_cannot_be_loaded_is_said_with_the_cli_s_errors(tiny):
    with pytest.raises(tvmshuffle.BadInputError, match="cannot load a int"):
        tvmshuffle.load(42)
    with pytest.raises(tvmshuffle.BadInputError, match="not found"):
        tvmshuffle.load("no_such_model.onnx")
    with pytest.raises(tvmshuffle.BadInputError, match="input size"):
        tvmshuffle.load(tiny, input_size="big")
    with pytest.raises(tvmshuffle.TvmShuffleError):
        tvmshuffle.load(models.model_names()[0], input_size=(8, 8))


def test_deploy_runs_an_artifact_on_the_embedded_device(compiled):
    """tvmshuffle.deploy with no tracker: this CPU behind an embedded tracker, stopped after;
    the numerics checked there."""
    data = tvmshuffle.deploy(compiled, repeat=2)
    assert data["max_abs_err"] < 1e-4
    assert data["device"]["key"] and data["latency_ms"]["samples"] == 2


def test_the_stage_modules_stay_modules_and_are_the_api_s_functions():
    """tvmshuffle.tune, .deploy and .compare are the API's functions and the stages' modules."""
    from tvmshuffle import api, compare, deploy, tune

    assert tune.TuneConfig and deploy.DeployConfig and compare.CompareConfig
    for name in ("tune", "deploy", "compare"):
        assert callable(getattr(tvmshuffle, name))
    with pytest.raises(tvmshuffle.BadInputError, match="bad ops"):
        tvmshuffle.tune("shufflenet_v1_g3_0.25x", ops=("nonsense",))
    assert tvmshuffle.load is api.load
