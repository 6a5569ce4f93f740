/*
 * The cnnlens explainer page: drop an image, and the explainer ONNX file (the model and its maps
 * in one graph) runs in the browser with onnxruntime-web. The image is prepared exactly as
 * `cnnlens explain` prepares it for this model (preprocess.js: Pillow's bilinear resize to cover,
 * centre crop, (x / 255 - mean) / std, the model's layout), so the maps are the ones
 * cnnlens.explain gives for the same file.
 *
 * The page's settings come from the JSON block #cnnlens-config that `cnnlens export-explainer
 * --web` writes. What a run produced is kept in window.cnnlensResult (for tests and for whoever
 * wants the numbers): the input tensor, the fitted picture, every output, the overlays drawn.
 */
(function () {
  "use strict";

  var config = JSON.parse(document.getElementById("cnnlens-config").textContent);
  var statusLine = document.getElementById("status");
  var picker = document.getElementById("image");
  var drop = document.getElementById("drop");
  var results = document.getElementById("results");
  var session = null;

  window.cnnlensResult = { status: "loading" };

  function setStatus(text) {
    statusLine.textContent = text;
    window.cnnlensResult.status = text;
  }

  // ------------------------------------------------------------ numbers

  // numpy.round: to the nearest integer, halves to even
  function roundHalfEven(x) {
    var r = Math.round(x);
    if (r - x === 0.5 && r % 2 !== 0) r -= 1;
    return r;
  }

  // Min-max scaling to [0, 1] (0 where the map is constant), as cnnlens's scaling.normalize_minmax.
  function minmax(values) {
    var low = Infinity, high = -Infinity, i;
    for (i = 0; i < values.length; i++) {
      var v = Number.isFinite(values[i]) ? values[i] : 0;
      if (v < low) low = v;
      if (v > high) high = v;
    }
    var out = new Float64Array(values.length);
    var span = high - low;
    if (!(span > 0)) return out;
    for (i = 0; i < values.length; i++) {
      var x = Number.isFinite(values[i]) ? values[i] : 0;
      out[i] = Math.min(1, Math.max(0, (x - low) / span));
    }
    return out;
  }

  // The (h, w) maps of a map output for image 0: one per layer; an input attribution's channels
  // summed as |g| (the seeds' grayscale); feature maps averaged over channels.
  function heats(method, tensor) {
    var kind = config.kinds[method];
    var dims = tensor.dims.map(Number);
    var data = tensor.data;
    var layered = config.layered[method];
    var layers = layered ? dims[1] : 1;
    var rest = dims.slice(layered ? 2 : 1);
    var channels = rest.length === 3 ? rest[0] : 1;
    var h = rest[rest.length - 2], w = rest[rest.length - 1];
    var out = [];
    for (var l = 0; l < layers; l++) {
      var heat = new Float64Array(h * w);
      var base = l * channels * h * w;
      for (var c = 0; c < channels; c++) {
        for (var p = 0; p < h * w; p++) {
          var v = data[base + c * h * w + p];
          heat[p] += kind === "input" ? Math.abs(v) : (channels > 1 ? v / channels : v);
        }
      }
      out.push({ h: h, w: w, values: heat });
    }
    return out;
  }

  // cnnlens's render.overlay: (1 - alpha) * picture + alpha * colormap(minmax(heat)), rounded
  // half to even, in float32; the heat is the picture's size (maps are resized to the input).
  function overlay(display, heat, alpha) {
    var scaled = minmax(heat.values);
    var lut = config.colormap;
    var keep = Math.fround(1 - alpha), mix = Math.fround(alpha);
    var out = new Uint8ClampedArray(heat.h * heat.w * 4);
    for (var p = 0; p < heat.h * heat.w; p++) {
      var index = Math.min(255, Math.floor(scaled[p] * 256));
      for (var c = 0; c < 3; c++) {
        var blended = Math.fround(Math.fround(keep * display[3 * p + c]) + Math.fround(mix * lut[index][c]));
        out[4 * p + c] = Math.min(255, Math.max(0, roundHalfEven(blended)));
      }
      out[4 * p + 3] = 255;
    }
    return out;
  }

  function toBase64(typed) {
    var bytes = new Uint8Array(typed.buffer, typed.byteOffset, typed.byteLength);
    var text = "";
    for (var i = 0; i < bytes.length; i += 32768) {
      text += String.fromCharCode.apply(null, bytes.subarray(i, i + 32768));
    }
    return btoa(text);
  }

  function probabilities(scores) {
    var sum = 0, nonNegative = true, i;
    for (i = 0; i < scores.length; i++) { sum += scores[i]; if (scores[i] < 0) nonNegative = false; }
    if (nonNegative && Math.abs(sum - 1) < 1e-3) return Array.from(scores);  // already probabilities
    var top = Math.max.apply(null, scores), exps = [], total = 0;
    for (i = 0; i < scores.length; i++) { exps.push(Math.exp(scores[i] - top)); total += exps[i]; }
    return exps.map(function (e) { return e / total; });
  }

  // ------------------------------------------------------------ running

  function feeds(input, classIndex) {
    var size = config.size, c = config.channels;
    var dims = config.layout === "NHWC" ? [1, size[0], size[1], c] : [1, c, size[0], size[1]];
    var fed = {};
    fed[config.input] = new ort.Tensor("float32", input, dims);
    if (config.target === "input") {
      fed.target = new ort.Tensor("int64", BigInt64Array.from([BigInt(classIndex)]), [1]);
    }
    return fed;
  }

  async function pixels(file) {
    var bitmap = await createImageBitmap(file, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
    var canvas = document.createElement("canvas");
    canvas.width = bitmap.width;
    canvas.height = bitmap.height;
    var context = canvas.getContext("2d", { willReadFrequently: true });
    context.drawImage(bitmap, 0, 0);
    return { rgba: context.getImageData(0, 0, bitmap.width, bitmap.height).data, h: bitmap.height, w: bitmap.width };
  }

  function figure(title, rgba, h, w) {
    var box = document.createElement("figure");
    var canvas = document.createElement("canvas");
    canvas.width = w;
    canvas.height = h;
    canvas.getContext("2d").putImageData(new ImageData(rgba, w, h), 0, 0);
    var caption = document.createElement("figcaption");
    caption.textContent = title;
    box.appendChild(canvas);
    box.appendChild(caption);
    results.appendChild(box);
  }

  async function explain(file) {
    if (!file || !session) return;
    setStatus("explaining " + file.name + " ...");
    try {
      var image = await pixels(file);
      var prepared = cnnlensPreprocess.prepare(image.rgba, image.h, image.w, {
        size: config.size, mean: config.mean, std: config.std, channels: config.channels, layout: config.layout
      });
      var chosen = document.getElementById("class").value;
      var started = performance.now();
      var outputs = await session.run(feeds(prepared.input, chosen === "" ? 0 : Number(chosen)));
      var scores = outputs[config.scores].data;
      var probs = probabilities(scores);
      var best = probs.indexOf(Math.max.apply(null, probs));
      var explained = config.target === "input" && chosen !== "" ? Number(chosen) : best;
      if (config.target === "input" && explained !== (chosen === "" ? 0 : Number(chosen))) {
        outputs = await session.run(feeds(prepared.input, explained));  // explain the predicted class
      }
      render(prepared, outputs, best, probs, explained, performance.now() - started);
    } catch (error) {
      setStatus("error: " + (error && error.message ? error.message : error));
    }
  }

  function label(index) {
    return config.labels && config.labels[index] !== undefined ? config.labels[index] + " (" + index + ")" : "class " + index;
  }

  function render(prepared, outputs, best, probs, explained, milliseconds) {
    results.textContent = "";
    var size = config.size, h = size[0], w = size[1];
    var summary = document.getElementById("summary");
    summary.textContent = label(best) + ": " + (100 * probs[best]).toFixed(1) + "%" +
      (explained !== best ? " (explaining " + label(explained) + ")" : "");
    var picture = new Uint8ClampedArray(h * w * 4);
    for (var p = 0; p < h * w; p++) {
      for (var c = 0; c < 3; c++) picture[4 * p + c] = prepared.display[3 * p + c];
      picture[4 * p + 3] = 255;
    }
    figure("input", picture, h, w);
    var kept = { outputs: {}, overlays: {} };
    Object.keys(outputs).forEach(function (name) {
      kept.outputs[name] = { dims: outputs[name].dims.map(Number), type: outputs[name].type, data: outputs[name].data };
    });
    config.methods.forEach(function (method) {
      var tensor = outputs["map_" + method];
      heats(method, tensor).forEach(function (heat, layer) {
        var title = method + (config.layered[method] ? " (" + config.layerNames[method][layer] + ")" : "");
        if (heat.h !== h || heat.w !== w) {
          figure(title + ": " + heat.h + "x" + heat.w + " (not at the image's size: see the numbers)",
                 overlay(new Uint8Array(heat.h * heat.w * 3), heat, 1), heat.h, heat.w);
          return;
        }
        var drawn = overlay(prepared.display, heat, config.alpha);
        kept.overlays[method + (config.layered[method] ? ":" + layer : "")] = drawn;
        figure(title, drawn, h, w);
      });
    });
    window.cnnlensResult = {
      status: "done", best: best, probability: probs[best], explained: explained,
      input: prepared.input, display: prepared.display, outputs: kept.outputs, overlays: kept.overlays,
      base64: function (what, name) {
        var source = what === "input" ? prepared.input : what === "display" ? prepared.display :
          what === "overlay" ? kept.overlays[name] : kept.outputs[name].data;
        return toBase64(source);
      }
    };
    setStatus("done");
    statusLine.textContent = "explained in " + Math.round(milliseconds) + " ms by onnxruntime-web (" +
      config.methods.length + " method" + (config.methods.length > 1 ? "s" : "") + ", one run)";
  }

  // ------------------------------------------------------------ the page

  picker.addEventListener("change", function () { explain(picker.files[0]); });
  drop.addEventListener("dragover", function (event) { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", function () { drop.classList.remove("over"); });
  drop.addEventListener("drop", function (event) {
    event.preventDefault();
    drop.classList.remove("over");
    explain(event.dataTransfer.files[0]);
  });
  if (config.target !== "input") document.getElementById("class-choice").hidden = true;

  // Sessions log errors only (logSeverityLevel 3): onnxruntime warns, as console errors, when a model's weights
  // repeat exactly (an untrained model's BatchNorm) and it cannot merge them inside the explainer's Loop: harmless
  ort.InferenceSession.create(config.model, { executionProviders: ["wasm"], logSeverityLevel: 3 }).then(function (created) {
    session = created;
    setStatus("ready: drop an image, or choose one");
    window.cnnlensResult.status = "ready";
  }, function (error) {
    setStatus("error: cannot load " + config.model + ": " + (error && error.message ? error.message : error));
  });
})();
