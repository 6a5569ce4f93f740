"""Backends' parameter_layers() and randomised(): the model-parameter randomisation test of Adebayo
et al. 2018 needs copies of the model with chosen layers re-initialised, the user's model untouched."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from onnx import numpy_helper
from torch import nn

import cnnlens
from cnnlens.backends import backend_for
from cnnlens.backends.base import RANDOMISE
from cnnlens.backends.onnx import OnnxBackend
from cnnlens.backends.torch import TorchBackend
from cnnlens.core.errors import InvalidInputError, LayerError

from tests.helpers import images, randomise_batchnorm

X = images(3, 3, 16, 16, seed=0)
TORCH_LAYERS = ["conv1", "bn1", "conv2", "fc"]  # call order; aux (never called) is left out
ONNX_LAYERS = ["/conv1/Conv", "/bn1/BatchNormalization", "/conv2/Conv", "/fc/Gemm"]


class Net(nn.Module):
    """conv-bn-relu-conv-relu-GAP-linear, defined head first so definition order != call order."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 5)
        self.aux = nn.Linear(4, 4)  # never called
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flat = nn.Flatten()

    def forward(self, x):
        return self.fc(self.flat(self.pool(self.relu2(self.conv2(self.relu1(self.bn1(self.conv1(x))))))))


def make_net(seed: int = 1234) -> Net:
    # not a seed randomised() is given below: Net() under torch.manual_seed(s) draws fc first,
    # exactly as randomised(["fc", ...], seed=s) would re-draw it
    torch.manual_seed(seed)
    return randomise_batchnorm(Net()).eval()


@pytest.fixture(scope="module")
def net():
    return make_net()


@pytest.fixture(scope="module")
def onnx_backend(net, tmp_path_factory):
    from cnnlens.adapters.export import to_onnx

    path = str(tmp_path_factory.mktemp("rand") / "net.onnx")
    to_onnx(net, path, input_shape=(3, 16, 16), exporter="legacy")
    return backend_for(path, device="cpu")


def snapshot(model: nn.Module):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_state(model: nn.Module, saved) -> bool:
    state = model.state_dict()
    return state.keys() == saved.keys() and all(torch.equal(state[k], saved[k]) for k in saved)


def onnx_weights(backend: OnnxBackend):
    return {t.name: numpy_helper.to_array(t) for t in backend.model.graph.initializer}


def node_inputs(backend: OnnxBackend, node: str):
    return list(backend.graph.by_name[node].input)


def acts(backend, layers):
    return backend.forward(X, layers=layers).activations


# ---------------------------------------------------------------- parameter_layers


def test_parameter_layers_torch_in_call_order_unused_left_out(net):
    backend = TorchBackend(net)
    assert RANDOMISE in backend.capabilities
    assert backend.parameter_layers() == TORCH_LAYERS
    assert backend.weighted_layers() == ["fc", "aux", "conv1", "bn1", "conv2"]  # definition order; aux may be re-drawn by name


def test_parameter_layers_onnx_are_weighted_nodes_in_topological_order(onnx_backend):
    assert RANDOMISE in onnx_backend.capabilities
    assert onnx_backend.parameter_layers() == ONNX_LAYERS
    names = [layer.name for layer in cnnlens.layers(onnx_backend)]
    assert [n for n in names if n in ONNX_LAYERS] == ONNX_LAYERS  # named as layers() names them


# ---------------------------------------------------------------- what changes


@pytest.mark.parametrize("kind", ["torch", "onnx"])
def test_randomising_the_head_changes_logits_not_features(kind, net, onnx_backend):
    backend = TorchBackend(net) if kind == "torch" else onnx_backend
    head, conv2 = ("fc", "conv2") if kind == "torch" else ("/fc/Gemm", "/conv2/Conv")
    new = backend.randomised([head])
    assert type(new) is type(backend) and new is not backend
    before = cnnlens.explain(backend, X, "feature_maps", layer=conv2)
    after = cnnlens.explain(new, X, "feature_maps", layer=conv2)
    np.testing.assert_array_equal(after.maps, before.maps)
    assert np.abs(before.maps).max() > 0
    assert np.abs(after.logits - before.logits).max() > 1e-2 * np.abs(before.logits).max()


