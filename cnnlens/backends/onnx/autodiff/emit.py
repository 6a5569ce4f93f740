"""Writing ONNX nodes in the model's own opset.

The backward graph lives in the same model as the forward one, so it must use the opset the
model imports (9 to current). The ops whose signature changed between opsets (Reduce*,
Squeeze / Unsqueeze, Slice, Pad, Split, Gemm's optional C) are written here once, for every
opset; rules call these helpers and never look at the opset themselves.
"""

from __future__ import annotations

import hashlib
from typing import Callable, Dict, List, Optional, Sequence, Set, Tuple, Union

import numpy as np
import onnx
from onnx import helper, numpy_helper

#: When each op started taking its axes / pads / split sizes as an input instead of an attribute.
_AXES_AS_INPUT = {"ReduceSum": 13, "Squeeze": 13, "Unsqueeze": 13}
_REDUCE_AXES_AS_INPUT = 18


class Emitter:
    """Appends nodes and initializers with fresh names; small constants are shared."""

    def __init__(self, opset: int, taken: Set[str], prefix: str):
        self.opset = opset
        self.nodes: List[onnx.NodeProto] = []
        self.initializers: List[onnx.TensorProto] = []
        self._taken = taken
        self._prefix = prefix
        self._count = 0
        self._constants: Dict[Tuple, str] = {}  # initializers (in the root) and values computed once
        self._parent: Optional[Emitter] = None

    def child(self, prefix: str) -> "Emitter":
        """An emitter for a subgraph (a Loop body): its own nodes, names unique across both, and
        initializers kept with this emitter's (the outer graph's, which a subgraph may read). The
        subgraph sees what this emitter computed; what it computes itself stays its own."""
        sub = Emitter(self.opset, self._taken, prefix)
        sub.initializers = self.initializers
        sub._parent = self
        return sub

    def _known(self, key: Tuple) -> Optional[str]:
        emitter: Optional[Emitter] = self
        while emitter is not None:
            if key in emitter._constants:
                return emitter._constants[key]
            emitter = emitter._parent
        return None

    def _root(self) -> "Emitter":
        return self if self._parent is None else self._parent._root()

    # ------------------------------------------------------------ names and nodes

    def fresh(self, hint: str = "t") -> str:
        """A tensor name no other tensor of the model has."""
        while True:
            self._count += 1
            name = f"{self._prefix}{hint}_{self._count}"
            if name not in self._taken:
                self._taken.add(name)
                return name

    def reserve(self, name: str) -> str:
        """``name`` itself if no tensor has it yet, else ``name`` with a suffix: a name kept for a
        copied tensor (a Loop body's copy of the model), which ``fresh`` never hands out again."""
        found, count = name, 0
        while found in self._taken:
            count += 1
            found = f"{name}_{count}"
        self._taken.add(found)
        return found

    def op(self, op_type: str, inputs: Sequence[str], outputs: int = 1, **attrs) -> Union[str, List[str]]:
        """Append one node; returns its output name (a list of names when ``outputs`` > 1)."""
        names = [self.fresh(op_type.lower()) for _ in range(outputs)]
        attrs = {k: v for k, v in attrs.items() if v is not None}
        self.nodes.append(helper.make_node(op_type, list(inputs), names, name=names[0], **attrs))
        return names if outputs > 1 else names[0]

    def shared(self, key: Tuple, make: Callable[[], str]) -> str:
        """The tensor ``make()`` writes, written once per ``key`` (a value computed from constants that
        several backward chains use: it is computed once, and ONNX Runtime folds it)."""
        known = self._known(key)
        if known is None:
            known = self._constants[key] = make()
        return known

    def const(self, value: np.ndarray, hint: str = "c") -> str:
        """An initializer holding ``value``: stored once per value (a digest tells large ones apart),
        and an array of one repeated value is not stored at all but made by ConstantOfShape."""
        value = np.asarray(value)
        if value.size <= 16:
            key: Tuple = (value.dtype.str, value.shape, value.tobytes())
        else:
            key = (value.dtype.str, value.shape, hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest())
        known = self._known(key)
        if known is not None:
            return known
        if value.size > 16 and value.ndim >= 1 and (value == value.flat[0]).all():
            fill = numpy_helper.from_array(np.asarray([value.flat[0]], dtype=value.dtype), "value")
            self._constants[key] = self.op("ConstantOfShape", [self.ints(value.shape)], value=fill)
            return self._constants[key]
        name = self.fresh(hint)
        # np.ascontiguousarray would make a rank-0 value (1,): copy, keeping the shape
        self.initializers.append(numpy_helper.from_array(np.array(value, order="C"), name))
        self._root()._constants[key] = name
        return name

    def ints(self, values: Sequence[int]) -> str:
        """A 1-D int64 constant."""
        return self.const(np.asarray(list(values), dtype=np.int64), "ints")

    def scalar(self, value: float, dtype: np.dtype) -> str:
        """A rank-0 constant of ``dtype`` (broadcasts against anything)."""
        return self.const(np.asarray(value, dtype=dtype), "k")

    # ------------------------------------------------------------ opset-dependent ops

    def reduce(self, op_type: str, x: str, axes: Sequence[int], keepdims: bool = True) -> str:
        """ReduceSum / ReduceMean / ReduceMax ... over ``axes``."""
        axes = [int(a) for a in axes]
        since = _AXES_AS_INPUT.get(op_type, _REDUCE_AXES_AS_INPUT)
        if self.opset >= since:
            return self.op(op_type, [x, self.ints(axes)], keepdims=int(keepdims))
        return self.op(op_type, [x], axes=axes, keepdims=int(keepdims))

    def unsqueeze(self, x: str, axes: Sequence[int]) -> str:
        axes = [int(a) for a in axes]
        if self.opset >= _AXES_AS_INPUT["Unsqueeze"]:
            return self.op("Unsqueeze", [x, self.ints(axes)])
        return self.op("Unsqueeze", [x], axes=axes)

    def squeeze(self, x: str, axes: Sequence[int]) -> str:
        axes = [int(a) for a in axes]
        if self.opset >= _AXES_AS_INPUT["Squeeze"]:
            return self.op("Squeeze", [x, self.ints(axes)])
        return self.op("Squeeze", [x], axes=axes)

    def slice(self, x: str, starts: Sequence[int], ends: Sequence[int], axes: Sequence[int],
              steps: Optional[Sequence[int]] = None) -> str:
        """Slice with constant bounds; steps other than 1 need opset 10."""
        if self.opset >= 10:
            inputs = [x, self.ints(starts), self.ints(ends), self.ints(axes)]
            if steps is not None and any(s != 1 for s in steps):
                inputs.append(self.ints(steps))
            return self.op("Slice", inputs)
        if steps is not None and any(s != 1 for s in steps):
            raise ValueError("Slice with steps needs opset 10")
        return self.op("Slice", [x], starts=list(starts), ends=list(ends), axes=list(axes))

    def pad(self, x: str, pads: Sequence[int], value: float = 0.0, dtype: np.dtype = np.dtype(np.float32)) -> str:
        """Constant padding; ``pads`` as ONNX writes them (all begins, then all ends; negative crops)."""
        pads = [int(p) for p in pads]
        if not any(pads):
            return x
        if self.opset >= 11:
            return self.op("Pad", [x, self.ints(pads), self.scalar(value, dtype)], mode="constant")
        if any(p < 0 for p in pads):
            raise ValueError("negative pads need opset 11")
        return self.op("Pad", [x], pads=pads, value=float(value), mode="constant")

    def split(self, x: str, sizes: Sequence[int], axis: int) -> List[str]:
        sizes = [int(s) for s in sizes]
        if len(sizes) == 1:
            return [self.op("Identity", [x])]
        if self.opset >= 13:
            return self.op("Split", [x, self.ints(sizes)], outputs=len(sizes), axis=axis)  # type: ignore[return-value]
        return self.op("Split", [x], outputs=len(sizes), axis=axis, split=sizes)  # type: ignore[return-value]

    def gemm(self, a: str, b: str, trans_a: int, trans_b: int, alpha: float, dtype: np.dtype) -> str:
        """``alpha * A' B'`` (no C: it is optional from opset 11, a zero before)."""
        inputs = [a, b] if self.opset >= 11 else [a, b, self.scalar(0.0, dtype)]
        return self.op("Gemm", inputs, transA=int(trans_a), transB=int(trans_b), alpha=float(alpha))

    # ------------------------------------------------------------ small compositions

    def shape(self, x: str) -> str:
        return self.op("Shape", [x])

    def reshape_like(self, g: str, like: str) -> str:
        """``g`` reshaped to the (runtime) shape of ``like``."""
        return self.op("Reshape", [g, self.shape(like)])

    def zeros_like(self, x: str, dtype: np.dtype) -> str:
        value = numpy_helper.from_array(np.zeros(1, dtype=dtype), "value")
        return self.op("ConstantOfShape", [self.shape(x)], value=value)

    def mul(self, a: str, b: str) -> str:
        return self.op("Mul", [a, b])

    def scale(self, g: str, factor: float, dtype: np.dtype) -> str:
        """``g * factor`` (``g`` itself for a factor of 1)."""
        if factor == 1.0:
            return g
        return self.op("Mul", [g, self.scalar(factor, dtype)])

    def masked(self, g: str, condition: str, dtype: np.dtype) -> str:
        """``g`` where the boolean ``condition`` holds, else 0: a product with the condition as 0 / 1
        (ONNX Runtime's Where is about 9x slower than Cast + Mul on the CPU)."""
        return self.op("Mul", [g, self.op("Cast", [condition], to=onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))])

    def where_positive(self, mask_of: str, g: str, dtype: np.dtype) -> str:
        """``g`` where ``mask_of > 0``, else 0."""
        return self.masked(g, self.op("Greater", [mask_of, self.scalar(0.0, dtype)]), dtype)

    def total(self, parts: Sequence[str]) -> str:
        """The sum of gradient contributions."""
        if len(parts) == 1:
            return parts[0]
        if len(parts) == 2:
            return self.op("Add", list(parts))
        return self.op("Sum", list(parts))
