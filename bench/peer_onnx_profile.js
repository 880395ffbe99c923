#!/usr/bin/env node
// Where ONNX Runtime's time goes on the SD1.5 UNet export (see peer_onnx.js):
// runs WARMUP+1 forwards with ORT's profiler on and prints, for the last
// forward, the summed node time by op type (after ORT's graph
// optimisations, so fused ops such as FusedConv / Gelu appear as such).
//
//   node bench/peer_onnx_profile.js --model /tmp/ort/model/unet.onnx --threads 1 [--warmup 2]
'use strict';
const fs = require('fs');
const os = require('os');
const path = require('path');

const a = { model: '/tmp/ort/model/unet.onnx', threads: 1, warmup: 2,
            ort: '/tmp/ort/node_modules/onnxruntime-node' };
for (let i = 2; i < process.argv.length; i += 2) {
  const k = process.argv[i].replace(/^--/, '');
  a[k] = typeof a[k] === 'number' ? Number(process.argv[i + 1]) : process.argv[i + 1];
}

async function main() {
  const ort = require(a.ort);
  const prefix = path.join(os.tmpdir(), `peer_onnx_profile_${process.pid}`);
  const session = await ort.InferenceSession.create(a.model, {
    executionProviders: ['cpu'], intraOpNumThreads: a.threads, interOpNumThreads: 1,
    graphOptimizationLevel: 'all', executionMode: 'sequential',
    enableProfiling: true, profileFilePrefix: prefix,
  });
  const feeds = {
    sample: new ort.Tensor('float32', new Float32Array(4 * 64 * 64).fill(0.1), [1, 4, 64, 64]),
    timestep: new ort.Tensor('float32', Float32Array.from([999]), [1]),
    context: new ort.Tensor('float32', new Float32Array(77 * 768).fill(0.1), [1, 77, 768]),
  };
  for (let i = 0; i <= a.warmup; i++) {
    const t0 = process.hrtime.bigint();
    await session.run(feeds);
    console.log(`forward ${i + 1}: ${(Number(process.hrtime.bigint() - t0) / 1e9).toFixed(3)} s`);
  }
  session.endProfiling();
  const dir = path.dirname(prefix);
  const file = fs.readdirSync(dir).filter(f => f.startsWith(path.basename(prefix))).map(f => path.join(dir, f))[0];
  const ev = JSON.parse(fs.readFileSync(file, 'utf8'));
  fs.unlinkSync(file);
  const runs = ev.filter(e => e.name === 'model_run');
  const last = runs[runs.length - 1];
  const by = new Map();
  for (const e of ev) {
    if (e.cat !== 'Node' || !e.name.endsWith('_kernel_time')) continue;
    if (e.ts < last.ts || e.ts > last.ts + last.dur) continue;
    const op = (e.args && e.args.op_name) || '?';
    const c = by.get(op) || { us: 0, n: 0 };
    c.us += e.dur; c.n += 1; by.set(op, c);
  }
  console.log(`last forward (profiled): ${(last.dur / 1e6).toFixed(3)} s, threads=${a.threads}`);
  for (const [op, c] of [...by.entries()].sort((x, y) => y[1].us - x[1].us))
    console.log(`  ${op.padEnd(28)} ${(c.us / 1e6).toFixed(3).padStart(8)} s  ${String(c.n).padStart(4)} nodes`);
}
main().catch(e => { console.error(e.stack || e); process.exit(1); });
