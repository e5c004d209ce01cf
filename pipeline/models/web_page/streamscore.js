// StreamScore in the browser: the exported model run by onnxruntime-web (WebAssembly), with the batch job's
// preprocessing done here exactly as model.json (the version's manifest) says: the image decoded by the
// browser (EXIF orientation applied, as the batch job does), the region the centre crop keeps resized with
// Pillow's own resampling (the same filter, support and fixed-point rounding, horizontal pass then vertical),
// then (pixel - mean) / std into the model's layout. Scores are the softmax of the logits, top-k best first.
// Nothing is fetched from outside this page's origin: the runtime's files are beside it (ort/).
/* global ort */
"use strict";

const PRECISION_BITS = 32 - 8 - 2; // Pillow's fixed-point coefficients (libImaging/Resample.c)
const FILTERS = {
  bicubic: { support: 2, f: (x) => { const a = -0.5; x = Math.abs(x); if (x < 1) return ((a + 2) * x - (a + 3)) * x * x + 1; if (x < 2) return (((x - 5) * x + 8) * x - 4) * a; return 0; } },
  bilinear: { support: 1, f: (x) => { x = Math.abs(x); return x < 1 ? 1 - x : 0; } },
  nearest: null,
};

// Pillow's precompute_coeffs: for each output pixel, the first input pixel and the integer weights.
function coefficients(inSize, in0, in1, outSize, filter) {
  const scale = (in1 - in0) / outSize;
  const filterscale = Math.max(scale, 1);
  const support = filter.support * filterscale;
  const out = [];
  for (let xx = 0; xx < outSize; xx++) {
    const center = in0 + (xx + 0.5) * scale;
    const ss = 1 / filterscale;
    let xmin = Math.trunc(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    let xmax = Math.trunc(center + support + 0.5);
    if (xmax > inSize) xmax = inSize;
    xmax -= xmin;
    const k = new Float64Array(xmax);
    let ww = 0;
    for (let x = 0; x < xmax; x++) { const w = filter.f((x + xmin - center + 0.5) * ss); k[x] = w; ww += w; }
    const ints = new Float64Array(xmax);
    for (let x = 0; x < xmax; x++) {
      const w = ww !== 0 ? k[x] / ww : k[x];
      ints[x] = w < 0 ? Math.trunc(-0.5 + w * (1 << PRECISION_BITS)) : Math.trunc(0.5 + w * (1 << PRECISION_BITS));
    }
    out.push({ min: xmin, k: ints });
  }
  return out;
}

const clip8 = (v) => { const x = Math.floor(v / (1 << PRECISION_BITS)); return x < 0 ? 0 : x > 255 ? 255 : x; };

// Resize the box (left, top, right, bottom, in source pixels) of an RGBA image to width x height, as Pillow's
// Image.resize(size, filter, box=...) does: horizontal pass over the rows the vertical pass needs, then vertical.
function resampleBox(rgba, srcW, srcH, box, outW, outH, filter) {
  const [left, top, right, bottom] = box;
  const horizontal = coefficients(srcW, left, right, outW, filter);
  const vertical = coefficients(srcH, top, bottom, outH, filter);
  const first = vertical[0].min;
  const last = vertical[outH - 1].min + vertical[outH - 1].k.length;
  const rows = last - first;
  const mid = new Uint8ClampedArray(rows * outW * 3);
  const half = 1 << (PRECISION_BITS - 1);
  for (let y = 0; y < rows; y++) {
    const row = (y + first) * srcW * 4;
    for (let x = 0; x < outW; x++) {
      const { min, k } = horizontal[x];
      let r = half, g = half, b = half;
      for (let i = 0; i < k.length; i++) {
        const p = row + (min + i) * 4;
        r += rgba[p] * k[i]; g += rgba[p + 1] * k[i]; b += rgba[p + 2] * k[i];
      }
      const o = (y * outW + x) * 3;
      mid[o] = clip8(r); mid[o + 1] = clip8(g); mid[o + 2] = clip8(b);
    }
  }
  const out = new Uint8ClampedArray(outH * outW * 3);
  for (let y = 0; y < outH; y++) {
    const { min, k } = vertical[y];
    for (let x = 0; x < outW; x++) {
      let r = half, g = half, b = half;
      for (let i = 0; i < k.length; i++) {
        const p = ((min - first + i) * outW + x) * 3;
        r += mid[p] * k[i]; g += mid[p + 1] * k[i]; b += mid[p + 2] * k[i];
      }
      const o = (y * outW + x) * 3;
      out[o] = clip8(r); out[o + 1] = clip8(g); out[o + 2] = clip8(b);
    }
  }
  return out;
}

// operators/resize.py: the shorter side to resize_shorter (aspect kept), then the centre crop's source box.
function cropBox(srcH, srcW, shorter, cropH, cropW) {
  let h, w;
  if (srcH <= srcW) { h = shorter; w = Math.max(shorter, Math.round(srcW * shorter / srcH)); }
  else { w = shorter; h = Math.max(shorter, Math.round(srcH * shorter / srcW)); }
  const ch = Math.min(cropH, h), cw = Math.min(cropW, w);
  const top = Math.floor((h - ch) / 2), left = Math.floor((w - cw) / 2);
  const sy = srcH / h, sx = srcW / w;
  return { size: [cw, ch], box: [left * sx, top * sy, (left + cw) * sx, (top + ch) * sy] };
}

async function decode(blob) {
  const bitmap = await createImageBitmap(blob, { imageOrientation: "from-image", premultiplyAlpha: "none", colorSpaceConversion: "none" });
  const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
  const context = canvas.getContext("2d", { willReadFrequently: true });
  context.drawImage(bitmap, 0, 0);
  const pixels = context.getImageData(0, 0, bitmap.width, bitmap.height).data;
  return { pixels, width: bitmap.width, height: bitmap.height };
}

function tensorOf(rgb, width, height, spec) {
  const { mean, std } = spec.preprocess;
  const data = new Float32Array(3 * width * height);
  const plane = width * height;
  for (let i = 0; i < plane; i++) {
    for (let c = 0; c < 3; c++) {
      const v = (rgb[i * 3 + c] - mean[c]) / std[c];
      if (spec.input.layout === "NCHW") data[c * plane + i] = v; else data[i * 3 + c] = v;
    }
  }
  const shape = spec.input.layout === "NCHW" ? [1, 3, height, width] : [1, height, width, 3];
  return new ort.Tensor("float32", data, shape);
}

function topK(logits, labels, k) {
  const max = Math.max(...logits);
  const exps = Array.from(logits, (v) => Math.exp(v - max));
  const sum = exps.reduce((a, b) => a + b, 0);
  return exps.map((e, i) => ({ label: labels[i], score: e / sum }))
    .sort((a, b) => b.score - a.score).slice(0, k);
}

let ready = null;
async function load() {
  const spec = await (await fetch("model.json")).json();
  ort.env.wasm.wasmPaths = new URL("ort/", location.href).href;
  ort.env.wasm.numThreads = self.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;
  const session = await ort.InferenceSession.create("model.onnx", { executionProviders: ["wasm"] });
  return { spec, session };
}

async function classifyBlob(blob) {
  ready = ready || load();
  const { spec, session } = await ready;
  const image = await decode(blob);
  const filter = FILTERS[spec.preprocess.interpolation];
  if (!filter) throw new Error(`interpolation ${spec.preprocess.interpolation} is not supported in the browser`);
  const { size, box } = cropBox(image.height, image.width, spec.preprocess.resize_shorter, spec.input.height, spec.input.width);
  const rgb = resampleBox(image.pixels, image.width, image.height, box, size[0], size[1], filter);
  const outputs = await session.run({ [spec.input.name]: tensorOf(rgb, size[0], size[1], spec) });
  return topK(outputs[spec.output.name].data, spec.labels, spec.top_k);
}

async function classify(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  return classifyBlob(await response.blob());
}

self.streamscore = { classify, classifyBlob, ready: () => (ready = ready || load()).then(() => true) };