@pytest.mark.parametrize("kind", ["torch", "onnx"])
def test_randomising_the_first_conv_changes_everything_downstream(kind, net, onnx_backend):
    backend = TorchBackend(net) if kind == "torch" else onnx_backend
    layers = ["conv1", "bn1", "conv2"] if kind == "torch" else ONNX_LAYERS[:3]
    first = "conv1" if kind == "torch" else "/conv1/Conv"
    new = backend.randomised([first], seed=3)
    a, b = backend.forward(X, layers), new.forward(X, layers)
    for name in layers:
        assert np.abs(b.activations[name] - a.activations[name]).max() > 1e-2 * np.abs(a.activations[name]).max(), name
    assert np.abs(b.logits - a.logits).max() > 1e-3 * np.abs(a.logits).max()


@pytest.mark.parametrize("kind", ["torch", "onnx"])
def test_same_seed_same_model_other_seed_other(kind, net, onnx_backend):
    backend = TorchBackend(net) if kind == "torch" else onnx_backend
    layers = ["fc", "conv2"] if kind == "torch" else ["/fc/Gemm", "/conv2/Conv"]
    one = backend.randomised(layers, seed=7).forward(X).logits
    again = backend.randomised(layers, seed=7).forward(X).logits
    other = backend.randomised(layers, seed=8).forward(X).logits
    np.testing.assert_array_equal(one, again)
    assert np.abs(one - other).max() > 1e-3 * np.abs(one).max()


def test_a_growing_cascade_keeps_its_earlier_draws(net, onnx_backend):
    """layers[i] draws from seed + i, so randomising [top, next] keeps top's draws of [top]."""
    top = dict(TorchBackend(net).randomised(["fc"], seed=4).model.named_parameters())
    both = dict(TorchBackend(net).randomised(["fc", "conv2"], seed=4).model.named_parameters())
    assert torch.equal(top["fc.weight"], both["fc.weight"])
    assert not torch.equal(top["conv2.weight"], both["conv2.weight"])
    weight = node_inputs(onnx_backend, "/fc/Gemm")[1]
    one = onnx_weights(onnx_backend.randomised(["/fc/Gemm"], seed=4))
    two = onnx_weights(onnx_backend.randomised(["/fc/Gemm", "/conv2/Conv"], seed=4))
    np.testing.assert_array_equal(one[weight], two[weight])


# ---------------------------------------------------------------- the user's model is never changed


def test_torch_original_model_untouched():
    model = make_net(seed=11)
    backend = TorchBackend(model)
    saved = snapshot(model)
    params = {n: p for n, p in model.named_parameters()}
    before = backend.forward(X).logits
    with torch.no_grad():
        direct = model(torch.from_numpy(X)).numpy()
    rng_state = torch.random.get_rng_state()
    for layers in (["fc"], ["conv1", "bn1"], TORCH_LAYERS):
        new = backend.randomised(layers, seed=2)
        assert new.model is not model
        assert all(p is not params[n] for n, p in new.model.named_parameters())
    assert same_state(model, saved)
    assert {n: p for n, p in model.named_parameters()} == params  # the same Parameter objects
    np.testing.assert_array_equal(backend.forward(X).logits, before)
    with torch.no_grad():
        np.testing.assert_array_equal(model(torch.from_numpy(X)).numpy(), direct)
    assert torch.equal(torch.random.get_rng_state(), rng_state)  # the global generator untouched


def test_no_cuda_seed_is_queued():
    """torch.manual_seed would queue a seed for every GPU, replacing the user's when CUDA starts."""
    tracker = getattr(torch.cuda, "_lazy_seed_tracker", None)
    if tracker is None or torch.cuda.is_initialized():
        pytest.skip("no lazy CUDA seeding to observe")
    backend = TorchBackend(make_net())  # make_net calls torch.manual_seed itself
    queued = tracker.get_calls()
    backend.randomised(["conv1", "fc"], seed=5)
    assert tracker.get_calls() == queued


def test_onnx_original_model_untouched(onnx_backend):
    proto = onnx_backend.model.SerializeToString()
    before = onnx_backend.forward(X).logits
    for layers in (["/fc/Gemm"], ONNX_LAYERS):
        new = onnx_backend.randomised(layers, seed=2)
        assert new.model is not onnx_backend.model
    assert onnx_backend.model.SerializeToString() == proto
    np.testing.assert_array_equal(onnx_backend.forward(X).logits, before)


# ---------------------------------------------------------------- the new weights


