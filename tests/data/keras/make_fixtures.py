# Regenerates the Keras -> tf2onnx test fixtures in this folder (tests/data/keras/).
#
# Versions used to generate the committed files (Python 3.11.7, CPU only):
#   tensorflow-cpu 2.15.1 (keras 2.15.0), tf2onnx 1.16.1, onnx 1.17.0,
#   onnxruntime 1.26.0, numpy 1.26.4, protobuf 3.20.3
# These must NOT be installed into the project's own venv.  Command used:
#   python3 -m venv /tmp/tfenv
#   /tmp/tfenv/bin/pip install "tensorflow-cpu==2.15.1" "tf2onnx==1.16.1" "numpy<2" onnxruntime
#   /tmp/tfenv/bin/python tests/data/keras/make_fixtures.py [OUT_DIR]   (default: this file's folder)
#
# Every model is built in channels_last (NHWC) layout with input 32x32x3 and random, seeded
# weights (no pretrained weights anywhere).  Each model is converted with tf2onnx at opsets
# 9, 13 and 18 (18 is the highest opset tf2onnx 1.16.1 knows) with a dynamic batch dimension:
#   <model>_opset<N>.onnx   input "input" float32 [batch, 32, 32, 3] (NHWC), one output
# and a reference file <model>_reference.npz with (all float32 unless noted):
#   x               [2, 32, 32, 3]  seeded NHWC input images (np.random.default_rng(1234))
#   logits          [2, 10]         exactly the Keras model output on x (after softmax where
#                                   the model ends in a softmax layer, see 'output_is_softmax')
#   target          [2] int64       argmax of logits per image
#   input_grad      [2, 32, 32, 3]  d/dx of sum_i output[i, target[i]]  (tf.GradientTape)
#   layer_keras_name  str           Keras layer whose output is used below (the last conv
#                                   block activation before the global pooling)
#   layer_act       NHWC            that layer's output on x
#   layer_grad      NHWC            d score / d layer output (same score as input_grad)
#   layer_onnx_name_opset<N>  str   name of the tensor in the ONNX graph holding that activation
#   layer_onnx_layout_opset<N> str  'NHWC' or 'NCHW': layout of that ONNX tensor (tf2onnx moves
#                                   convolutions to NCHW, so it is usually 'NCHW'; transpose
#                                   layer_act/layer_grad with (0, 3, 1, 2) to compare then)
#   layer_onnx_name, layer_onnx_layout   the same, stored once when equal in all three opsets
#   output_is_softmax  bool
#
# Re-running reproduces the weights and the .npz references bit for bit; tf2onnx may order
# independent nodes differently and number its generated tensor names differently between runs
# (graphs and weights stay the same).  The models avoid max pooling over saturated activations
# (ReLU6 at 6, hard_sigmoid at 0/1), so the reference gradients have no max-pool ties.
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import numpy as np
import onnx
import onnxruntime as ort
import tensorflow as tf
import tf2onnx

L = tf.keras.layers
OPSETS = (9, 13, 18)
INPUT_SHAPE = (32, 32, 3)


