#!/usr/bin/python3
"""Exports the compact SD1.5 UNet of bench/peer_torch.py (same module, same
weights file) to ONNX for the ONNX Runtime peer (bench/peer_onnx.js).

  /usr/bin/python3 bench/peer_onnx_export.py --weights /tmp/sd15.safetensors \
      --out /tmp/ort/model/unet.onnx [--opset 17]

Inputs: sample (1,4,64,64) f32, timestep (1,) f32, context (1,77,768) f32;
output: out (1,4,64,64) f32. The model is over 2 GB, so the weights go to
external data files beside the .onnx (torch 1.13 does this by itself for
models over the protobuf limit, one file per tensor, so give it a folder of
its own). Needs Debian's python3-torch, python3-numpy and python3-onnx.

One change for the export, same arithmetic: peer_torch's attention scores are
diffusers' torch.baddbmm(torch.empty(...), q, k^T, beta=0, alpha=scale).
torch.onnx exports that literally as MatMul, Mul(alpha), plus
Mul(ConstantOfShape zeros (heads, N, N), beta=0) and Add -- a 1 GiB zero
tensor at 64x64 (constant-folded into the file) and two extra full passes
over the score matrix per self-attention, which is not what ONNX Runtime
users ship (ORT's own SD exports use fused or plain MatMul attention).
So Attention.forward is replaced here by the same function with the
scores as MatMul(q, k^T) * scale.
"""
import argparse
import os
import sys
import time

import torch

sys.dont_write_bytecode = True  # no bench/__pycache__ in the tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peer_torch  # noqa: E402


def attention_forward(self, x, ctx=None):
    ctx = x if ctx is None else ctx
    B, N, C = x.shape
    h = self.heads

    def split(t):  # (B, L, C) -> (B*h, L, C/h)
        return t.reshape(B, -1, h, C // h).permute(0, 2, 1, 3).reshape(B * h, -1, C // h)

    q, k, v = split(self.to_q(x)), split(self.to_k(ctx)), split(self.to_v(ctx))
    p = (torch.matmul(q, k.transpose(-1, -2)) * self.scale).softmax(dim=-1)
    o = torch.matmul(p, v)
    o = o.reshape(B, h, N, C // h).permute(0, 2, 1, 3).reshape(B, N, C)
    return self.to_out[0](o)


peer_torch.Attention.forward = attention_forward


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", default="/tmp/sd15.safetensors")
    ap.add_argument("--out", default="/tmp/ort/model/unet.onnx")
    ap.add_argument("--opset", type=int, default=17)
    args = ap.parse_args()

    t0 = time.perf_counter()
    with torch.no_grad():
        model = peer_torch.UNet().eval()
        n, unused = peer_torch.load_safetensors(model, args.weights)
    print("peer_onnx_export: %d tensors loaded in %.1f s, %d unused" % (n, time.perf_counter() - t0, len(unused)),
          flush=True)
    sample = torch.zeros(1, 4, 64, 64, dtype=torch.float32)
    t = torch.tensor([999.0], dtype=torch.float32)
    ctx = torch.zeros(1, 77, 768, dtype=torch.float32)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    t0 = time.perf_counter()
    with torch.no_grad():
        torch.onnx.export(model, (sample, t, ctx), args.out,
                          input_names=["sample", "timestep", "context"], output_names=["out"],
                          opset_version=args.opset, do_constant_folding=True)
    print("peer_onnx_export: torch %s, opset %d, wrote %s in %.1f s" %
          (torch.__version__, args.opset, args.out, time.perf_counter() - t0), flush=True)


if __name__ == "__main__":
    main()
