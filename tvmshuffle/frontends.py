"""Model sources -> Relax: a zoo name, a saved ``torch.export`` program (.pt2) or an ONNX file.

Each import also yields the host reference the compiled module is checked against: PyTorch for
zoo models and .pt2 programs, ONNX Runtime for .onnx files.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import tvm

from . import models
from .errors import BadInputError, ImportFailedError, first_line

log = logging.getLogger(__name__)

DEFAULT_INPUT_SIZE = (224, 224)
Reference = Callable[[np.ndarray], list[np.ndarray]]


@dataclass(frozen=True)
class ModelSpec:
    """What the user named: a zoo model or a file, an input size and optional weights."""

    model: str
    input_size: tuple[int, int] | None = None  # (height, width); None keeps the model's own
    state_dict: Path | None = None
    batch: int | None = None  # None keeps the file's own batch (1 for the zoo and dynamic ones)


@dataclass(frozen=True)
class ImportedModel:
    name: str
    kind: str  # zoo | pt2 | onnx
    source: str  # zoo name or absolute file path
    mod: tvm.IRModule
    input_name: str
    input_shape: tuple[int, ...]
    dtype: str
    reference_engine: str  # torch | onnxruntime
    reference: Reference


# pixels of the largest input accepted: 4K (2160x3840) with room; an input of 100000x100000
# would need 224 GiB before the first layer
MAX_PIXELS = 16384 * 16384


def parse_input_size(text: str) -> tuple[int, int]:
    """'224x224' -> (224, 224); height first, as in the paper's Table 8 (480x640, 720x1280)."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text or "")
    if not match or int(match[1]) == 0 or int(match[2]) == 0:
        raise BadInputError(f"bad input size '{text}': expected HEIGHTxWIDTH, e.g. 224x224")
    if int(match[1]) * int(match[2]) > MAX_PIXELS:
        raise BadInputError(f"input size '{text}' is too large: at most {MAX_PIXELS} pixels "
                            "(e.g. 16384x16384)")
    return int(match[1]), int(match[2])


def fixed_input(shape: tuple[int, ...], dtype: str = "float32", seed: int = 0) -> np.ndarray:
    """The deterministic input every numerics check and latency run uses."""
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def load(spec: ModelSpec, decompose: bool = True) -> ImportedModel:
    """Import ``spec`` into Relax. ``decompose=False`` skips PyTorch's decompositions (faster;
    enough for counting FLOPs, not for compiling arbitrary user models)."""
    path = Path(spec.model)
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return _load_onnx(path, spec.input_size, spec.batch)
    if suffix == ".pt2":
        return _load_pt2(path, spec.input_size, spec.batch)
    if suffix in (".pt", ".pth", ".pb", ".tflite", ".h5"):
        raise BadInputError(f"unsupported model file '{spec.model}': give a zoo name, a .onnx "
                            "file or a .pt2 file saved with torch.export.save")
    return _load_zoo(spec, decompose)


def _check_pixels(shape: tuple[int, ...]) -> None:
    """The input tensor as a whole (batch included) within the limit of one input."""
    if len(shape) == 4 and shape[0] * shape[2] * shape[3] > MAX_PIXELS:
        raise BadInputError(f"input {'x'.join(map(str, shape))} is too large: batch x height x "
                            f"width at most {MAX_PIXELS} pixels")


def check_size(name: str, size: tuple[int, int], minimum: int) -> None:
    if min(size) < minimum:
        raise BadInputError(f"input size {size[0]}x{size[1]} is too small for {name}: "
                            f"it needs at least {minimum}x{minimum}")



def _torch_reference(module: Callable) -> Reference:
    def run(x: np.ndarray) -> list[np.ndarray]:
        import torch

        with torch.no_grad():
            out = module(torch.from_numpy(x))
        outs = out if isinstance(out, (tuple, list)) else (out,)
        return [o.detach().numpy() for o in outs]

    return run


def _from_exported(program, name: str, decompose: bool = True) -> tvm.IRModule:
    from tvm.relax.frontend.torch import from_exported_program

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return from_exported_program(program, unwrap_unit_return_tuple=True,
                                         run_ep_decomposition=decompose)
    except Exception as err:  # the importer raises many types for unsupported ops
        raise ImportFailedError(f"TVM cannot import {name}: {first_line(err)}") from err


