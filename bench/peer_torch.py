#!/usr/bin/python3
"""A PyTorch peer for `sdunet bench`: the SD1.5 UNet (diffusers'
UNet2DConditionModel, SD1.x configuration) written out compactly in plain
torch.nn, with parameter names identical to diffusers' keys, so it loads the
safetensors file of `sdunet synth --config sd15`.

It computes what diffusers 0.25 computes on PyTorch 1.13 (AttnProcessor:
baddbmm + softmax + bmm, full score matrix; GEGLU with exact-erf GELU), in
float32 under torch.no_grad(). It is not diffusers itself (diffusers is not
packaged for Debian), so its output is checked against the golden
tests/data/sd15-64/expected_f64.npy (relative L2) to show it is the same
function.

Usage (system python, Debian's python3-torch; see bench/run_peer_torch.sh):
  /usr/bin/python3 bench/peer_torch.py --weights /tmp/sd15.safetensors \
      [--threads 1,2] [--runs 3] [--warmup 1] [--memory-format contiguous|channels_last|both]

One line per (memory format, threads), in the format of `sdunet bench`'s last line:
  bench: precision=fp32 batch=1 height=64 width=64 threads=N median_s=... min_s=...
         gflops=... peak_rss_mb=... peer=torch-1.13 memory_format=... rel_l2=...
peak_rss_mb is the process's peak so far (getrusage), so with several
configs in one process it is the largest of them: run one config per
process for a per-config figure (run_peer_torch.sh does).
"""
import argparse
import json
import math
import os
import resource
import struct
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# Debian's torch does its float32 matmuls (Linear, bmm) in the system BLAS
# (OpenBLAS, pthread build), whose thread pool torch.set_num_threads does
# not control: set it alongside through the library's own call.
try:
    import ctypes
    _openblas = ctypes.CDLL("libopenblas.so.0")
    _openblas.openblas_get_corename.restype = ctypes.c_char_p
except OSError:
    _openblas = None


def set_threads(n):
    torch.set_num_threads(n)
    if _openblas is not None:
        _openblas.openblas_set_num_threads(n)


def blas_text():
    if _openblas is None:
        return "no OpenBLAS loaded"
    return "OpenBLAS core %s, %d threads" % (_openblas.openblas_get_corename().decode(),
                                             _openblas.openblas_get_num_threads())


HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "tests", "data", "sd15-64")
GFLOP_SD15_64 = 803.3  # spec/unet.md: one forward, batch 1, 64x64, 77 tokens

# ---------------------------------------------------------------- the model


class Resnet(nn.Module):  # ResnetBlock2D
    def __init__(self, cin, cout, temb=1280):
        super().__init__()
        self.norm1 = nn.GroupNorm(32, cin, eps=1e-5)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb, cout)
        self.norm2 = nn.GroupNorm(32, cout, eps=1e-5)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x, temb):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return x + h


class Attention(nn.Module):  # diffusers Attention + AttnProcessor (torch 1.x path)
    def __init__(self, dim, heads, kv_dim=None):
        super().__init__()
        kv_dim = kv_dim or dim
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(kv_dim, dim, bias=False)
        self.to_v = nn.Linear(kv_dim, dim, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim), nn.Dropout(0.0)])

    def forward(self, x, ctx=None):
        ctx = x if ctx is None else ctx
        B, N, C = x.shape
        h = self.heads

        def split(t):  # (B, L, C) -> (B*h, L, C/h)
            return t.reshape(B, -1, h, C // h).permute(0, 2, 1, 3).reshape(B * h, -1, C // h)

        q, k, v = split(self.to_q(x)), split(self.to_k(ctx)), split(self.to_v(ctx))
        s = torch.baddbmm(torch.empty(q.shape[0], q.shape[1], k.shape[1], dtype=q.dtype),
                          q, k.transpose(-1, -2), beta=0, alpha=self.scale)
        p = s.softmax(dim=-1)
        del s
        o = torch.bmm(p, v)
        o = o.reshape(B, h, N, C // h).permute(0, 2, 1, 3).reshape(B, N, C)
        return self.to_out[0](o)


class GEGLU(nn.Module):
    def __init__(self, dim, inner):
        super().__init__()
        self.proj = nn.Linear(dim, inner * 2)

    def forward(self, x):
        hidden, gate = self.proj(x).chunk(2, dim=-1)
        return hidden * F.gelu(gate)


class BasicTransformerBlock(nn.Module):
    def __init__(self, dim, heads, ctx_dim):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, heads, ctx_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = nn.Module()
        self.ff.net = nn.ModuleList([GEGLU(dim, 4 * dim), nn.Dropout(0.0), nn.Linear(4 * dim, dim)])

    def forward(self, x, ctx):
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), ctx) + x
        y = self.norm3(x)
        for m in self.ff.net:
            y = m(y)
        return y + x