def _randomise(model, seed, gamma_range=(0.5, 1.5), rescale=None, input_range=(0.0, 1.0)):
    """Make the random model exercise its non-linearities: random biases and PReLU slopes, then,
    layer by layer in graph order, BatchNormalization statistics calibrated on seeded random
    images (moving mean/variance = the real batch statistics, perturbed; random gamma/beta) and
    the layers in `rescale` ({layer name: target std}) scaled to that output std."""
    rng = np.random.default_rng(seed)
    rescale = dict(rescale or {})
    x_cal = rng.uniform(*input_range, (16,) + tuple(model.input_shape[1:])).astype(np.float32)
    for layer in model.layers:
        if isinstance(layer, L.PReLU):
            (alpha,) = layer.get_weights()
            layer.set_weights([rng.uniform(0.05, 0.5, alpha.shape).astype(np.float32)])
        elif not isinstance(layer, L.BatchNormalization):
            names = [w.name for w in layer.weights]
            if any("bias" in n for n in names):
                layer.set_weights([rng.normal(0.0, 0.1, w.shape).astype(np.float32) if "bias" in n else w
                                   for n, w in zip(names, layer.get_weights())])
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            a = tf.keras.Model(model.inputs, layer.input)(x_cal, training=False).numpy()
            mean, var = a.mean(axis=(0, 1, 2)), a.var(axis=(0, 1, 2))
            c = mean.shape
            layer.set_weights([
                rng.uniform(*gamma_range, c).astype(np.float32),
                rng.normal(0.0, 0.2, c).astype(np.float32),
                (mean + rng.normal(0.0, 0.2, c) * np.sqrt(var)).astype(np.float32),
                (var * rng.uniform(0.7, 1.4, c)).astype(np.float32),
            ])
        elif layer.name in rescale:
            a = tf.keras.Model(model.inputs, layer.output)(x_cal, training=False).numpy()
            factor = rescale.pop(layer.name) / a.std()
            layer.set_weights([(w * factor).astype(np.float32) for w in layer.get_weights()])
    assert not rescale, rescale


def keras_small_cnn():
    """Plain CNN: same/valid convs, BN, ReLU, overlapping 3x3/2 'same' max pool, GAP, softmax."""
    inp = L.Input(INPUT_SHAPE, name="input")
    x = L.Conv2D(8, 3, padding="same", use_bias=False, name="conv1")(inp)        # same, s1
    x = L.BatchNormalization(name="bn1")(x)
    x = L.ReLU(name="relu1")(x)
    x = L.MaxPooling2D(3, strides=2, padding="same", name="pool1")(x)           # 32->16, overlapping
    x = L.Conv2D(16, 3, strides=2, padding="same", name="conv2")(x)             # same, s2 (16->8)
    x = L.BatchNormalization(name="bn2")(x)
    x = L.Activation("relu", name="relu2")(x)
    x = L.Conv2D(16, 3, padding="valid", name="conv3")(x)                       # valid, s1 (8->6)
    x = L.Activation("relu", name="relu3")(x)                                   # <- layer_act
    x = L.GlobalAveragePooling2D(name="gap")(x)
    x = L.Dense(10, name="fc")(x)
    out = L.Softmax(name="softmax")(x)
    return tf.keras.Model(inp, out, name="keras_small_cnn"), "relu3", True, {}


def keras_mixed_ops():
    """Mixed bag: valid/stride-2 conv, dilated conv, LeakyReLU, PReLU, swish, hard_sigmoid gate,
    sigmoid, Add, Concatenate, Multiply gate, Max/Avg pools 'same' and 'valid',
    GlobalMaxPooling2D, Flatten+Dense on a small map, Dropout.  No max pooling sits on a
    saturating activation, so the reference gradients have no max-pool ties."""
    inp = L.Input(INPUT_SHAPE, name="input")
    x = L.Conv2D(12, 3, strides=2, padding="valid", name="conv_s2_valid")(inp)  # 32->15
    x = L.LeakyReLU(alpha=0.1, name="leaky")(x)
    a = L.Conv2D(12, 3, padding="same", dilation_rate=2, activation="swish", name="conv_dil2_swish")(x)
    b = L.Conv2D(12, 1, name="conv_1x1")(x)
    b = L.PReLU(shared_axes=[1, 2], name="prelu")(b)
    s = L.Add(name="add")([a, b])
    g = L.Conv2D(12, 1, name="gate_conv")(s)
    g = L.Activation("hard_sigmoid", name="gate_hsig")(g)
    s = L.Multiply(name="gate_mul")([s, g])
    p = L.AveragePooling2D(3, strides=1, padding="same", name="avgpool_same_s1")(x)
    x = L.Concatenate(name="concat")([s, p])                                    # 24 ch, 15x15
    x = L.MaxPooling2D(3, strides=2, padding="valid", name="maxpool_valid_3s2")(x)  # 15->7 overlapping
    x = L.AveragePooling2D(2, strides=2, padding="same", name="avgpool_same_s2")(x)  # 7->4 (pads end)
    x = L.Conv2D(16, 3, padding="same", name="conv_last")(x)
    x = L.Activation("swish", name="act_last")(x)                               # <- layer_act
    h1 = L.GlobalMaxPooling2D(name="gmp")(x)
    h1 = L.Dense(10, name="fc_gmp")(h1)
    h2 = L.MaxPooling2D(2, strides=2, padding="valid", name="maxpool_valid_2s2")(x)  # 4->2
    h2 = L.AveragePooling2D(2, strides=1, padding="valid", name="avgpool_valid")(h2)  # 2->1
    h2 = L.Conv2D(16, 1, activation="sigmoid", name="conv_sigmoid")(h2)
    h2 = L.Flatten(name="flatten")(h2)
    h2 = L.Dropout(0.5, name="dropout")(h2)
    h2 = L.Dense(10, name="fc_flat")(h2)
    out = L.Add(name="logits")([h1, h2])
    return (tf.keras.Model(inp, out, name="keras_mixed_ops"), "act_last", False,
            {"rescale": {"conv_s2_valid": 1.0, "gate_conv": 2.5, "conv_last": 1.5}})


