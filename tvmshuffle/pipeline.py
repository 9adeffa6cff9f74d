"""The pass lists, in one place: graph passes on the imported module, then TVM's build pipeline.

Graph passes run on an imported module before fusion: BatchNorm folded into the preceding
convolution's weights and bias (TVM's FoldBatchnormToConv2D), remaining inference-mode ops
decomposed, constants folded, dead code removed. The build pipeline is TVM's default for the
target (legalize, FoldConstant, FuseOps, FuseTIR, lower to the VM); ``relax.build`` alone does
not fuse on CPU.
"""

from __future__ import annotations

import tvm
from tvm import relax


def graph_passes() -> tvm.transform.Pass:
    """Inference clean-up of an imported module: fold BN, fold constants, drop dead code."""
    return tvm.transform.Sequential(
        [
            relax.transform.FoldBatchnormToConv2D(),
            relax.transform.DecomposeOpsForInference(),
            relax.transform.CanonicalizeBindings(),
            relax.transform.FoldConstant(),
            relax.transform.DeadCodeElimination(),
        ],
        name="tvmshuffle.graph_passes",
    )


def optimize(mod: tvm.IRModule) -> tvm.IRModule:
    """The module every later stage (FLOPs, tuning, build) starts from."""
    return graph_passes()(mod)


def lower(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    """TVM's default build pipeline for ``target``: fused TIR kernels and VM code."""
    with target:
        return relax.get_default_pipeline(target)(mod)


def kernel_names(mod: tvm.IRModule) -> list[str]:
    """Names of the TIR kernels of a lowered module, sorted."""
    return sorted(gv.name_hint for gv, func in mod.functions.items()
                  if isinstance(func, tvm.tirx.PrimFunc))