def test_torch_weights_follow_the_modules_own_initialisation(net):
    new = TorchBackend(net).randomised(["fc", "conv1", "bn1"], seed=0).model
    fc, conv, bn = new.fc, new.conv1, new.bn1
    bound = 1 / math.sqrt(16)  # nn.Linear(16, 5).reset_parameters: U(-1/4, 1/4) for weight and bias
    for t in (fc.weight, fc.bias):
        assert t.abs().max() <= bound
    assert fc.weight.abs().max() > 0.7 * bound  # spread over the range, not squeezed
    assert not torch.equal(fc.weight, net.fc.weight)
    bound = 1 / math.sqrt(3 * 3 * 3)  # Conv2d(3, 8, 3): kaiming_uniform(a=sqrt(5)) -> 1/sqrt(fan_in)
    assert conv.weight.abs().max() <= bound and conv.weight.abs().max() > 0.7 * bound
    # BatchNorm's reset_parameters resets its running statistics too
    assert torch.equal(bn.weight, torch.ones(8)) and torch.equal(bn.bias, torch.zeros(8))
    assert torch.equal(bn.running_mean, torch.zeros(8)) and torch.equal(bn.running_var, torch.ones(8))
    assert int(bn.num_batches_tracked) == 0
    assert torch.equal(new.conv2.weight, net.conv2.weight)  # not named: unchanged


def test_torch_module_without_reset_parameters_draws_normal_with_the_original_std():
    class Scale(nn.Module):
        def __init__(self):
            super().__init__()
            self.gain = nn.Parameter(3.0 + 0.5 * torch.randn(4000))

        def forward(self, x):
            return x * self.gain[: x.shape[1]]

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), Scale(), nn.Linear(4000, 3)).eval()
    backend = TorchBackend(model)
    assert backend.parameter_layers() == ["1", "2"]
    original = model[1].gain.detach().clone()
    new = backend.randomised(["1"], seed=1).model[1].gain.detach()
    assert abs(float(new.mean())) < 0.05  # N(0, std), not around the original's mean 3
    assert float(new.std()) == pytest.approx(float(original.std()), rel=0.1)
    assert torch.equal(model[1].gain, original)


def test_onnx_weights_keep_dtype_shape_and_std(onnx_backend):
    new = onnx_backend.randomised(ONNX_LAYERS, seed=0)
    old_w, new_w = onnx_weights(onnx_backend), onnx_weights(new)
    conv2_weight = node_inputs(onnx_backend, "/conv2/Conv")[1]  # 16 x 8 x 3 x 3 = 1152 values
    a, b = old_w[conv2_weight], new_w[conv2_weight]
    assert b.dtype == a.dtype == np.float32 and b.shape == a.shape
    assert not np.array_equal(a, b)
    assert b.std() == pytest.approx(a.std(), rel=0.2)
    assert abs(b.mean()) < 0.2 * a.std()
    _, scale, bias, mean, var = node_inputs(onnx_backend, "/bn1/BatchNormalization")
    np.testing.assert_array_equal(new_w[mean], np.zeros(8, np.float32))
    np.testing.assert_array_equal(new_w[var], np.ones(8, np.float32))
    for name in (scale, bias):
        assert not np.array_equal(new_w[name], old_w[name])
    for name in old_w:  # every initializer of the named nodes was re-drawn, nothing else exists here
        assert new_w[name].shape == old_w[name].shape and new_w[name].dtype == old_w[name].dtype


def test_onnx_unnamed_nodes_keep_their_weights(onnx_backend):
    new = onnx_backend.randomised(["/fc/Gemm"], seed=0)
    old_w, new_w = onnx_weights(onnx_backend), onnx_weights(new)
    fc = set(node_inputs(onnx_backend, "/fc/Gemm")[1:])
    for name in old_w:
        changed = not np.array_equal(old_w[name], new_w[name])
        assert changed == (name in fc), name


def test_onnx_accepts_module_paths_and_keeps_settings(onnx_backend):
    by_path = onnx_backend.randomised(["fc"], seed=1).forward(X).logits
    by_node = onnx_backend.randomised(["/fc/Gemm"], seed=1).forward(X).logits
    np.testing.assert_array_equal(by_path, by_node)
    new = onnx_backend.randomised("fc", seed=1)  # one name on its own
    np.testing.assert_array_equal(new.forward(X).logits, by_node)
    assert new.output == onnx_backend.output and new._io_binding == onnx_backend._io_binding
    assert new.device == onnx_backend.device


# ---------------------------------------------------------------- the new backend's settings