def keras_mobilenet_like():
    """MobileNet-ish: stride-2 'same' conv on even size, BN, ReLU6 (layer and tf.nn.relu6),
    DepthwiseConv2D s1 and s2, inverted residual Add, SeparableConv2D, GAP, Dropout, Dense,
    a Flatten+Dense side head on a max-pooled 2x2 map (pooled before the ReLU6, so that no
    max-pool window holds ties at 6 and the reference gradients are unambiguous)."""
    inp = L.Input(INPUT_SHAPE, name="input")
    x = L.Conv2D(8, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(inp)  # 32->16
    x = L.BatchNormalization(name="stem_bn")(x)
    x = L.ReLU(6.0, name="stem_relu6")(x)
    r = x
    x = L.Conv2D(16, 1, use_bias=False, name="expand")(x)
    x = L.BatchNormalization(name="expand_bn")(x)
    x = L.Lambda(tf.nn.relu6, name="expand_relu6_tfnn")(x)
    x = L.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw_s1")(x)
    x = L.BatchNormalization(name="dw_s1_bn")(x)
    x = L.ReLU(6.0, name="dw_s1_relu6")(x)
    x = L.Conv2D(8, 1, use_bias=False, name="project")(x)
    x = L.BatchNormalization(name="project_bn")(x)
    x = L.Add(name="residual_add")([r, x])
    x = L.DepthwiseConv2D(3, strides=2, padding="same", depth_multiplier=2, name="dw_s2_mult2")(x)  # 16->8
    x = L.BatchNormalization(name="dw_s2_bn")(x)
    x = L.ReLU(6.0, name="dw_s2_relu6")(x)
    x = L.SeparableConv2D(24, 3, padding="same", name="sep_conv")(x)
    bn = L.BatchNormalization(name="sep_bn")(x)
    x = L.ReLU(6.0, name="sep_relu6")(bn)                                          # <- layer_act
    h = L.GlobalAveragePooling2D(name="gap")(x)
    h = L.Dropout(0.2, name="dropout")(h)
    h = L.Dense(10, name="fc")(h)
    s = L.MaxPooling2D(4, strides=4, padding="valid", name="side_pool")(bn)     # 8->2, pre-ReLU6
    s = L.Flatten(name="side_flatten")(s)
    s = L.Dense(10, name="side_fc")(s)
    out = L.Add(name="logits")([h, s])
    return (tf.keras.Model(inp, out, name="keras_mobilenet_like"), "sep_relu6", False,
            {"gamma_range": (2.0, 5.0)})


BUILDERS = (keras_small_cnn, keras_mixed_ops, keras_mobilenet_like)


def reference(model, layer_name, x):
    """Keras output, target, input gradient and the chosen layer's activation/gradient."""
    grad_model = tf.keras.Model(model.inputs, [model.get_layer(layer_name).output, model.output])
    xt = tf.constant(x)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(xt)
        act, out = grad_model(xt, training=False)
        target = tf.argmax(out, axis=1)
        score = tf.reduce_sum(tf.gather(out, target, axis=1, batch_dims=1))
    input_grad = tape.gradient(score, xt)
    layer_grad = tape.gradient(score, act)
    del tape
    logits = model(xt, training=False).numpy()
    np.testing.assert_allclose(out.numpy(), logits, rtol=1e-6, atol=1e-7)
    return {
        "x": x.astype(np.float32),
        "logits": logits.astype(np.float32),
        "target": target.numpy().astype(np.int64),
        "input_grad": input_grad.numpy().astype(np.float32),
        "layer_keras_name": np.array(layer_name),
        "layer_act": act.numpy().astype(np.float32),
        "layer_grad": layer_grad.numpy().astype(np.float32),
    }


def convert(model, opset, path):
    spec = (tf.TensorSpec((None,) + tuple(model.input_shape[1:]), tf.float32, name="input"),)
    model_proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=opset, output_path=path)
    return model_proto


