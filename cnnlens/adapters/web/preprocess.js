/*
 * cnnlens image preprocessing for the browser and Node: the same bits as the Python
 * pipeline in cnnlens/adapters/images.py (_over_white -> fit -> normalize).
 *
 * Plain ES2017, no dependencies. In a browser it defines globalThis.cnnlensPreprocess; in
 * Node, require() returns the same object.
 *
 * Images are flat, row-major, interleaved arrays (any array-like of 0..255 integers, e.g. a
 * canvas ImageData's Uint8ClampedArray for RGBA): RGBA has h*w*4 entries, RGB h*w*3.
 *
 * Exactness:
 *  - resizing is Pillow's BILINEAR resize (src/libImaging/Resample.c): coefficients in double
 *    precision, normalised by their sum, converted to 22-bit fixed point; one pass per axis
 *    whose size changes, rounded and clipped to uint8 after each, in Pillow 13's order (see
 *    resampleWindow);
 *  - float32 arithmetic is emulated with Math.fround after every operation (a float32
 *    +, -, *, / done in double and rounded once to float32 is correctly rounded);
 *  - the grey value of a 3-value mean/std (channels = 1) is float(LUMA @ array) as numpy's
 *    OpenBLAS sdot computes it: float32 products summed in double, rounded to float32;
 *  - the luminance of the pixels (channels = 1) is the plain float32 expression
 *    (0.299 r + 0.587 g) + 0.114 b, every operation rounded to float32. images.normalize
 *    computes it with np.tensordot, i.e. a BLAS sgemv whose rounding (FMA or not, order of
 *    the terms) depends on the CPU, the number of pixels and the thread count, so it has no
 *    single bit-exact answer; this is the answer numpy's element-wise float32 arithmetic gives.
 */