def _load_zoo(spec: ModelSpec, decompose: bool) -> ImportedModel:
    import torch

    entry = models.lookup(spec.model)
    size = spec.input_size or DEFAULT_INPUT_SIZE
    check_size(entry.name, size, entry.min_input)
    model = models.build(entry.name, spec.state_dict)
    shape = (spec.batch or 1, 3, *size)
    _check_pixels(shape)
    example = torch.from_numpy(fixed_input(shape))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        program = torch.export.export(model, (example,))
    mod = _from_exported(program, entry.name, decompose)
    return ImportedModel(entry.name, "zoo", entry.name, mod, "x", shape, "float32", "torch",
                         _torch_reference(model))


def load_module(module, example: np.ndarray, name: str) -> ImportedModel:
    """Import an in-memory ``torch.nn.Module`` (in eval mode), exported with ``torch.export``
    on ``example``, whose shape and dtype the compiled model takes; its reference is the
    module itself."""
    import torch

    _check_pixels(tuple(example.shape))
    module.eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.export(module, (torch.from_numpy(example),))
    except Exception as err:  # noqa: BLE001 - torch.export raises many types
        raise ImportFailedError(f"torch.export cannot export {name}: {first_line(err)}") from err
    loaded = load_program(program, name, f"<{type(module).__name__}>")
    return dataclasses.replace(loaded, kind="module", reference=_torch_reference(module))


