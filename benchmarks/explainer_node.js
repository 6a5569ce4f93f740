// Times one ONNX model in onnxruntime-node with default session options: prints the median seconds of
// REPEATS runs after one warm-up. Run from examples/node (where onnxruntime-node is installed).
//   node ../../benchmarks/explainer_node.js MODEL.onnx BATCH REPEATS
'use strict';
const path = require('node:path');
const ort = require(path.join(process.cwd(), 'node_modules', 'onnxruntime-node'));

async function main() {
  const [modelPath, batchText, repeatsText] = process.argv.slice(2);
  const batch = Number(batchText), repeats = Number(repeatsText);
  const session = await ort.InferenceSession.create(modelPath, { logSeverityLevel: 3 });
  const data = new Float32Array(batch * 3 * 224 * 224);
  let seed = 1;
  for (let i = 0; i < data.length; i++) { seed = (seed * 1103515245 + 12345) % 2147483648; data[i] = seed / 2147483648 - 0.5; }
  const feeds = { input: new ort.Tensor('float32', data, [batch, 3, 224, 224]) };
  await session.run(feeds);  // warm-up
  const times = [];
  for (let i = 0; i < repeats; i++) {
    const start = process.hrtime.bigint();
    await session.run(feeds);
    times.push(Number(process.hrtime.bigint() - start) / 1e9);
  }
  times.sort((a, b) => a - b);
  const m = times.length >> 1;
  console.log(JSON.stringify(times.length % 2 ? times[m] : (times[m - 1] + times[m]) / 2));
}

main().catch((error) => { console.error(error.message); process.exit(1); });
