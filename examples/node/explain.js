#!/usr/bin/env node
// Run a cnnlens explainer ONNX file with ONNX Runtime for Node.js.
//
// An explainer file is the original image model plus extra float32 outputs named map_<method>
// (map_gradcam: (N, H, W), map_saliency: (N, C, H, W), ...). It takes the model's own input, and
// may take one more: `target` (int64, one class index per image) or `target_weights` (float, one
// weight per class and image) saying what to explain; without them the maps explain the top class.
//
//   npm ci                                    # see README: ONNXRUNTIME_NODE_INSTALL=skip when offline
//   node explain.js MODEL.onnx INPUT.npy [--target N | --target-weights W.npy] [--out DIR]
//
//   --target N          explain class N in every image; or N1,N2,... one class per image
//   --target-weights W  a .npy file of weights over the classes, e.g. (N, K) float32
//   --out DIR           where to write <output name>.npy for every output (default: out)
//
// Make INPUT.npy in Python with np.save("x.npy", images.astype(np.float32)); any numeric dtype
// works and is converted to the type of the model's input. Read the results back with np.load.

'use strict';

const fs = require('node:fs');
const path = require('node:path');
const { parseArgs } = require('node:util');
const ort = require('onnxruntime-node');
const { readNpy, writeNpy } = require('./npy');

const USAGE =
  'usage: node explain.js MODEL.onnx INPUT.npy [--target N[,N...] | --target-weights W.npy] [--out DIR]';

// ONNX Runtime tensor type -> the .npy dtype we write it as.
const NPY_DTYPE = { float32: '<f4', float64: '<f8', int64: '<i8', int32: '<i4', uint8: '|u1', bool: '|b1' };

// ONNX Runtime tensor type -> the TypedArray that holds its data.
const TYPED_ARRAY = {
  float32: Float32Array,
  float64: Float64Array,
  int64: BigInt64Array,
  int32: Int32Array,
  uint8: Uint8Array,
  bool: Uint8Array,
};

/** Copy numbers (or BigInts) into the TypedArray that an ONNX Runtime tensor of `type` needs. */
function toTensorData(values, type, what) {
  const ArrayType = TYPED_ARRAY[type];
  if (!ArrayType) throw new Error(`${what}: the model wants ${type}, which this example does not feed`);
  if (values instanceof ArrayType) return values;
  if (ArrayType === BigInt64Array) {
    return BigInt64Array.from(values, (v) => {
      if (typeof v !== 'bigint' && !Number.isInteger(v)) throw new Error(`${what}: ${v} is not an integer`);
      return BigInt(v);
    });
  }
  return ArrayType.from(values, Number);
}

/** Check an array's shape against the model's declared one (symbolic dimensions such as "batch" match anything). */
function checkShape(shape, meta, what) {
  if (!meta.shape || meta.shape.length === 0) return; // shape not declared
  const ok =
    shape.length === meta.shape.length &&
    meta.shape.every((d, i) => typeof d !== 'number' || d < 0 || d === shape[i]);
  if (!ok) {
    const want = meta.shape.map((d) => (typeof d === 'number' && d >= 0 ? d : String(d))).join(', ');
    throw new Error(`${what} has shape [${shape.join(', ')}], the model's input '${meta.name}' wants [${want}]`);
  }
}

/** Read a .npy file; its errors name the file. */
function readNpyFile(file) {
  const bytes = fs.readFileSync(file);
  try {
    return readNpy(bytes);
  } catch (err) {
    throw new Error(`${file}: ${err.message}`);
  }
}

/** Softmax of one row of scores, numerically stable. */
function softmax(row) {
  const max = row.reduce((a, b) => Math.max(a, b), -Infinity);
  const exps = row.map((v) => Math.exp(v - max));
  const sum = exps.reduce((a, b) => a + b, 0);
  return exps.map((v) => v / sum);
}

/** Rows that are already probabilities (a Softmax ends the model) are shown as they are. */
function looksLikeProbabilities(row) {
  const sum = row.reduce((a, b) => a + b, 0);
  return row.every((v) => v >= 0 && v <= 1) && Math.abs(sum - 1) < 1e-3;
}

/** A file name for an output: ONNX names may contain '/' or ':' (e.g. "/fc/Gemm_output_0"). */
function fileStem(name) {
  return name.replace(/[^A-Za-z0-9._-]/g, '_');
}

