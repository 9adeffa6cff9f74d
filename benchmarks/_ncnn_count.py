"""One ncnn inference, counted: run by the emulated arm64 python under the instruction counter
for benchmarks/arm_instructions.py (the ncnn side of tvmshuffle/_emu_count.py).

    python _ncnn_count.py SITE_NCNN MODEL.param MODEL.bin INPUT.npy OUT_DIR

fp32 throughout (fp16 and bf16 storage and arithmetic off), one thread, no Vulkan; a warm-up
inference, then a second one on a new extractor (an extractor keeps the blobs it computed)
inside the counting window; its output goes to OUT_DIR/output_0.npy.
"""

import os
import sys
from pathlib import Path

# tvmshuffle/_emu_mark.py by path: the emulated python has no tvmshuffle package
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tvmshuffle"))
from _emu_mark import MARK_START, MARK_STOP, mark  # noqa: E402


def main(site: str, param: str, weights: str, input_path: str, out_dir: str) -> None:
    sys.path.insert(0, site)
    import ncnn
    import numpy as np

    net = ncnn.Net()
    opt = net.opt
    opt.num_threads = 1
    opt.use_vulkan_compute = False
    opt.use_fp16_storage = opt.use_fp16_packed = opt.use_fp16_arithmetic = False
    opt.use_bf16_storage = False
    if net.load_param(param) != 0 or net.load_model(weights) != 0:
        raise SystemExit(f"ncnn could not load {param} / {weights}")
    x = np.ascontiguousarray(np.load(input_path)[0], dtype=np.float32)  # CHW, batch 1

    def infer():
        extractor = net.create_extractor()
        extractor.input("in0", ncnn.Mat(x).clone())
        status, out = extractor.extract("out0")
        if status != 0:
            raise SystemExit(f"ncnn failed to compute out0 (status {status})")
        return np.array(out)

    infer()
    mark(MARK_START)
    y = infer()
    mark(MARK_STOP)
    np.save(os.path.join(out_dir, "output_0.npy"), y)


if __name__ == "__main__":
    main(*sys.argv[1:6])
