"""A convolution whose input stage reads its input through a function: the kernel both
channel passes make (``channel_shuffle``: a permuted read; ``channel_ranges``: channel ranges of
several tensors). The stage is the padding copy TVM's own convolution has. With no padding
``channel_shuffle`` inlines it (an affine read); ``channel_ranges`` keeps it, a copy the
schedules place (MetaSchedule's CPU rules do not inline a stage with an ``if_then_else``)."""

from __future__ import annotations

from tvm import te, tirx


def gathered_conv2d(shape: tuple[int, ...], dtype: str, read, weight: te.Tensor, strides,
                    padding, dilation, groups: int, out_dtype: str, layout: str,
                    stage: str) -> te.Tensor:
    """Grouped convolution of an input of ``shape`` (``layout`` NCHW with OIHW weights, or NHWC
    with HWIO) whose element (b, ch, y, x) is ``read(b, ch, y, x)``: the padding copy, a TE
    stage named ``stage``, makes the read (a permutation, a gather of channel ranges)."""
    nhwc = layout == "NHWC"
    if nhwc:
        n, h, w, c = shape
        kh, kw, in_per_group, o = (int(d) for d in weight.shape)
    else:
        n, c, h, w = shape
        o, in_per_group, kh, kw = (int(d) for d in weight.shape)
    (sh, sw), (dh, dw) = strides, dilation
    pt, pl, pb, pr = padding
    oh = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
    ow = (w + pl + pr - dw * (kw - 1) - 1) // sw + 1
    out_per_group = o // groups

    def padded(b, ch, y, x):
        value = read(b, ch, y - pt, x - pl)
        if not any(padding):
            return value
        inside = tirx.all(y >= pt, y < h + pt, x >= pl, x < w + pl)
        return tirx.if_then_else(inside, value, tirx.const(0, dtype))

    ph, pw = h + pt + pb, w + pl + pr
    if nhwc:
        pad = te.compute(i64(n, ph, pw, c), lambda b, y, x, ch: padded(b, ch, y, x), name=stage)
    else:
        pad = te.compute(i64(n, c, ph, pw), padded, name=stage)
    ric = te.reduce_axis(i64(0, in_per_group), name="ric")
    rkh = te.reduce_axis(i64(0, kh), name="rkh")
    rkw = te.reduce_axis(i64(0, kw), name="rkw")

    def product(b, oc, y, x):
        ch = ric if groups == 1 else oc // out_per_group * in_per_group + ric
        iy, ix = y * sh + rkh * dh, x * sw + rkw * dw
        if nhwc:
            value, coefficient = pad[b, iy, ix, ch], weight[rkh, rkw, ric, oc]
        else:
            value, coefficient = pad[b, ch, iy, ix], weight[oc, ric, rkh, rkw]
        return value.astype(out_dtype) * coefficient.astype(out_dtype)

    if nhwc:
        return te.compute(i64(n, oh, ow, o),
                          lambda b, y, x, oc: te.sum(product(b, oc, y, x), axis=[ric, rkh, rkw]),
                          name="shuffled_conv2d")
    return te.compute(i64(n, o, oh, ow),
                      lambda b, oc, y, x: te.sum(product(b, oc, y, x), axis=[ric, rkh, rkw]),
                      name="shuffled_conv2d")


def i64(*values: int) -> tuple[tirx.IntImm, ...]:
    """Extents as int64, like the shapes of TVM's legalized operators (FuseTIR needs them
    to agree buffer by buffer)."""
    return tuple(tirx.IntImm("int64", v) for v in values)


def conv_out_dtype(attrs) -> str | None:
    """A Relax conv2d's ``out_dtype``, None when unset (ONNX-imported convolutions leave it
    "void" or None: the input's dtype then)."""
    out_dtype = str(attrs.out_dtype) if attrs.out_dtype is not None else ""
    return None if out_dtype in ("", "None", "void") else out_dtype