async function main() {
  // 1. The command line.
  const { values: flags, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      target: { type: 'string' },
      'target-weights': { type: 'string' },
      out: { type: 'string', default: 'out' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (flags.help) {
    console.log(USAGE);
    return;
  }
  if (positionals.length !== 2) throw new Error(USAGE);
  const [modelPath, inputPath] = positionals;
  if (flags.target !== undefined && flags['target-weights'] !== undefined) {
    throw new Error('give --target or --target-weights, not both');
  }

  // 2. The model. Its first input is the image batch; an explainer may add `target` or `target_weights`.
  const session = await ort.InferenceSession.create(modelPath);
  const inputs = new Map(session.inputMetadata.map((meta) => [meta.name, meta]));
  const imageMeta = session.inputMetadata[0];
  for (const name of inputs.keys()) {
    if (name !== imageMeta.name && name !== 'target' && name !== 'target_weights') {
      throw new Error(`the model has an input '${name}' that this example does not know how to feed`);
    }
  }

  // 3. The images: any numeric .npy, converted to the type the model's input wants (usually float32).
  const image = readNpyFile(inputPath);
  checkShape(image.shape, imageMeta, inputPath);
  const batch = image.shape[0];
  const feeds = {
    [imageMeta.name]: new ort.Tensor(imageMeta.type, toTensorData(image.data, imageMeta.type, inputPath), image.shape),
  };

  // 4. What to explain.
  const targetMeta = inputs.get('target');
  const weightsMeta = inputs.get('target_weights');
  if (flags.target !== undefined) {
    if (!targetMeta) throw new Error("--target was given, but the model has no 'target' input");
    // "--target 3" explains class 3 in every image; "--target 3,1,4" gives one class per image.
    const classes = flags.target.split(',').map((s) => {
      if (!/^\s*\d+\s*$/.test(s)) throw new Error(`--target: '${s}' is not a class index`);
      return Number(s);
    });
    if (classes.length !== 1 && classes.length !== batch) {
      throw new Error(`--target gives ${classes.length} classes for ${batch} images; give 1 or ${batch}`);
    }
    const perImage = classes.length === 1 ? new Array(batch).fill(classes[0]) : classes;
    feeds.target = new ort.Tensor(targetMeta.type, toTensorData(perImage, targetMeta.type, '--target'), [batch]);
  } else if (flags['target-weights'] !== undefined) {
    if (!weightsMeta) throw new Error("--target-weights was given, but the model has no 'target_weights' input");
    const weights = readNpyFile(flags['target-weights']);
    checkShape(weights.shape, weightsMeta, flags['target-weights']);
    const data = toTensorData(weights.data, weightsMeta.type, flags['target-weights']);
    feeds.target_weights = new ort.Tensor(weightsMeta.type, data, weights.shape);
  }
  if (targetMeta && !feeds.target) {
    throw new Error("this model needs the class to explain: pass --target N (or N1,N2,... one per image)");
  }
  if (weightsMeta && !feeds.target_weights) {
    throw new Error('this model needs weights over the classes: pass --target-weights W.npy');
  }

  // 5. Run it.
  const results = await session.run(feeds);

  // 6. Report each output; for class scores (N, K) show the top class of every image.
  console.log(`${path.basename(modelPath)}: ${batch} image(s) of shape [${image.shape.slice(1).join(', ')}]`);
  for (const name of session.outputNames) {
    const tensor = results[name];
    console.log(`  ${name}  ${tensor.type} [${tensor.dims.join(', ')}]`);
    const isScores =
      !name.startsWith('map_') &&
      (tensor.type === 'float32' || tensor.type === 'float64') &&
      tensor.dims.length === 2 &&
      tensor.dims[0] === batch &&
      tensor.dims[1] > 1;
    if (isScores) {
      const k = tensor.dims[1];
      for (let i = 0; i < batch; i++) {
        const row = Array.from(tensor.data.subarray(i * k, (i + 1) * k));
        const probs = looksLikeProbabilities(row) ? row : softmax(row);
        const best = probs.reduce((top, p, c) => (p > probs[top] ? c : top), 0);
        console.log(`    image ${i}: class ${best}  p=${probs[best].toFixed(4)}`);
      }
    }
  }

  // 7. Write every output as <out>/<output name>.npy (float32 as <f4, int64 as <i8, ...).
  fs.mkdirSync(flags.out, { recursive: true });
  const written = new Set();
  for (const name of session.outputNames) {
    const tensor = results[name];
    const dtype = NPY_DTYPE[tensor.type];
    if (!dtype) throw new Error(`output '${name}' is ${tensor.type}, which npy.js does not write`);
    const stem = fileStem(name);
    if (written.has(stem)) throw new Error(`two outputs would both be written to ${stem}.npy`);
    written.add(stem);
    const file = path.join(flags.out, `${stem}.npy`);
    fs.writeFileSync(file, writeNpy({ dtype, shape: tensor.dims, data: tensor.data }));
  }
  console.log(`wrote ${written.size} file(s) to ${flags.out}${path.sep}`);
  await session.release();
}

main().catch((err) => {
  // One line on stderr and exit status 1: easy to read, easy to check from a script.
  const message = String(err?.message ?? err).replace(/\s*\n\s*/g, ' ').trim();
  console.error(`explain.js: ${message}`);
  process.exitCode = 1;
});
