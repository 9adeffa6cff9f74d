"""FLOPs counted analytically from a Relax module, as the ShuffleNet paper counts them.

The paper's "FLOPs" are multiply-adds of convolutions and fully connected layers; element-wise
ops, pooling and BatchNorm are not counted. Counting on the imported Relax module (not on the
PyTorch model) gives the same number for a zoo model, an ExportedProgram and an ONNX file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import prod
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # TVM is imported where a Relax module is counted: `models` needs none
    import tvm
    from tvm import relax

CONV_OPS = ("relax.nn.conv1d", "relax.nn.conv2d", "relax.nn.conv3d")
MATMUL_OPS = ("relax.matmul",)


@dataclass(frozen=True)
class Layer:
    """One counted operator: its kind, output shape and multiply-adds."""

    op: str
    kind: str  # conv | pointwise | grouped | depthwise | matmul
    out_shape: tuple[int, ...]
    macs: int


@dataclass(frozen=True)
class FlopReport:
    layers: tuple[Layer, ...] = field(default_factory=tuple)

    @property
    def macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    @property
    def mflops(self) -> float:
        return self.macs / 1e6

    def by_kind(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for layer in self.layers:
            totals[layer.kind] = totals.get(layer.kind, 0) + layer.macs
        return totals


def _shape(expr: relax.Expr) -> tuple[int, ...] | None:
    import tvm
    from tvm import relax

    sinfo = expr.ty
    if not isinstance(sinfo, relax.TensorType) or sinfo.shape is None:
        return None
    dims = []
    for dim in sinfo.shape.values:
        if not isinstance(dim, tvm.tirx.IntImm):
            return None  # symbolic dimension: not countable analytically
        dims.append(int(dim))
    return tuple(dims)


def _conv_layer(call: relax.Call) -> Layer | None:
    out, weight = _shape(call), _shape(call.args[1])
    if out is None or weight is None:
        return None
    out_layout = str(call.attrs.out_layout or call.attrs.data_layout)
    kernel_layout = str(call.attrs.kernel_layout)
    out_channels = out[out_layout.index("C")]
    # weight elements per output channel = (C_in / groups) x kernel window, in any layout
    per_output = prod(weight) // out_channels
    groups = int(call.attrs.groups)
    window = prod(w for w, axis in zip(weight, kernel_layout) if axis not in "OI")
    in_per_group = weight[kernel_layout.index("I")]
    return Layer(call.op.name, _conv_kind(groups, in_per_group, out_channels, window), out,
                 prod(out) * per_output)


def _conv_kind(groups: int, in_per_group: int, out_channels: int, window: int) -> str:
    if groups == 1:
        return "pointwise" if window == 1 else "conv"
    if in_per_group == 1 and groups == out_channels:
        return "depthwise"
    return "grouped"


def _matmul_layer(call: relax.Call) -> Layer | None:
    out, lhs = _shape(call), _shape(call.args[0])
    if out is None or lhs is None:
        return None
    return Layer(call.op.name, "matmul", out, prod(out) * lhs[-1])


def count(mod: tvm.IRModule, func_name: str = "main") -> FlopReport:
    """Multiply-adds of every convolution and matmul reachable in ``func_name``.

    Works on a module before fusion (as imported or after the graph passes), where every
    operator is still a Relax call with static shapes.
    """
    import tvm
    from tvm import relax

    layers: list[Layer] = []

    def visit(expr: relax.Expr) -> None:
        if not isinstance(expr, relax.Call) or not isinstance(expr.op, tvm.ir.Op):
            return
        name = expr.op.name
        layer = None
        if name in CONV_OPS:
            layer = _conv_layer(expr)
        elif name in MATMUL_OPS:
            layer = _matmul_layer(expr)
        if layer is not None:
            layers.append(layer)

    relax.analysis.post_order_visit(mod[func_name], visit)
    return FlopReport(tuple(layers))


def count_module(model, input_shape: tuple[int, ...]) -> FlopReport:
    """Multiply-adds of a PyTorch module's convolutions and linear layers at ``input_shape``,
    counted as ``count`` counts them, from the shapes of one forward pass on PyTorch's "meta"
    device (no arithmetic, no weights copied): milliseconds, where importing through
    ``torch.export`` takes seconds a model. ``model`` is built on any device; it is moved to
    "meta" (so pass one you no longer need, or a copy)."""
    import torch
    from torch import nn

    layers: list[Layer] = []

    def conv_hook(module: nn.Conv2d, _inputs, output) -> None:
        window = prod(module.kernel_size)
        in_per_group = module.in_channels // module.groups
        kind = _conv_kind(module.groups, in_per_group, module.out_channels, window)
        layers.append(Layer("relax.nn.conv2d", kind, tuple(output.shape),
                            output.numel() * in_per_group * window))

    def linear_hook(module: nn.Linear, _inputs, output) -> None:
        layers.append(Layer("relax.matmul", "matmul", tuple(output.shape),
                            output.numel() * module.in_features))

    hooks = [m.register_forward_hook(conv_hook if isinstance(m, nn.Conv2d) else linear_hook)
             for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        model = model.to("meta").eval()
        with torch.no_grad():
            model(torch.empty(input_shape, device="meta"))
    finally:
        for hook in hooks:
            hook.remove()
    return FlopReport(tuple(layers))
