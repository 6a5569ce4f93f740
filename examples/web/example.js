// The smallest use of a cnnlens explainer in a web page, with onnxruntime-web (wasm).
//
// An explainer file (cnnlens export-explainer MODEL -m gradcam,saliency -o explained.onnx) is the
// model itself plus one float32 output per method, map_<method>: run it as you run the model, and
// read the maps beside the scores. Images must be prepared as the model expects (size, mean, std,
// layout): `cnnlens export-explainer ... --web DIR` writes a complete page that does that exactly
// as cnnlens does; this file shows only the call.
//
//   const result = await cnnlensExample.explain("explained.onnx", pixels, [1, 3, 224, 224]);
//   result.scores          // the model's output, e.g. Float32Array of the classes' scores
//   result.maps.gradcam    // {dims: [1, 224, 224], data: Float32Array}
'use strict';

(function () {
  // Sessions log errors only (logSeverityLevel 3): onnxruntime warns, as console errors, when a model's weights
  // repeat exactly (an untrained model's BatchNorm) and it cannot merge them inside the explainer's Loop: harmless
  const sessions = new Map();

  /** An InferenceSession for `url`, created once. */
  function session(url) {
    if (!sessions.has(url)) sessions.set(url, ort.InferenceSession.create(url, { executionProviders: ['wasm'], logSeverityLevel: 3 }));
    return sessions.get(url);
  }

  /**
   * Run the explainer at `url` on `input` (a Float32Array of `dims`, in the model's layout).
   * `target`: a class per image (Array of ints) when the file was exported with --target input.
   * Returns {scores, outputs: {name: tensor}, maps: {method: {dims, data}}}.
   */
  async function explain(url, input, dims, target) {
    const model = await session(url);
    const feeds = { [model.inputNames[0]]: new ort.Tensor('float32', input, dims) };
    if (model.inputNames.includes('target')) {
      if (!target) throw new Error('this explainer takes a class per image: pass target');
      feeds.target = new ort.Tensor('int64', BigInt64Array.from(target, BigInt), [target.length]);
    }
    const outputs = await model.run(feeds);
    const maps = {};
    for (const name of model.outputNames) {
      if (name.startsWith('map_')) maps[name.slice(4)] = { dims: outputs[name].dims, data: outputs[name].data };
    }
    return { scores: outputs[model.outputNames[0]].data, outputs, maps };
  }

  // ------------------------------------------------------------ raw arrays in and out (base64)

  const ARRAYS = { float32: Float32Array, float64: Float64Array, int64: BigInt64Array, int32: Int32Array,
                   uint8: Uint8Array };

  function decode(text, type) {
    const bytes = Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
    return new ARRAYS[type](bytes.buffer);
  }

  function encode(typed) {
    const bytes = new Uint8Array(typed.buffer, typed.byteOffset, typed.byteLength);
    let text = '';
    for (let i = 0; i < bytes.length; i += 32768) text += String.fromCharCode.apply(null, bytes.subarray(i, i + 32768));
    return btoa(text);
  }

  /** Run `url` on feeds given as {name: {type, dims, base64}}; outputs come back the same way. */
  async function runEncoded(url, feeds) {
    const model = await session(url);
    const tensors = {};
    for (const [name, feed] of Object.entries(feeds)) {
      tensors[name] = new ort.Tensor(feed.type, decode(feed.base64, feed.type), feed.dims);
    }
    const outputs = await model.run(tensors);
    const found = {};
    for (const name of model.outputNames) {
      found[name] = { type: outputs[name].type, dims: outputs[name].dims.map(Number), base64: encode(outputs[name].data) };
    }
    return found;
  }

  window.cnnlensExample = { explain, runEncoded };

  // The page itself: ?model=URL lists what the explainer takes and returns.
  const url = new URLSearchParams(location.search).get('model');
  const out = document.getElementById('about');
  if (url && out) {
    session(url).then((model) => {
      out.textContent = `${url}: inputs ${model.inputNames.join(', ')}; outputs ${model.outputNames.join(', ')}`;
    }, (error) => { out.textContent = `cannot load ${url}: ${error.message}`; });
  }
})();
