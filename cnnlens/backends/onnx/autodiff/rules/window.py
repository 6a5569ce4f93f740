"""The geometry of sliding-window ops (Conv, ConvTranspose, MaxPool, AveragePool) and the
transposed convolution that scatters a window op's gradient back onto its input."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence, Tuple

import onnx

from ..context import Context, NoRule


@dataclass(frozen=True)
class Window:
    """Per spatial axis: input size, output size, kernel, stride, dilation, pads (begin, end)."""

    size: Tuple[int, ...]
    out: Tuple[int, ...]
    kernel: Tuple[int, ...]
    strides: Tuple[int, ...]
    dilations: Tuple[int, ...]
    begin: Tuple[int, ...]
    end: Tuple[int, ...]

    @property
    def rank(self) -> int:
        return len(self.size)

    def reach(self, axis: int) -> int:
        """How far one window spans: ``(k - 1) d + 1``."""
        return (self.kernel[axis] - 1) * self.dilations[axis] + 1

    def scatter_pads(self) -> Tuple[List[int], List[int]]:
        """(pads, output_padding) for a ConvTranspose that maps the output grid back onto exactly
        the input: ``s (h - 1) + reach - begin - end_pad + output_padding == size``."""
        ends, extra = [], []
        for i in range(self.rank):
            overshoot = self.strides[i] * (self.out[i] - 1) + self.reach(i) - self.begin[i] - self.size[i]
            ends.append(max(overshoot, 0))
            extra.append(max(-overshoot, 0))
        return list(self.begin) + ends, extra


def window(ctx: Context, node: onnx.NodeProto, x: str, kernel: Sequence[int]) -> Window:
    """The window geometry of ``node`` on input ``x`` (auto_pad resolved to explicit pads)."""
    rank = len(kernel)
    shape = ctx.shape(x)
    if shape is None or len(shape) != rank + 2:
        raise NoRule(f"the input {x!r} of {node.op_type} needs a known rank {rank + 2} shape")
    size = ctx.dims(x, range(2, rank + 2))
    strides = tuple(ctx.attr(node, "strides", None) or [1] * rank)
    dilations = tuple(ctx.attr(node, "dilations", None) or [1] * rank)
    auto_pad = ctx.attr(node, "auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for i in range(rank):
            out = -(-size[i] // strides[i])
            total = max(0, (out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - size[i])
            small, large = total // 2, total - total // 2
            begin.append(small if auto_pad == "SAME_UPPER" else large)
            end.append(large if auto_pad == "SAME_UPPER" else small)
    elif auto_pad == "VALID":
        begin, end = [0] * rank, [0] * rank
    else:
        pads = list(ctx.attr(node, "pads", None) or [0] * (2 * rank))
        begin, end = pads[:rank], pads[rank:]
    ceil = bool(ctx.attr(node, "ceil_mode", 0))
    out = []
    for i in range(rank):
        span = size[i] + begin[i] + end[i] - (kernel[i] - 1) * dilations[i] - 1
        count = (-(-span // strides[i]) if ceil else span // strides[i]) + 1
        if ceil and (count - 1) * strides[i] >= size[i] + begin[i]:
            count -= 1  # a last window that would start in the end padding is dropped (as PyTorch)
        out.append(count)
    inferred = ctx.shape(node.output[0])
    if inferred is not None and len(inferred) == rank + 2 and any(
            d is not None and d != o for d, o in zip(inferred[2:], out)):
        raise NoRule(f"ONNX shape inference gives its output the spatial size {tuple(inferred[2:])} but ONNX Runtime "
                     f"computes {tuple(out)} (a ceil_mode window that would start in the padding): ONNX Runtime "
                     f"cannot load graphs built on that shape")
    return Window(tuple(size), tuple(out), tuple(int(k) for k in kernel), tuple(int(s) for s in strides),
                  tuple(int(d) for d in dilations), tuple(int(b) for b in begin), tuple(int(e) for e in end))


def scatter(ctx: Context, g: str, weight: str, geometry: Window, group: int) -> str:
    """``ConvTranspose(g, weight)`` laid back onto the window op's input grid."""
    pads, extra = geometry.scatter_pads()
    return ctx.e.op("ConvTranspose", [g, weight], kernel_shape=list(geometry.kernel), strides=list(geometry.strides),
                    dilations=list(geometry.dilations), pads=pads, group=int(group),
                    output_padding=extra if any(extra) else None)