def find_layer_tensor(path, x, act_nhwc, layer_name):
    """Find the ONNX tensor that holds the Keras layer's activation; return (name, layout)."""
    m = onnx.load(path)
    names = [o for node in m.graph.node for o in node.output]
    existing = {o.name for o in m.graph.output}
    for n in names:
        if n not in existing:
            m.graph.output.append(onnx.helper.make_empty_tensor_value_info(n))
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    outs = sess.run(names, {sess.get_inputs()[0].name: x})
    producer = {o: node.op_type for node in m.graph.node for o in node.output}
    matches = []
    for n, v in zip(names, outs):
        for layout, ref in (("NHWC", act_nhwc), ("NCHW", act_nhwc.transpose(0, 3, 1, 2))):
            if v.shape == ref.shape:
                err = float(np.abs(v - ref).max() / max(np.abs(ref).max(), 1e-12))
                if err < 1e-4:
                    matches.append((n, layout))
    if not matches:
        raise RuntimeError(f"no ONNX tensor matches layer {layer_name} in {path}")
    # tf2onnx names most tensors after the TF op that made them ('<model>/<layer>/Relu:0'):
    # take the last match named after the layer; else (generated names such as 'Max__133:0')
    # the first match that is not a copy made by an inserted Transpose.
    named = [mt for mt in matches if f"/{layer_name}/" in mt[0]]
    if named:
        return named[-1]
    plain = [mt for mt in matches if producer[mt[0]] != "Transpose"]
    return (plain or matches)[0]


def main(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    for builder in BUILDERS:
        tf.keras.utils.set_random_seed(0)
        model, layer_name, is_softmax, options = builder()
        _randomise(model, seed=0, **options)
        name = model.name
        x = np.random.default_rng(1234).uniform(0.0, 1.0, (2,) + INPUT_SHAPE).astype(np.float32)
        ref = reference(model, layer_name, x)
        ref["output_is_softmax"] = np.array(is_softmax)
        for opset in OPSETS:
            path = os.path.join(out_dir, f"{name}_opset{opset}.onnx")
            convert(model, opset, path)
            sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
            got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
            err = float(np.abs(got - ref["logits"]).max() / np.abs(ref["logits"]).max())
            assert err < 1e-4, (path, err)
            tname, layout = find_layer_tensor(path, x, ref["layer_act"], layer_name)
            ref[f"layer_onnx_name_opset{opset}"] = np.array(tname)
            ref[f"layer_onnx_layout_opset{opset}"] = np.array(layout)
            print(f"{path}: {os.path.getsize(path)} bytes, max rel err vs Keras {err:.2e}, "
                  f"layer tensor {tname!r} ({layout})")
        names = {str(ref[f"layer_onnx_name_opset{o}"]) for o in OPSETS}
        layouts = {str(ref[f"layer_onnx_layout_opset{o}"]) for o in OPSETS}
        if len(names) == 1 and len(layouts) == 1:  # same in every opset: also store it plainly
            ref["layer_onnx_name"] = np.array(names.pop())
            ref["layer_onnx_layout"] = np.array(layouts.pop())
        np.savez(os.path.join(out_dir, f"{name}_reference.npz"), **ref)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__)))