def test_torch_new_backend_keeps_output_choice_device_and_layout():
    class TwoOutputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = make_net()

        def forward(self, x):
            return x.mean(dim=(1, 2, 3)).unsqueeze(1).repeat(1, 2), self.net(x)

    backend = TorchBackend(TwoOutputs(), output=1)
    backend.channels_last = False
    new = backend.randomised(["net.fc"], seed=0)
    assert new.output == 1 and new.device == backend.device and new.channels_last is False
    assert new.forward(X).logits.shape == (3, 5)
    assert np.abs(new.forward(X).logits - backend.forward(X).logits).max() > 1e-3


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch >= 2.10 marks TorchScript deprecated
def test_torchscript_randomises_by_normal_draws():
    scripted = torch.jit.script(make_net())
    backend = TorchBackend(scripted)
    assert RANDOMISE in backend.capabilities
    # no hooks in TorchScript: definition order (fc was defined first)
    assert backend.parameter_layers() == ["fc", "aux", "conv1", "bn1", "conv2"]
    saved = {k: v.clone() for k, v in scripted.state_dict().items()}
    before = backend.forward(X).logits
    new = backend.randomised(["fc", "bn1"], seed=0)
    again = backend.randomised(["fc", "bn1"], seed=0)
    assert new.name == "torchscript"
    np.testing.assert_array_equal(new.forward(X).logits, again.forward(X).logits)
    assert np.abs(new.forward(X).logits - before).max() > 1e-3
    state = new.model.state_dict()
    assert float(state["fc.weight"].std()) == pytest.approx(float(saved["fc.weight"].std()), rel=0.35)
    assert torch.equal(state["bn1.running_mean"], torch.zeros(8))
    assert torch.equal(state["bn1.running_var"], torch.ones(8))
    assert torch.equal(state["conv2.weight"], saved["conv2.weight"])
    assert all(torch.equal(scripted.state_dict()[k], v) for k, v in saved.items())
    np.testing.assert_array_equal(backend.forward(X).logits, before)


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("kind", ["torch", "onnx"])
def test_unknown_layer_is_a_layer_error(kind, net, onnx_backend):
    backend = TorchBackend(net) if kind == "torch" else onnx_backend
    with pytest.raises(LayerError, match="unknown layer 'conv9'"):
        backend.randomised(["conv9"])


@pytest.mark.parametrize("kind", ["torch", "onnx"])
def test_layer_without_parameters_names_the_choices(kind, net, onnx_backend):
    backend = TorchBackend(net) if kind == "torch" else onnx_backend
    relu = "relu1" if kind == "torch" else "/relu1/Relu"
    with pytest.raises(LayerError, match="no learned parameters") as info:
        backend.randomised(["fc" if kind == "torch" else "/fc/Gemm", relu])
    assert relu in str(info.value)
    for name in backend.parameter_layers():
        assert repr(name) in str(info.value)


def test_container_error_lists_its_own_weighted_layers():
    model = nn.Sequential(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 2))
    with pytest.raises(LayerError, match=r"its sub-layers with weights are '0\.0'$"):
        TorchBackend(model).randomised(["0"])


@pytest.mark.parametrize("seed", [-1, 1.5, True, "0"])
def test_bad_seed(seed, net):
    with pytest.raises(InvalidInputError, match="seed"):
        TorchBackend(net).randomised(["fc"], seed=seed)


def test_onnx_weights_behind_identity_count_scalar_constants_do_not():
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "W")
    b = numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), "B")
    c = numpy_helper.from_array(np.array(2.0, np.float32), "C")  # rank 0: a constant, not a weight
    nodes = [helper.make_node("Identity", ["W"], ["W_id"], name="id"),
             helper.make_node("MatMul", ["x", "W_id"], ["h"], name="matmul"),
             helper.make_node("Add", ["h", "B"], ["hb"], name="add"),
             helper.make_node("Mul", ["hb", "C"], ["y"], name="scale")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], [w, b, c])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    backend = OnnxBackend(model, device="cpu")
    assert backend.parameter_layers() == ["matmul", "add"]
    x = rng.standard_normal((2, 4)).astype(np.float32)
    new = backend.randomised(["matmul"], seed=0)
    weights = onnx_weights(new)
    assert not np.array_equal(weights["W"], numpy_helper.to_array(w))
    np.testing.assert_array_equal(weights["B"], numpy_helper.to_array(b))
    assert np.abs(new.forward(x).logits - backend.forward(x).logits).max() > 1e-2
    with pytest.raises(LayerError, match="no learned parameters"):
        backend.randomised(["scale"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_torch_on_cuda_is_reproducible_and_leaves_the_cuda_generator_alone():
    backend = TorchBackend(make_net(), device="cuda")
    state = torch.cuda.get_rng_state()
    one = backend.randomised(["conv1", "fc"], seed=3)
    two = backend.randomised(["conv1", "fc"], seed=3)
    assert torch.equal(torch.cuda.get_rng_state(), state)
    assert one.device == backend.device and one.model.fc.weight.is_cuda
    np.testing.assert_array_equal(one.forward(X).logits, two.forward(X).logits)
    assert one.model.fc.weight.abs().max() <= 0.25