(function (root) {
  "use strict";

  var f32 = Math.fround;

  var IMAGENET_MEAN = [0.485, 0.456, 0.406];
  var IMAGENET_STD = [0.229, 0.224, 0.225];
  // ITU-R 601-2 luma as float32 (images.LUMA).
  var LUMA = [f32(0.299), f32(0.587), f32(0.114)];

  // Pillow: PRECISION_BITS = 32 - 8 - 2; accumulators start at 1 << (PRECISION_BITS - 1).
  var PRECISION_BITS = 32 - 8 - 2;
  var ONE = 1 << PRECISION_BITS;
  var HALF = 1 << (PRECISION_BITS - 1);

  // float32(v) / float32(255) for every uint8 v.
  var SCALED = new Float64Array(256);
  for (var v = 0; v < 256; v++) SCALED[v] = f32(v / 255);

  function checkSize(n, what) {
    if (!(Number.isInteger(n) && n > 0)) throw new Error(what + " must be a positive integer, got " + n);
  }

  function checkLength(data, n, what) {
    if (!data || data.length !== n) {
      throw new Error(what + " must have " + n + " entries, got " + (data ? data.length : data));
    }
  }

  // Python's round() / numpy.round: to the nearest integer, halves to even.
  function roundHalfEven(x) {
    var r = Math.round(x);  // halves up
    if (r - x === 0.5 && r % 2 !== 0) r -= 1;
    return r;
  }

  // images.fit_geometry((h, w), (outH, outW)): the size the image is resized to so that it
  // covers outH x outW (the other side's length truncated, as Python's int()), and the
  // (top, left) of the centred crop (round((new - out) / 2), halves to even).
  function fitGeometry(h, w, outH, outW) {
    checkSize(h, "h"); checkSize(w, "w"); checkSize(outH, "outH"); checkSize(outW, "outW");
    var newH, newW;
    if (outH * w >= outW * h) {  // height is the binding side
      newH = outH;
      newW = Math.max(outW, Math.trunc(outH * w / h));
    } else {
      newH = Math.max(outH, Math.trunc(outW * h / w));
      newW = outW;
    }
    return {newH: newH, newW: newW, top: roundHalfEven((newH - outH) / 2), left: roundHalfEven((newW - outW) / 2)};
  }

  // Pillow's bilinear_filter.
  function bilinearFilter(x) {
    if (x < 0) x = -x;
    return x < 1 ? 1 - x : 0;
  }

  // Pillow's precompute_coeffs + normalize_coeffs_8bpc for BILINEAR, for the output pixels
  // first .. first + count - 1 of an inSize -> outSize resample (box = whole image).
  // Returns {bounds: Int32Array [xmin, n] per pixel, kk: Int32Array ksize per pixel, ksize}.
  function coefficients(inSize, outSize, first, count) {
    var scale = f32(inSize - 0) / outSize;  // (double)(in1 - in0) / outSize, in0/in1 are C floats
    var filterscale = scale < 1 ? 1 : scale;
    var support = 1.0 * filterscale;  // BILINEAR.support = 1
    var ksize = Math.ceil(support) * 2 + 1;
    var inv = 1.0 / filterscale;
    var bounds = new Int32Array(count * 2);
    var kk = new Int32Array(count * ksize);
    var w = new Float64Array(ksize);
    for (var i = 0; i < count; i++) {
      var xx = first + i;
      var center = 0 + (xx + 0.5) * scale;
      var ww = 0.0;
      var xmin = Math.trunc(center - support + 0.5);  // C (int) truncates toward zero
      if (xmin < 0) xmin = 0;
      var xmax = Math.trunc(center + support + 0.5);
      if (xmax > inSize) xmax = inSize;
      xmax -= xmin;
      for (var x = 0; x < xmax; x++) {
        var k = bilinearFilter(((x + xmin) - center + 0.5) * inv);
        w[x] = k;
        ww += k;
      }
      for (x = 0; x < xmax; x++) {
        var c = ww !== 0.0 ? w[x] / ww : w[x];
        // to fixed point, rounding halves away from zero, then C (int) truncation
        kk[i * ksize + x] = c < 0 ? Math.trunc(-0.5 + c * ONE) : Math.trunc(0.5 + c * ONE);
      }
      bounds[i * 2] = xmin;
      bounds[i * 2 + 1] = xmax;
    }
    return {bounds: bounds, kk: kk, ksize: ksize};
  }

  // Pillow's clip8: the accumulator shifted down by PRECISION_BITS, clipped to 0..255.
  function clip8(ss) {
    var v = ss >> PRECISION_BITS;
    return v < 0 ? 0 : (v > 255 ? 255 : v);
  }

  // Pillow's horizontal pass (_ImagingResampleHorizontal_8bpc) over interleaved RGB: rows
  // firstRow .. firstRow + nRows - 1 of src (srcW pixels a row), whose column 0 is source
  // column colOrigin; co holds the coefficients of the outW output columns. Returns nRows x outW.
  function horizontalPass(src, srcW, firstRow, nRows, colOrigin, co, outW) {
    var out = new Uint8Array(nRows * outW * 3);
    var kk = co.kk, bounds = co.bounds, ksize = co.ksize;
    for (var y = 0; y < nRows; y++) {
      var row = (firstRow + y) * srcW;
      for (var x = 0; x < outW; x++) {
        var start = (row + bounds[x * 2] - colOrigin) * 3, n = bounds[x * 2 + 1], off = x * ksize;
        var s0 = HALF, s1 = HALF, s2 = HALF;
        for (var i = 0; i < n; i++) {
          var c = kk[off + i], p = start + i * 3;
          s0 += src[p] * c; s1 += src[p + 1] * c; s2 += src[p + 2] * c;
        }
        var q = (y * outW + x) * 3;
        out[q] = clip8(s0); out[q + 1] = clip8(s1); out[q + 2] = clip8(s2);
      }
    }
    return out;
  }

  // Pillow's vertical pass (_ImagingResampleVertical_8bpc) over interleaved RGB: columns
  // firstCol .. firstCol + nCols - 1 of src (srcW pixels a row), whose row 0 is source row
  // rowOrigin; co holds the coefficients of the outH output rows. Returns outH x nCols.
  function verticalPass(src, srcW, rowOrigin, firstCol, nCols, co, outH) {
    var out = new Uint8Array(outH * nCols * 3);
    var kk = co.kk, bounds = co.bounds, ksize = co.ksize, stride = srcW * 3;
    for (var y = 0; y < outH; y++) {
      var start = (bounds[y * 2] - rowOrigin) * stride, n = bounds[y * 2 + 1], off = y * ksize;
      for (var x = 0; x < nCols; x++) {
        var col = start + (firstCol + x) * 3;
        var s0 = HALF, s1 = HALF, s2 = HALF;
        for (var i = 0; i < n; i++) {
          var c = kk[off + i], p = col + i * stride;
          s0 += src[p] * c; s1 += src[p + 1] * c; s2 += src[p + 2] * c;
        }
        var q = (y * nCols + x) * 3;
        out[q] = clip8(s0); out[q + 1] = clip8(s1); out[q + 2] = clip8(s2);
      }
    }
    return out;
  }

  // The source span [first, end) the output pixels of co read.
  function span(co, count) {
    var first = Infinity, end = 0;
    for (var i = 0; i < count; i++) {
      first = Math.min(first, co.bounds[i * 2]);
      end = Math.max(end, co.bounds[i * 2] + co.bounds[i * 2 + 1]);
    }
    return [first, end];
  }

  // Pillow's BILINEAR resize of interleaved RGB h x w to newH x newW, but only the window
  // of outH x outW output pixels at (top, left) is computed (each output pixel depends only
  // on its own coefficients and the first pass's pixels it reads, so the window is
  // bit-identical to a crop of the full resize).
  //
  // An axis whose size does not change is not resampled. When both change, the order of
  // the passes matters (the first pass rounds to uint8): Pillow 13 resamples vertically
  // first when the height shrinks by more than twice as many pixels as the width,
  // (h - newH) > 0 and (h - newH) > 2 (w - newW), else horizontally first (as every
  // Pillow before it always does).
  function resampleWindow(rgb, h, w, newH, newW, top, left, outH, outW) {
    var needH = newW !== w, needV = newH !== h;
    var hor = needH ? coefficients(w, newW, left, outW) : null;
    var vert = needV ? coefficients(h, newH, top, outH) : null;
    if (needH && needV) {
      if (h - newH > 0 && h - newH > 2 * (w - newW)) {  // vertical pass first
        var cols = span(hor, outW);
        var tmpV = verticalPass(rgb, w, 0, cols[0], cols[1] - cols[0], vert, outH);
        return horizontalPass(tmpV, cols[1] - cols[0], 0, outH, cols[0], hor, outW);
      }
      var rows = span(vert, outH);
      var tmpH = horizontalPass(rgb, w, rows[0], rows[1] - rows[0], 0, hor, outW);
      return verticalPass(tmpH, outW, rows[0], 0, outW, vert, outH);
    }
    if (needH) return horizontalPass(rgb, w, top, outH, 0, hor, outW);
    if (needV) return verticalPass(rgb, w, 0, left, outW, vert, outH);
    var out = new Uint8Array(outH * outW * 3);  // no resampling: the crop
    for (var y = 0; y < outH; y++) {
      for (var x = 0; x < outW * 3; x++) out[(y * outW) * 3 + x] = rgb[((top + y) * w + left) * 3 + x];
    }
    return out;
  }

  // Pillow's Image.resize((newW, newH), BILINEAR) of interleaved uint8 RGB h x w (antialiased
  // when shrinking). Returns a Uint8Array of newH * newW * 3.
  function resizeBilinear(rgb, h, w, newH, newW) {
    checkSize(h, "h"); checkSize(w, "w"); checkSize(newH, "newH"); checkSize(newW, "newW");
    checkLength(rgb, h * w * 3, "rgb");
    return resampleWindow(rgb, h, w, newH, newW, 0, 0, newH, newW);
  }

  // images.fit: resize uint8 RGB h x w to cover outH x outW (fitGeometry), then centre-crop.
  // Returns a Uint8Array of outH * outW * 3 (a copy; no resampling when the size matches).
  function fit(rgb, h, w, outH, outW) {
    checkSize(h, "h"); checkSize(w, "w"); checkSize(outH, "outH"); checkSize(outW, "outW");
    checkLength(rgb, h * w * 3, "rgb");
    var g = fitGeometry(h, w, outH, outW);
    return resampleWindow(rgb, h, w, g.newH, g.newW, g.top, g.left, outH, outW);
  }

  // images._over_white: uint8 RGBA h x w composited over white, as float32
  // round(c * a + 255 * (1 - a)) with a = alpha / 255 (halves to even). Opaque pixels keep
  // their colour. Returns a Uint8Array of h * w * 3.
  function overWhite(rgba, h, w) {
    checkSize(h, "h"); checkSize(w, "w");
    checkLength(rgba, h * w * 4, "rgba");
    var n = h * w;
    var out = new Uint8Array(n * 3);
    for (var i = 0; i < n; i++) {
      var a = SCALED[rgba[i * 4 + 3]];
      var white = f32(255 * f32(1 - a));
      for (var c = 0; c < 3; c++) {
        out[i * 3 + c] = roundHalfEven(f32(f32(rgba[i * 4 + c] * a) + white));
      }
    }
    return out;
  }

  // images._stats: mean or std as float32, one per channel. A 3-value statistic for a
  // 1-channel model becomes its grey, float(LUMA @ array) (OpenBLAS sdot: float32 products
  // summed in double, rounded to float32).
  function stats(values, channels, what) {
    var list = (typeof values === "number") ? [values] : Array.prototype.slice.call(values);
    var arr = list.map(function (value) { return f32(value); });
    if (channels === 1 && arr.length === 3) {
      arr = [f32((f32(LUMA[0] * arr[0]) + f32(LUMA[1] * arr[1])) + f32(LUMA[2] * arr[2]))];
    }
    if (arr.length === 1) {
      var one = arr[0];
      arr = [];
      for (var c = 0; c < channels; c++) arr.push(one);
    }
    if (arr.length !== channels) {
      throw new Error(what + " has " + arr.length + " values but the model takes " + channels + " channels");
    }
    if (what === "std" && arr.some(function (value) { return value === 0; })) {
      throw new Error("std must not contain zeros");
    }
    return arr;
  }

  // images.normalize for one uint8 RGB h x w image: float32 (x / 255 - mean) / std, as a
  // Float32Array laid out "NCHW" (C, H, W; the default) or "NHWC" (H, W, C). channels = 1
  // first takes the float32 luminance (0.299 r + 0.587 g) + 0.114 b of x / 255.
  function normalize(rgb, h, w, mean, std, channels, layout) {
    checkSize(h, "h"); checkSize(w, "w");
    checkLength(rgb, h * w * 3, "rgb");
    if (channels === undefined) channels = 3;
    if (channels !== 1 && channels !== 3) throw new Error("channels must be 1 or 3, got " + channels);
    if (layout === undefined) layout = "NCHW";
    if (layout !== "NCHW" && layout !== "NHWC") throw new Error("layout must be NCHW or NHWC, got " + layout);
    var m = stats(mean === undefined ? IMAGENET_MEAN : mean, channels, "mean");
    var s = stats(std === undefined ? IMAGENET_STD : std, channels, "std");
    var n = h * w;
    var out = new Float32Array(n * channels);
    var nchw = layout === "NCHW";
    for (var i = 0; i < n; i++) {
      if (channels === 1) {
        var gray = f32(f32(f32(LUMA[0] * SCALED[rgb[i * 3]]) + f32(LUMA[1] * SCALED[rgb[i * 3 + 1]])) +
                       f32(LUMA[2] * SCALED[rgb[i * 3 + 2]]));
        out[i] = f32(f32(gray - m[0]) / s[0]);
      } else {
        for (var c = 0; c < 3; c++) {
          out[nchw ? c * n + i : i * 3 + c] = f32(f32(SCALED[rgb[i * 3 + c]] - m[c]) / s[c]);
        }
      }
    }
    return out;
  }

  // images.prepare for one decoded RGBA image (e.g. canvas ImageData.data): overWhite -> fit
  // -> normalize. options: size [H, W] or one number (required), mean and std (default
  // ImageNet), channels (3), layout ("NCHW"). Returns {input: Float32Array, display:
  // Uint8Array of H * W * 3 RGB, the fitted picture}.
  function prepare(rgba, h, w, options) {
    options = options || {};
    var size = options.size;
    if (size === undefined) throw new Error("prepare needs options.size: [H, W] or one number");
    var outH = typeof size === "number" ? size : size[0];
    var outW = typeof size === "number" ? size : size[1];
    var display = fit(overWhite(rgba, h, w), h, w, outH, outW);
    var input = normalize(display, outH, outW, options.mean, options.std, options.channels, options.layout);
    return {input: input, display: display};
  }

  var api = {
    IMAGENET_MEAN: IMAGENET_MEAN,
    IMAGENET_STD: IMAGENET_STD,
    LUMA: LUMA,
    fitGeometry: fitGeometry,
    resizeBilinear: resizeBilinear,
    fit: fit,
    overWhite: overWhite,
    normalize: normalize,
    prepare: prepare
  };
  root.cnnlensPreprocess = api;
  if (typeof module !== "undefined" && module.exports) module.exports = api;
})(typeof globalThis !== "undefined" ? globalThis : this);