def _load_pt2(path: Path, size: tuple[int, int] | None, batch: int | None) -> ImportedModel:
    import torch

    if not path.is_file():
        raise BadInputError(f"model file not found: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.load(str(path))
    except Exception as err:  # torch raises zipfile, pickle and runtime errors alike
        raise BadInputError(f"cannot read {path} as a torch.export program: "
                            f"{first_line(err)}") from err
    return load_program(program, path.stem, str(path.resolve()), size, batch)


def load_program(program, name: str, source: str, size: tuple[int, int] | None = None,
                 batch: int | None = None) -> ImportedModel:
    """Import a ``torch.export`` ExportedProgram (read from the file ``source``, or made in
    memory: ``source`` then says what it was)."""
    path = Path(source)
    user_inputs = program.graph_signature.user_inputs
    if len(user_inputs) != 1:
        raise BadInputError(f"{path} takes {len(user_inputs)} inputs; tvmshuffle compiles "
                            "single-input models")
    node = next(n for n in program.graph.nodes if n.name == user_inputs[0])
    value = node.meta.get("val")
    if value is None or not all(isinstance(d, int) for d in value.shape):
        raise BadInputError(f"{path} has a dynamic input shape; export it with static shapes")
    shape = tuple(int(d) for d in value.shape)
    if size is not None and len(shape) == 4 and tuple(shape[2:]) != size:
        raise BadInputError(f"{path} was exported for input {shape[2]}x{shape[3]}, not "
                            f"{size[0]}x{size[1]}: re-export it at that size")
    if batch is not None and shape[0] != batch:
        raise BadInputError(f"{path} was exported for batch {shape[0]}, not {batch}: re-export "
                            "it with that batch")
    mod = _from_exported(program, str(path))
    dtype = str(value.dtype).replace("torch.", "")
    kind = "pt2" if source.lower().endswith(".pt2") else "program"
    return ImportedModel(name, kind, source, mod, user_inputs[0], shape, dtype, "torch",
                         _torch_reference(program.module()))


_ONNX_DTYPES = {1: "float32", 10: "float16", 11: "float64"}


def _onnx_input_shape(graph, path: Path, size: tuple[int, int] | None, batch: int | None):
    initializers = {init.name for init in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise BadInputError(f"{path} has {len(inputs)} inputs; tvmshuffle compiles single-input "
                            "models")
    tensor_type = inputs[0].type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]
    if len(dims) == 4:
        static = dims[2] is not None and dims[3] is not None
        if size is not None and static and (dims[2], dims[3]) != size:
            raise BadInputError(f"{path} has a fixed input of {dims[2]}x{dims[3]}, not "
                                f"{size[0]}x{size[1]}")
        if batch is not None and dims[0] is not None and dims[0] != batch:
            raise BadInputError(f"{path} has a fixed batch of {dims[0]}, not {batch}")
        wanted = size or DEFAULT_INPUT_SIZE
        fixed = [dims[0] or batch or 1, dims[1], dims[2] or wanted[0], dims[3] or wanted[1]]
        # a dynamic dimension the user did not set is said, with the flag that sets it
        unset = [name for name, d, given in (("batch (--batch)", dims[0], batch),
                                             ("height (--input-size)", dims[2], size),
                                             ("width (--input-size)", dims[3], size))
                 if d is None and given is None]
        if unset:
            log.warning("%s: dynamic %s compiled as %s", path.name, " and ".join(unset),
                        "x".join(map(str, fixed)))
        dims = fixed
        _check_pixels(tuple(dims))
    if any(d is None for d in dims):
        raise BadInputError(f"{path}: cannot resolve the input shape {dims}")
    dtype = _ONNX_DTYPES.get(tensor_type.elem_type)
    if dtype is None:
        raise BadInputError(f"{path}: input element type {tensor_type.elem_type} not supported")
    return inputs[0].name, tuple(dims), dtype


def _load_onnx(path: Path, size: tuple[int, int] | None, batch: int | None) -> ImportedModel:
    import onnx

    if not path.is_file():
        raise BadInputError(f"model file not found: {path}")
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as err:  # DecodeError, ValidationError, OSError
        raise BadInputError(f"{path} is not a valid ONNX model: {first_line(err)}") from err
    return load_onnx_model(model, path.stem, str(path.resolve()), size, batch)


def load_onnx_model(model, name: str, source: str, size: tuple[int, int] | None = None,
                    batch: int | None = None) -> ImportedModel:
    """Import an ``onnx.ModelProto`` (read from ``source``, or made in memory); its reference
    is ONNX Runtime on the same model."""
    path = Path(source)
    input_name, shape, dtype = _onnx_input_shape(model.graph, path, size, batch)
    # the reference loads first: a model ONNX Runtime refuses (an opset it does not know) is
    # one line now, not a traceback after the whole compile
    reference = _onnxruntime_reference(path if source.lower().endswith(".onnx")
                                        else model.SerializeToString(), input_name, path)
    from tvm.relax.frontend.onnx import from_onnx

    try:
        mod = from_onnx(model, shape_dict={input_name: list(shape)},
                        dtype_dict={input_name: dtype})
    except tvm.error.OpNotImplemented as err:
        ops = str(err).split(":", 1)[-1].strip().splitlines()[0]
        raise ImportFailedError(f"{path} uses ONNX operator(s) TVM cannot import: {ops}") from err
    except Exception as err:
        raise ImportFailedError(f"TVM cannot import {path}: {first_line(err)}") from err
    return ImportedModel(name, "onnx", source, mod, input_name, shape, dtype, "onnxruntime",
                         reference)


def onnxruntime_session(path: Path | bytes, threads: int = 1):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    model = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def _onnxruntime_reference(model: Path | bytes, input_name: str, path: Path) -> Reference:
    """ONNX Runtime's outputs for an input: the session made now, so that a model it cannot
    load (an opset newer than it knows, say) is an ImportFailedError before any compiling."""
    try:
        session = onnxruntime_session(model)
    except Exception as err:  # onnxruntime's Fail, InvalidGraph, NotImplemented...
        raise ImportFailedError(f"ONNX Runtime, the reference the outputs are checked against, "
                                f"cannot load {path}: {first_line(err)}") from err

    def run(x: np.ndarray) -> list[np.ndarray]:
        return list(session.run(None, {input_name: x}))

    return run


def export_onnx(model, input_shape: tuple[int, ...], path: Path) -> Path:
    """Write a PyTorch module to ONNX with PyTorch's torch.export-based exporter (its graph
    optimizer folds BatchNorm into the convolutions, as in most ONNX models met in the wild).

    The older TorchScript exporter cannot export an adaptive pooling whose output size does not
    divide its input, which AlexNet needs at 480x640."""
    import contextlib
    import io

    import torch

    example = torch.from_numpy(fixed_input(input_shape))
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        torch.onnx.export(model, (example,), str(path), dynamo=True, verbose=False,
                          external_data=False, input_names=["input"], output_names=["output"])
    return path