class Transformer2D(nn.Module):  # Transformer2DModel, use_linear_projection = False
    def __init__(self, c, heads=8, ctx_dim=768):
        super().__init__()
        self.norm = nn.GroupNorm(32, c, eps=1e-6)
        self.proj_in = nn.Conv2d(c, c, 1)
        self.transformer_blocks = nn.ModuleList([BasicTransformerBlock(c, heads, ctx_dim)])
        self.proj_out = nn.Conv2d(c, c, 1)

    def forward(self, x, ctx):
        B, C, H, W = x.shape
        r = x
        h = self.proj_in(self.norm(x))
        h = h.permute(0, 2, 3, 1).reshape(B, H * W, C)
        h = self.transformer_blocks[0](h, ctx)
        h = h.reshape(B, H, W, C).permute(0, 3, 1, 2)
        if x.is_contiguous(memory_format=torch.channels_last):
            h = h.contiguous(memory_format=torch.channels_last)
        else:
            h = h.contiguous()
        return self.proj_out(h) + r


class Down(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2, padding=1)

    def forward(self, x):
        return self.conv(x)


class Up(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x, size=None):
        if size is None:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        else:
            x = F.interpolate(x, size=size, mode="nearest")
        return self.conv(x)


class TimeEmbedding(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear_1 = nn.Linear(320, 1280)
        self.linear_2 = nn.Linear(1280, 1280)

    def forward(self, x):
        return self.linear_2(F.silu(self.linear_1(x)))


class UNet(nn.Module):  # UNet2DConditionModel, SD1.5 config
    def __init__(self, ch=(320, 640, 1280, 1280), heads=8, ctx_dim=768, layers=2):
        super().__init__()
        self.conv_in = nn.Conv2d(4, ch[0], 3, padding=1)
        self.time_embedding = TimeEmbedding()
        self.down_blocks = nn.ModuleList()
        cin = ch[0]
        for i, c in enumerate(ch):
            b = nn.Module()
            b.resnets = nn.ModuleList([Resnet(cin if j == 0 else c, c) for j in range(layers)])
            if i < 3:
                b.attentions = nn.ModuleList([Transformer2D(c, heads, ctx_dim) for _ in range(layers)])
                b.downsamplers = nn.ModuleList([Down(c)])
            self.down_blocks.append(b)
            cin = c
        self.mid_block = nn.Module()
        self.mid_block.resnets = nn.ModuleList([Resnet(ch[3], ch[3]), Resnet(ch[3], ch[3])])
        self.mid_block.attentions = nn.ModuleList([Transformer2D(ch[3], heads, ctx_dim)])
        rev = list(reversed(ch))
        self.up_blocks = nn.ModuleList()
        prev = rev[0]
        for i, c in enumerate(rev):
            skip_in = rev[min(i + 1, len(ch) - 1)]
            b = nn.Module()
            b.resnets = nn.ModuleList()
            for j in range(layers + 1):
                res_skip = skip_in if j == layers else c
                r_in = prev if j == 0 else c
                b.resnets.append(Resnet(r_in + res_skip, c))
            if i > 0:
                b.attentions = nn.ModuleList([Transformer2D(c, heads, ctx_dim) for _ in range(layers + 1)])
            if i < 3:
                b.upsamplers = nn.ModuleList([Up(c)])
            self.up_blocks.append(b)
            prev = c
        self.conv_norm_out = nn.GroupNorm(32, ch[0], eps=1e-5)
        self.conv_out = nn.Conv2d(ch[0], 4, 3, padding=1)

    @staticmethod
    def time_proj(t, dim=320):
        # diffusers get_timestep_embedding: float32, flip_sin_to_cos, freq_shift 0
        half = dim // 2
        exponent = -math.log(10000) * torch.arange(0, half, dtype=torch.float32) / half
        emb = t[:, None].float() * torch.exp(exponent)[None, :]
        return torch.cat([torch.cos(emb), torch.sin(emb)], dim=-1)

    def forward(self, sample, t, ctx):
        temb = self.time_embedding(self.time_proj(t))
        h = self.conv_in(sample)
        skips = [h]
        for b in self.down_blocks:
            for j, r in enumerate(b.resnets):
                h = r(h, temb)
                if hasattr(b, "attentions"):
                    h = b.attentions[j](h, ctx)
                skips.append(h)
            if hasattr(b, "downsamplers"):
                h = b.downsamplers[0](h)
                skips.append(h)
        h = self.mid_block.resnets[0](h, temb)
        h = self.mid_block.attentions[0](h, ctx)
        h = self.mid_block.resnets[1](h, temb)
        for b in self.up_blocks:
            for j, r in enumerate(b.resnets):
                h = r(torch.cat([h, skips.pop()], dim=1), temb)
                if hasattr(b, "attentions"):
                    h = b.attentions[j](h, ctx)
            if hasattr(b, "upsamplers"):
                size = None if (h.shape[2] * 2 == skips[-1].shape[2] and
                                h.shape[3] * 2 == skips[-1].shape[3]) else skips[-1].shape[2:]
                h = b.upsamplers[0](h, size)
        return self.conv_out(F.silu(self.conv_norm_out(h)))


# ---------------------------------------------------------------- weights

DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": None, "F64": np.float64}


def load_safetensors(model, path):
    """Reads each tensor of the file straight into its parameter (no mapping,
    no second copy of the model): 8-byte LE header length, JSON header, data."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        base = 8 + n
        params = dict(model.named_parameters())
        missing = [k for k in params if k not in header]
        unused = [k for k in header if k != "__metadata__" and k not in params]
        if missing:
            sys.exit("peer_torch: missing in %s: %s" % (path, ", ".join(missing[:10])))
        for name, p in params.items():
            info = header[name]
            if list(info["shape"]) != list(p.shape):
                sys.exit("peer_torch: %s has shape %s, model wants %s" % (name, info["shape"], list(p.shape)))
            a, b = info["data_offsets"]
            f.seek(base + a)
            dst = p.data.numpy().reshape(-1)
            if info["dtype"] == "F32":
                f.readinto(memoryview(dst.view(np.uint8)))
            elif info["dtype"] == "BF16":
                raw = np.frombuffer(f.read(b - a), dtype=np.uint16).astype(np.uint32) << 16
                dst[:] = raw.view(np.float32)
            else:
                dst[:] = np.frombuffer(f.read(b - a), dtype=DTYPES[info["dtype"]]).astype(np.float32)
    return len(params), unused


# ---------------------------------------------------------------- driver


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", default="/tmp/sd15.safetensors")
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--memory-format", default="both", choices=["contiguous", "channels_last", "both"])
    ap.add_argument("--profile", action="store_true",
                    help="after the timed runs of each config, one more forward under "
                         "torch.autograd.profiler: time by op, to stderr")
    args = ap.parse_args()

    ver = ".".join(torch.__version__.split(".")[:2])
    t0 = time.perf_counter()
    with torch.no_grad():
        model = UNet().eval()
        n_params, unused = load_safetensors(model, args.weights)
    load_s = time.perf_counter() - t0
    sample = torch.from_numpy(np.load(os.path.join(DATA, "sample.npy")).astype(np.float32))
    ctx = torch.from_numpy(np.load(os.path.join(DATA, "context.npy")).astype(np.float32))
    expected = np.load(os.path.join(DATA, "expected_f64.npy")).astype(np.float64)
    t = torch.tensor([999.0])
    print("peer_torch: torch %s, %d tensors (%.1fM parameters), load %.2f s, %d unused in file; "
          "mkldnn (convs)=%s, BLAS (matmuls)=%s" % (torch.__version__, n_params, sum(p.numel() for p in model.parameters()) / 1e6,
                             load_s, len(unused), torch.backends.mkldnn.is_available(),
                             blas_text()), flush=True)

    formats = ["contiguous", "channels_last"] if args.memory_format == "both" else [args.memory_format]
    for fmt in formats:
        mf = torch.channels_last if fmt == "channels_last" else torch.contiguous_format
        model = model.to(memory_format=mf)
        x = sample.contiguous(memory_format=mf)
        for nt in [int(s) for s in args.threads.split(",") if s]:
            set_threads(nt)
            times = []
            with torch.no_grad():
                for i in range(args.warmup + args.runs):
                    s = time.perf_counter()
                    out = model(x, t, ctx)
                    dt = time.perf_counter() - s
                    if i >= args.warmup:
                        times.append(dt)
                    print("peer_torch: %s threads=%d %s %d: %.3f s" %
                          (fmt, nt, "run" if i >= args.warmup else "warm-up",
                           i - args.warmup + 1 if i >= args.warmup else i + 1, dt),
                          file=sys.stderr, flush=True)
            if args.profile:
                with torch.no_grad(), torch.autograd.profiler.profile() as prof:
                    model(x, t, ctx)
                print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12),
                      file=sys.stderr, flush=True)
            o = out.contiguous().numpy().astype(np.float64)
            rel = float(np.linalg.norm(o - expected) / np.linalg.norm(expected))
            times.sort()
            r = len(times)
            med = times[r // 2] if r % 2 else 0.5 * (times[r // 2 - 1] + times[r // 2])
            print("bench: precision=fp32 batch=1 height=64 width=64 threads=%d median_s=%.3f "
                  "min_s=%.3f gflops=%.1f peak_rss_mb=%.0f peer=torch-%s memory_format=%s rel_l2=%.2e"
                  % (nt, med, times[0], GFLOP_SD15_64 / med, peak_rss_mb(), ver, fmt, rel), flush=True)


if __name__ == "__main__":
    main()
