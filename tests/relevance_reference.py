"""Independent float64 NumPy reference for LRP (zennit 1.0 rules) and DeepLIFT (Rescale, Captum style)
over the small Keras -> tf2onnx fixtures in tests/data/keras.  NumPy + onnx only (onnxruntime is used
only by the ``__main__`` self-check).  x is NCHW; the NHWC graphs are fed x.transpose(0, 2, 3, 1) and
the maps come back NCHW.  Run ``python tests/relevance_reference.py`` for the self-checks."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

STAB = 1e-6  # stabilizer of the non-epsilon rules (zennit default)
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
IMAGENET_STD = np.array([0.229, 0.224, 0.225])
ELEMENTWISE = {"Relu", "Clip"}  # the only activations in the two fixtures
OTHER = {"Add", "MaxPool", "GlobalAveragePool", "ReduceMean", "Transpose", "Reshape", "Squeeze",
         "Flatten", "Identity"}
COMPOSITES = ("epsilon_plus_flat", "epsilon_gamma_box", "epsilon_alpha2_beta1",
              "epsilon_alpha2_beta1_flat", "epsilon")


def stabilize(z: np.ndarray, e: float) -> np.ndarray:
    """z + e * sign(z), with sign(0) = +1 (zennit's Stabilizer)."""
    return z + e * np.where(z >= 0, 1.0, -1.0)


@dataclass
class _Op:
    kind: str                      # ONNX op type, or "linear" (Conv / MatMul+Add / Gemm, BN merged)
    inputs: list[str]
    output: str
    attrs: dict[str, Any] = field(default_factory=dict)
    W: np.ndarray | None = None    # Conv: (M, C/g, kh, kw); dense: (in, out)
    b: np.ndarray | None = None
    conv: bool = False


def _geom(at: dict, hw: Sequence[int], k: Sequence[int]):
    """pads (t, l, b, r), output size and the per-kernel-tap slices of the padded input (2-D only)."""
    if len(k) != 2:
        raise NotImplementedError("only 2-D conv/pool")
    s, d = list(at.get("strides", [1, 1])), list(at.get("dilations", [1, 1]))
    auto = at.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    ek = [(k[i] - 1) * d[i] + 1 for i in range(2)]
    if auto not in ("NOTSET", "VALID"):
        raise NotImplementedError(f"auto_pad={auto}")  # tf2onnx writes explicit pads
    pads = [0, 0, 0, 0] if auto == "VALID" else list(at.get("pads", [0, 0, 0, 0]))
    o = [(hw[i] + pads[i] + pads[i + 2] - ek[i]) // s[i] + 1 for i in range(2)]
    taps = [(slice(i * d[0], i * d[0] + s[0] * (o[0] - 1) + 1, s[0]),
             slice(j * d[1], j * d[1] + s[1] * (o[1] - 1) + 1, s[1]))
            for i in range(k[0]) for j in range(k[1])]
    return pads, o, taps


def _pad(a: np.ndarray, p: Sequence[int], value: float = 0.0) -> np.ndarray:
    return np.pad(a, ((0, 0), (0, 0), (p[0], p[2]), (p[1], p[3])), constant_values=value)


def _crop(a: np.ndarray, p: Sequence[int], hw: Sequence[int]) -> np.ndarray:
    return a[:, :, p[0]:p[0] + hw[0], p[1]:p[1] + hw[1]]


def _conv(a: np.ndarray, W: np.ndarray, b: np.ndarray, at: dict) -> np.ndarray:
    """ONNX Conv (groups, pads, strides, dilations) by summing over kernel taps."""
    n, c = a.shape[:2]
    m, cg, kh, kw = W.shape
    g = at.get("group", 1)
    p, o, taps = _geom(at, a.shape[2:], (kh, kw))
    ap = _pad(a, p).reshape(n, g, cg, *np.add(a.shape[2:], [p[0] + p[2], p[1] + p[3]]))
    wg = W.reshape(g, m // g, cg, kh * kw)
    out = np.zeros((n, g, m // g, *o))
    for t, (si, sj) in enumerate(taps):
        out += np.einsum("ngchw,gmc->ngmhw", ap[..., si, sj], wg[..., t])
    return out.reshape(n, m, *o) + b.reshape(1, -1, 1, 1)


def _conv_t(gout: np.ndarray, W: np.ndarray, at: dict, shape: Sequence[int]) -> np.ndarray:
    """Vector-Jacobian product of _conv with respect to its input (of shape `shape`)."""
    n, c, h, w = shape
    m, cg, kh, kw = W.shape
    g = at.get("group", 1)
    p, o, taps = _geom(at, (h, w), (kh, kw))
    gp = np.zeros((n, g, cg, h + p[0] + p[2], w + p[1] + p[3]))
    gg, wg = gout.reshape(n, g, m // g, *o), W.reshape(g, m // g, cg, kh * kw)
    for t, (si, sj) in enumerate(taps):
        gp[..., si, sj] += np.einsum("ngmhw,gmc->ngchw", gg, wg[..., t])
    return _crop(gp.reshape(n, c, *gp.shape[3:]), p, (h, w))


def _maxpool(a: np.ndarray, at: dict, g: np.ndarray | None = None, ref: np.ndarray | None = None):
    """MaxPool forward (g None) or the scatter of g to each window's first arg-max (of `ref` if given)."""
    if at.get("ceil_mode", 0):
        raise NotImplementedError("MaxPool ceil_mode=1")
    p, o, taps = _geom(at, a.shape[2:], at["kernel_shape"])
    src = _pad(a if ref is None else ref, p, -np.inf)
    win = np.stack([src[..., si, sj] for si, sj in taps], -1)
    if g is None:
        return win.max(-1)
    idx, gp = win.argmax(-1), np.zeros(src.shape)   # first maximum in row-major tap order (torch)
    for t, (si, sj) in enumerate(taps):
        gp[..., si, sj] += g * (idx == t)
    return _crop(gp, p, a.shape[2:])


def _unbroadcast(g: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    g = g.sum(axis=tuple(range(g.ndim - len(shape)))) if g.ndim > len(shape) else g
    return g.sum(axis=tuple(i for i, s in enumerate(shape) if s == 1 and g.shape[i] != 1), keepdims=True)


class _Graph:
    """The ONNX graph as a list of ops, linear layers fused (Conv[+BN], MatMul+Add(const)[+BN], Gemm)."""

    def __init__(self, model: str | os.PathLike | onnx.ModelProto):
        m = model if isinstance(model, onnx.ModelProto) else onnx.load(os.fspath(model))
        self.opset = next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), 13)
        c = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
        self.c = {k: v.astype(np.float64) if v.dtype.kind == "f" else v for k, v in c.items()}
        self.input = next(i.name for i in m.graph.input if i.name not in self.c)
        self.output, outs = m.graph.output[0].name, {o.name for o in m.graph.output}
        users: dict[str, list] = {}
        for n in m.graph.node:
            for i in n.input:
                users.setdefault(i, []).append(n)
        first = users[self.input][0]
        self.nhwc = first.op_type == "Transpose" and list(first.attribute[0].ints) == [0, 3, 1, 2]
        sole = lambda t, op: (users[t][0] if t not in outs and len(users.get(t, [])) == 1  # noqa: E731
                              and users[t][0].op_type == op else None)
        attrs = lambda n: {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}  # noqa: E731
        self.ops: list[_Op] = []
        self.softmax: tuple[str, int] | None = None
        skip: set[int] = set()
        for n in m.graph.node:
            t, at = n.op_type, attrs(n)
            if id(n) in skip:
                continue
            if t == "Constant":
                v = numpy_helper.to_array(at["value"])
                self.c[n.output[0]] = v.astype(np.float64) if v.dtype.kind == "f" else v
            elif t in ("Conv", "MatMul", "Gemm") and n.input[1] in self.c:
                W, out = self.c[n.input[1]], n.output[0]
                if t == "Gemm":
                    if at.get("transA", 0):
                        raise NotImplementedError("Gemm transA")
                    W = (W.T if at.get("transB", 0) else W) * at.get("alpha", 1.0)
                nout = W.shape[0] if t == "Conv" else W.shape[1]
                b = (self.c[n.input[2]] * (at.get("beta", 1.0) if t == "Gemm" else 1.0)
                     if len(n.input) > 2 and n.input[2] else np.zeros(nout))
                add = sole(out, "Add") if t == "MatMul" else None
                if add is not None and (other := [i for i in add.input if i != out][0]) in self.c:
                    b, out = b + self.c[other].reshape(-1), add.output[0]
                    skip.add(id(add))
                bn = sole(out, "BatchNormalization")
                if bn is not None and all(i in self.c for i in bn.input[1:5]):
                    gam, beta, mean, var = (self.c[i] for i in bn.input[1:5])
                    s = gam / np.sqrt(var + attrs(bn).get("epsilon", 1e-5))
                    W = W * (s.reshape(-1, 1, 1, 1) if t == "Conv" else s)
                    b, out = (b - mean) * s + beta, bn.output[0]
                    skip.add(id(bn))
                self.ops.append(_Op("linear", [n.input[0]], out, at, W, np.broadcast_to(b, (nout,)),
                                    t == "Conv"))
            elif t == "Softmax" and n.output[0] == self.output:
                self.softmax = (n.input[0], at.get("axis", 1 if self.opset < 13 else -1))
            elif t in ELEMENTWISE or t in OTHER:
                self.ops.append(_Op(t, list(n.input), n.output[0], at))
            else:
                raise NotImplementedError(f"op {t} ({n.name})")
        self.logits = self.softmax[0] if self.softmax else self.output
        self.dep = {self.input}
        for op in self.ops:
            if any(i in self.dep for i in op.inputs):
                self.dep.add(op.output)
        self.first = next(op for op in self.ops if op.kind == "linear")

    def _axes(self, op: _Op, since: int) -> list[int] | None:
        if self.opset >= since:
            return [int(a) for a in self.c[op.inputs[1]]] if len(op.inputs) > 1 and op.inputs[1] else None
        return op.attrs.get("axes")

    def act(self, op: _Op) -> tuple[Callable, Callable]:
        """(f, f') of an elementwise activation."""
        t, at = op.kind, op.attrs
        if t == "Relu":
            return lambda s: np.maximum(s, 0.0), lambda s: (s > 0) * 1.0
        if self.opset < 11:  # Clip: attributes min/max up to opset 10, optional inputs from 11
            lo, hi = at.get("min", -np.inf), at.get("max", np.inf)
        else:
            get = lambda k, d: float(self.c[op.inputs[k]]) if len(op.inputs) > k and op.inputs[k] else d  # noqa: E731
            lo, hi = get(1, -np.inf), get(2, np.inf)
        return lambda s: np.clip(s, lo, hi), lambda s: ((s >= lo) & (s <= hi)) * 1.0

    def run(self, x_graph: np.ndarray) -> dict[str, np.ndarray]:
        """float64 forward; returns every tensor by name (the final Softmax included)."""
        v: dict[str, np.ndarray] = dict(self.c)
        v[self.input] = np.asarray(x_graph, np.float64)
        for op in self.ops:
            a, at, t = v[op.inputs[0]], op.attrs, op.kind
            if t == "linear":
                r = _conv(a, op.W, op.b, at) if op.conv else a @ op.W + op.b
            elif t in ELEMENTWISE:
                r = self.act(op)[0](a)
            elif t == "Add":
                r = a + v[op.inputs[1]]
            elif t == "MaxPool":
                r = _maxpool(a, at)
            elif t == "GlobalAveragePool":
                r = a.mean(axis=tuple(range(2, a.ndim)), keepdims=True)
            elif t == "ReduceMean":
                ax = self._axes(op, 18)
                r = a.mean(axis=None if ax is None else tuple(ax), keepdims=bool(at.get("keepdims", 1)))
            elif t == "Transpose":
                r = a.transpose(at.get("perm", list(range(a.ndim))[::-1]))
            elif t == "Reshape":
                shp = [int(s) for s in v[op.inputs[1]]]
                r = a.reshape([a.shape[i] if s == 0 and not at.get("allowzero", 0) else s
                               for i, s in enumerate(shp)])
            elif t == "Squeeze":
                ax = self._axes(op, 13)
                r = np.squeeze(a, axis=None if ax is None else tuple(ax))
            elif t == "Flatten":
                ax = at.get("axis", 1) % a.ndim if a.ndim else 0
                r = a.reshape(int(np.prod(a.shape[:ax])), -1)
            else:  # Identity
                r = a
            v[op.output] = r
        if self.softmax:
            z = v[self.softmax[0]]
            e = np.exp(z - z.max(axis=self.softmax[1], keepdims=True))
            v[self.output] = e / e.sum(axis=self.softmax[1], keepdims=True)
        return v

    def vjp(self, op: _Op, v: dict, g: np.ndarray) -> list[np.ndarray]:
        """Plain gradient of op's output -> each of op.inputs (None for non-data inputs)."""
        a, t, at = v[op.inputs[0]], op.kind, op.attrs
        if t == "linear":
            res = [_conv_t(g, op.W, at, a.shape) if op.conv else g @ op.W.T]
        elif t in ELEMENTWISE:
            res = [g * self.act(op)[1](a)]
        elif t == "Add":
            res = [_unbroadcast(g, np.shape(v[i])) for i in op.inputs]
        elif t == "MaxPool":
            res = [_maxpool(a, at, g)]
        elif t in ("GlobalAveragePool", "ReduceMean"):
            ax = (list(range(2, a.ndim)) if t == "GlobalAveragePool" else self._axes(op, 18)) or \
                list(range(a.ndim))
            ax = sorted(i % a.ndim for i in ax)
            if t == "ReduceMean" and not at.get("keepdims", 1):
                g = np.expand_dims(g, tuple(ax))
            res = [np.broadcast_to(g, a.shape) / np.prod([a.shape[i] for i in ax])]
        elif t == "Transpose":
            res = [g.transpose(np.argsort(at.get("perm", list(range(a.ndim))[::-1])))]
        else:  # Reshape, Squeeze, Flatten, Identity
            res = [g.reshape(a.shape)]
        return [r if i in self.dep else None for i, r in zip(op.inputs, res)]

    def backward(self, v: dict, seed: np.ndarray, step: Callable | None = None) -> np.ndarray:
        """Propagate `seed` (at the logits) back to the graph input; `step(op, v, R)` overrides vjp."""
        R = {self.logits: seed}
        for op in reversed(self.ops):
            if op.output not in R:
                continue
            r = R.pop(op.output)
            outs = (step(op, v, r) if step else None) or self.vjp(op, v, r)
            for name, ri in zip(op.inputs, outs):
                if ri is not None and name in self.dep:
                    R[name] = R[name] + ri if name in R else ri
        return R.get(self.input, np.zeros(v[self.input].shape))


def _lrp_linear(op: _Op, a: np.ndarray, R: np.ndarray, rule: str, eps: float, gamma: float,
                lo: np.ndarray | None, hi: np.ndarray | None) -> np.ndarray:
    """One zennit rule through a (BN-merged) linear layer."""
    f = (lambda x, W, b: _conv(x, W, b, op.attrs)) if op.conv else (lambda x, W, b: x @ W + b)
    t = (lambda g, W: _conv_t(g, W, op.attrs, a.shape)) if op.conv else (lambda g, W: g @ W.T)
    W, b, z0 = op.W, op.b, np.zeros_like(op.b)
    ap, an, Wp, Wn, bp, bn = (np.maximum(a, 0), np.minimum(a, 0), np.maximum(W, 0), np.minimum(W, 0),
                              np.maximum(b, 0), np.minimum(b, 0))
    if rule == "epsilon":
        return a * t(R / stabilize(f(a, W, b), eps), W)
    if rule == "zplus":
        s = R / stabilize(f(ap, Wp, bp) + f(an, Wn, z0), STAB)
        return ap * t(s, Wp) + an * t(s, Wn)
    if rule == "gamma":
        W1, W2, o = W + gamma * Wp, W + gamma * Wn, f(a, W, b)
        sp = (o > 0) * R / stabilize(f(ap, W1, b + gamma * bp) + f(an, W2, z0), STAB)
        sn = (o < 0) * R / stabilize(f(ap, W2, b + gamma * bn) + f(an, W1, z0), STAB)
        return ap * t(sp, W1) + an * t(sp, W2) + ap * t(sn, W2) + an * t(sn, W1)
    if rule == "alpha2beta1":
        sp = R / stabilize(f(ap, Wp, bp) + f(an, Wn, z0), STAB)
        sn = R / stabilize(f(ap, Wn, bn) + f(an, Wp, z0), STAB)
        return 2.0 * (ap * t(sp, Wp) + an * t(sp, Wn)) - (ap * t(sn, Wn) + an * t(sn, Wp))
    if rule == "flat":
        W1 = np.ones_like(W)
        return t(R / stabilize(f(np.ones_like(a), W1, z0), STAB), W1)
    if rule == "zbox":
        lo, hi = np.broadcast_to(lo, a.shape), np.broadcast_to(hi, a.shape)
        s = R / stabilize(f(a, W, z0) - f(lo, Wp, z0) - f(hi, Wn, z0), STAB)
        return a * t(s, W) - lo * t(s, Wp) - hi * t(s, Wn)
    raise ValueError(rule)


def _rule(composite: str, op: _Op, first: bool) -> str:
    if composite not in COMPOSITES:
        raise ValueError(f"unknown composite {composite!r}")
    if composite == "epsilon" or not op.conv:
        return "flat" if first and composite in ("epsilon_plus_flat", "epsilon_alpha2_beta1_flat") \
            else "epsilon"
    if first and composite.endswith("_flat"):
        return "flat"
    if composite == "epsilon_plus_flat":
        return "zplus"
    if composite == "epsilon_gamma_box":
        return "zbox" if first else "gamma"
    return "alpha2beta1"


def _prep(path, x_nchw) -> tuple[_Graph, np.ndarray]:
    g = path if isinstance(path, _Graph) else _Graph(path)
    x = np.asarray(x_nchw, np.float64)
    return g, (x.transpose(0, 2, 3, 1) if g.nhwc else x)


def _out(g: _Graph, r: np.ndarray) -> np.ndarray:
    return r.transpose(0, 3, 1, 2) if g.nhwc else r


def _onehot(z: np.ndarray, target) -> np.ndarray:
    tg = np.broadcast_to(np.asarray(target, np.int64).reshape(-1), (z.shape[0],))
    return np.eye(z.shape[1])[tg]


def forward(path, x_nchw: np.ndarray, upto: str | None = None) -> np.ndarray:
    """float64 output of the graph (or of tensor `upto`) for NCHW x."""
    g, xg = _prep(path, x_nchw)
    return g.run(xg)[upto or g.output]


def lrp_reference(path, x_nchw: np.ndarray, target, composite: str, epsilon: float = 1e-6,
                  gamma: float = 0.25, low=None, high=None) -> np.ndarray:
    """LRP relevance (N, C, H, W) of logit `target` (a final Softmax is skipped), R_out = onehot * z."""
    g, xg = _prep(path, x_nchw)
    v = g.run(xg)
    if composite == "epsilon_gamma_box" and g.first.conv:
        c = v[g.first.inputs[0]].shape[1]
        if low is None or high is None:
            if c != 3:
                raise ValueError("zbox needs explicit low/high for a non-RGB input")
            low = (0.0 - IMAGENET_MEAN) / IMAGENET_STD if low is None else low
            high = (1.0 - IMAGENET_MEAN) / IMAGENET_STD if high is None else high
        low, high = (np.asarray(q, np.float64).reshape(-1, 1, 1) if np.ndim(q) == 1 else np.asarray(q, np.float64)
                     for q in (low, high))

    def step(op: _Op, v: dict, R: np.ndarray):
        a = v[op.inputs[0]]
        if op.kind == "linear":
            return [_lrp_linear(op, a, R, _rule(composite, op, op is g.first), epsilon, gamma, low, high)]
        if op.kind in ELEMENTWISE:
            return [R] + [None] * (len(op.inputs) - 1)
        if op.kind == "Add":
            if all(i in g.dep for i in op.inputs):
                s = R / stabilize(v[op.output], STAB)
                return [_unbroadcast(v[i] * s, v[i].shape) for i in op.inputs]
            return [R if i in g.dep else None for i in op.inputs]
        if op.kind in ("GlobalAveragePool", "ReduceMean"):
            return [a * g.vjp(op, v, R / stabilize(v[op.output], STAB))[0]] + [None] * (len(op.inputs) - 1)
        return None

    z = v[g.logits]
    return _out(g, g.backward(v, _onehot(z, target) * z, step))


def deeplift_reference(path, x_nchw: np.ndarray, target, baseline=0.0,
                       maxpool: str = "gradient") -> tuple[np.ndarray, np.ndarray]:
    """DeepLIFT Rescale: ((x - x') * multipliers, delta = sum(attr) - (z_c(x) - z_c(x'))).
    maxpool="gradient" (plain gradient at x, the brief) or "captum" (Captum's maxpool rule)."""
    g, xg = _prep(path, x_nchw)
    x = np.asarray(x_nchw, np.float64)
    xr = np.broadcast_to(np.asarray(baseline, np.float64), x.shape)
    v, vr = g.run(xg), g.run(xr.transpose(0, 2, 3, 1) if g.nhwc else xr)

    def step(op: _Op, v: dict, G: np.ndarray):
        s, sr = v[op.inputs[0]], vr[op.inputs[0]]
        d = s - sr
        small = np.abs(d) < 1e-10
        if op.kind in ELEMENTWISE:
            f, df = g.act(op)
            m = np.where(small, df(s), (f(s) - f(sr)) / np.where(small, 1.0, d))
            return [G * m] + [None] * (len(op.inputs) - 1)
        if op.kind == "MaxPool" and maxpool == "captum":
            o, orf = v[op.output], vr[op.output]
            mx = np.maximum(o, orf)
            num = _maxpool(s, op.attrs, G * (mx - orf)) + _maxpool(s, op.attrs, G * (o - mx), ref=sr)
            return [np.where(small, _maxpool(s, op.attrs, G), num / np.where(small, 1.0, d))]
        return None

    z, zr = v[g.logits], vr[g.logits]
    oh = _onehot(z, target)
    attr = (x - xr) * _out(g, g.backward(v, oh, step))
    delta = attr.reshape(len(x), -1).sum(1) - ((oh * z).sum(1) - (oh * zr).sum(1))
    return attr, delta


if __name__ == "__main__":
    import onnxruntime as ort

    here, rng = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "keras"), np.random.default_rng(0)
    at = {"group": 2, "strides": [2, 1], "pads": [0, 1, 2, 1], "dilations": [1, 2]}
    a, W = rng.normal(size=(2, 4, 7, 6)), rng.normal(size=(6, 2, 3, 2))
    gy = rng.normal(size=_conv(a, W, np.zeros(6), at).shape)
    print("conv <f(a), g> - <a, f^T(g)>:", (_conv(a, W, np.zeros(6), at) * gy).sum() - (a * _conv_t(gy, W, at, a.shape)).sum())
    for name in ("keras_small_cnn", "keras_mobilenet_like"):
        ref = np.load(os.path.join(here, f"{name}_reference.npz"))
        path = {o: os.path.join(here, f"{name}_opset{o}.onnx") for o in (9, 13, 18)}
        for o, p in path.items():  # forward vs ORT (random x), vs Keras and TF input gradient (npz)
            x = rng.normal(size=(2, 3, 32, 32))
            sess = ort.InferenceSession(p, providers=["CPUExecutionProvider"])
            d_ort = np.abs(forward(p, x) - sess.run(None, {"input": x.transpose(0, 2, 3, 1).astype(np.float32)})[0]).max()
            g, xg = _prep(p, ref["x"].transpose(0, 3, 1, 2))
            v = g.run(xg)
            out, seed = v[g.output], _onehot(v[g.logits], ref["target"])
            if g.softmax:  # d softmax_c / d logits
                seed = out[np.arange(2), ref["target"]][:, None] * (seed - out)
            dg = np.abs(g.backward(v, seed) - ref["input_grad"]).max() / np.abs(ref["input_grad"]).max()
            print(f"{name} opset{o}: max|f64 - ORT| {d_ort:.1e}  max|f64 - Keras| "
                  f"{np.abs(out - ref['logits']).max():.1e}  rel|grad - TF| {dg:.1e}")
        x = rng.normal(size=(2, 3, 32, 32))
        p, logits = path[13], _Graph(path[13]).logits
        z = forward(p, x, upto=logits)
        tg = z.argmax(1)
        g0 = _Graph(p)  # bias-free copy: conserving rules must give sum R = z_c where no denominator is 0
        for op in g0.ops:
            op.b = None if op.b is None else np.zeros_like(op.b)
        zc0 = forward(g0, x, upto=logits)[np.arange(2), tg]
        for c in COMPOSITES:
            R = lrp_reference(p, x, tg, c, epsilon=1e-9).sum((1, 2, 3))
            d = np.abs(lrp_reference(path[9], x, tg, c) - lrp_reference(path[18], x, tg, c)).max()
            R0 = lrp_reference(g0, x, tg, c, epsilon=1e-9).sum((1, 2, 3))
            print(f"  {c:26s} sum R {np.round(R, 4)}  z_c {np.round(z[np.arange(2), tg], 4)}  "
                  f"no-bias sum R / z_c {np.round(R0 / zc0, 6)}  max|opset9 - opset18| {d:.1e}")
        for bl, tag in ((0.0, "zero"), (rng.normal(size=(3, 32, 32)) * 0.1, "random")):
            for mp in ("gradient", "captum"):
                print(f"  deeplift baseline={tag:6s} maxpool={mp:8s} delta", deeplift_reference(p, x, tg, bl, mp)[1])
