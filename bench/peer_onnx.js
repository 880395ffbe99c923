#!/usr/bin/env node
// An ONNX Runtime peer for `sdunet bench`: runs the ONNX export of the compact
// SD1.5 UNet of bench/peer_torch.py (bench/peer_onnx_export.py) with the
// onnxruntime-node npm package (CPU execution provider, prebuilt MLAS
// kernels), float32, batch 1, 64x64, 77x768 context, timestep 999, on the
// inputs of tests/data/sd15-64, and checks the output against
// expected_f64.npy (relative L2), so it is shown to compute the same function.
//
//   node bench/peer_onnx.js --model /tmp/ort/model/unet.onnx --threads 1 \
//       [--runs 3] [--warmup 1] [--ort /tmp/ort/node_modules/onnxruntime-node]
//
// Session options: intraOpNumThreads = N, interOpNumThreads = 1,
// graphOptimizationLevel 'all', sequential execution. Last line, in the
// format of `sdunet bench`'s:
//   bench: precision=fp32 batch=1 height=64 width=64 threads=N median_s=... min_s=...
//          gflops=... peak_rss_mb=... peer=onnxruntime-node-<version> rel_l2=...
// peak_rss_mb is process.resourceUsage().maxRSS (KiB) / 1024: the process's
// peak, session creation (model load, graph optimisation) included.
'use strict';
const fs = require('fs');
const path = require('path');

const GFLOP_SD15_64 = 803.3; // spec/unet.md: one forward, batch 1, 64x64, 77 tokens
const DATA = path.join(__dirname, '..', 'tests', 'data', 'sd15-64');

function parseArgs(argv) {
  const a = { model: '/tmp/ort/model/unet.onnx', threads: 1, runs: 3, warmup: 1,
              ort: '/tmp/ort/node_modules/onnxruntime-node' };
  for (let i = 2; i < argv.length; i += 2) {
    const k = argv[i].replace(/^--/, ''), v = argv[i + 1];
    if (!(k in a) || v === undefined) { console.error(`peer_onnx: bad argument ${argv[i]}`); process.exit(2); }
    a[k] = (typeof a[k] === 'number') ? Number(v) : v;
  }
  return a;
}

// .npy (version 1.x/2.x): magic, version, header length, Python-dict header, raw data.
function loadNpy(file) {
  const buf = fs.readFileSync(file);
  if (buf.readUInt8(0) !== 0x93 || buf.toString('latin1', 1, 6) !== 'NUMPY') throw new Error(`${file}: not .npy`);
  const major = buf.readUInt8(6);
  const hlen = major === 1 ? buf.readUInt16LE(8) : buf.readUInt32LE(8);
  const hstart = major === 1 ? 10 : 12;
  const header = buf.toString('latin1', hstart, hstart + hlen);
  const descr = /'descr':\s*'([^']+)'/.exec(header)[1];
  if (/'fortran_order':\s*True/.test(header)) throw new Error(`${file}: fortran order`);
  const shape = /'shape':\s*\(([^)]*)\)/.exec(header)[1].split(',').map(s => s.trim()).filter(s => s).map(Number);
  const n = shape.reduce((x, y) => x * y, 1);
  const off = hstart + hlen;
  const data = buf.subarray(off);
  let out;
  if (descr === '<f4') {
    out = new Float32Array(n);
    for (let i = 0; i < n; i++) out[i] = data.readFloatLE(4 * i);
  } else if (descr === '<f8') {
    out = new Float64Array(n);
    for (let i = 0; i < n; i++) out[i] = data.readDoubleLE(8 * i);
  } else throw new Error(`${file}: dtype ${descr} not handled`);
  return { shape, data: out };
}

async function main() {
  const args = parseArgs(process.argv);
  const ort = require(args.ort);
  const version = require(path.join(args.ort, 'package.json')).version;
  const sample = loadNpy(path.join(DATA, 'sample.npy'));
  const context = loadNpy(path.join(DATA, 'context.npy'));
  const expected = loadNpy(path.join(DATA, 'expected_f64.npy'));

  let t0 = process.hrtime.bigint();
  const session = await ort.InferenceSession.create(args.model, {
    executionProviders: ['cpu'],
    intraOpNumThreads: args.threads,
    interOpNumThreads: 1,
    graphOptimizationLevel: 'all',
    executionMode: 'sequential',
  });
  const loadS = Number(process.hrtime.bigint() - t0) / 1e9;
  console.error(`peer_onnx: onnxruntime-node ${version}, inputs ${session.inputNames.join(',')}, ` +
                `session created in ${loadS.toFixed(2)} s, rss now ${(process.memoryUsage().rss / 1048576).toFixed(0)} MB`);

  const feeds = {
    sample: new ort.Tensor('float32', Float32Array.from(sample.data), [1, 4, 64, 64]),
    timestep: new ort.Tensor('float32', Float32Array.from([999]), [1]),
    context: new ort.Tensor('float32', Float32Array.from(context.data), [1, 77, 768]),
  };
  const times = [];
  let out;
  for (let i = 0; i < args.warmup + args.runs; i++) {
    t0 = process.hrtime.bigint();
    const r = await session.run(feeds);
    const dt = Number(process.hrtime.bigint() - t0) / 1e9;
    out = r[session.outputNames[0]];
    const warm = i < args.warmup;
    if (!warm) times.push(dt);
    console.error(`peer_onnx: threads=${args.threads} ${warm ? 'warm-up' : 'run'} ${warm ? i + 1 : i - args.warmup + 1}: ${dt.toFixed(3)} s`);
  }
  const o = out.data;
  if (o.length !== expected.data.length) throw new Error(`output has ${o.length} values, expected ${expected.data.length}`);
  let num = 0, den = 0;
  for (let i = 0; i < o.length; i++) { const d = o[i] - expected.data[i]; num += d * d; den += expected.data[i] * expected.data[i]; }
  const rel = Math.sqrt(num / den);
  times.sort((x, y) => x - y);
  const r = times.length;
  const med = r % 2 ? times[(r - 1) / 2] : 0.5 * (times[r / 2 - 1] + times[r / 2]);
  const rss = process.resourceUsage().maxRSS / 1024; // KiB -> MiB
  console.log(`bench: precision=fp32 batch=1 height=64 width=64 threads=${args.threads} median_s=${med.toFixed(3)} ` +
              `min_s=${times[0].toFixed(3)} gflops=${(GFLOP_SD15_64 / med).toFixed(1)} peak_rss_mb=${rss.toFixed(0)} ` +
              `peer=onnxruntime-node-${version} rel_l2=${rel.toExponential(2)}`);
}

main().catch(e => { console.error(`peer_onnx: ${e.stack || e}`); process.exit(1); });
