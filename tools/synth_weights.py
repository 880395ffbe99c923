#!/usr/bin/env python3
"""Deterministic synthetic weights and inputs, version 1.

Every value depends only on the tensor's name and shape (see the project's
synthetic-weights specification): FNV-1a 64 of the name seeds a splitmix64
stream, one 24-bit draw per element, scaled by s (in double), rounded to
float32, then offset by c in float32.

    synth(name, shape) -> float32 ndarray
    scale_offset(name, shape) -> (s, c)

`python tools/synth_weights.py --selftest [VECTORS.json]` checks the
generator against the published test vectors (bit patterns and sums).
"""

import json
import math
import os
import sys

import numpy as np

FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3
MASK64 = (1 << 64) - 1
GOLDEN = np.uint64(0x9E3779B97F4A7C15)
MIX1 = np.uint64(0xBF58476D1CE4E5B9)
MIX2 = np.uint64(0x94D049BB133111EB)

# Inputs: name -> (s, c). Shapes are free; the name picks the scale.
INPUT_KINDS = {
    "input.sample": (math.sqrt(3.0), 0.0),  # UNet latent input (B, 4, H, W)
    "input.encoder_hidden_states": (1.0, 0.0),  # UNet context (B, L, D)
    "input.latent": (math.sqrt(3.0), 0.0),  # VAE decoder input (B, 4, h, w)
    "input.image": (1.0, 0.0),  # VAE encoder input (B, 3, H, W)
    "input.posterior_noise": (math.sqrt(3.0), 0.0),  # (B, 4, h, w)
}

CHUNK = 1 << 22  # elements generated per step (bounded memory for 50M-element embeddings)


def fnv1a64(name):
    h = FNV_OFFSET
    for b in name.encode("utf-8"):
        h ^= b
        h = (h * FNV_PRIME) & MASK64
    return h


def scale_offset(name, shape):
    """(s, c) of the specification's table for a tensor or input."""
    if name in INPUT_KINDS:
        return INPUT_KINDS[name]
    if name.startswith("input."):
        raise ValueError(f"unknown input kind {name!r}")
    shape = tuple(int(d) for d in shape)
    if len(shape) >= 2:
        fan_in = 1
        for d in shape[1:]:
            fan_in *= d
        return 1.0 / math.sqrt(float(fan_in)), 0.0
    if len(shape) == 1:
        if name.endswith(".weight"):
            return 0.1, 1.0
        if name.endswith(".bias"):
            return 0.1, 0.0
    raise ValueError(f"no synthetic rule for {name!r} with shape {shape}")


def _uniform(h, start, count):
    """r in [-1, 1) as float64 for element indices start .. start+count-1."""
    i1 = np.arange(start + 1, start + count + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = np.uint64(h) + i1 * GOLDEN
        x = (x ^ (x >> np.uint64(30))) * MIX1
        x = (x ^ (x >> np.uint64(27))) * MIX2
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(40)).astype(np.float64) * (2.0**-23) - 1.0


def synth(name, shape):
    """The float32 values of tensor NAME with SHAPE, row-major."""
    shape = tuple(int(d) for d in shape)
    s, c = scale_offset(name, shape)
    n = 1
    for d in shape:
        n *= d
    h = fnv1a64(name)
    out = np.empty(n, dtype=np.float32)
    s64 = np.float64(s)
    c32 = np.float32(c)
    for start in range(0, n, CHUNK):
        count = min(CHUNK, n - start)
        t = _uniform(h, start, count) * s64  # one double multiply
        v = t.astype(np.float32)  # round to nearest even
        if c != 0.0:
            v += c32  # float32 add
        out[start : start + count] = v
    return out.reshape(shape)


def synth_state_dict(shapes):
    """{name: synth(name, shape)} for a mapping of names to shapes."""
    return {k: synth(k, v) for k, v in shapes.items()}


def _hex32(v):
    return "0x%08x" % int(np.float32(v).view(np.uint32))


def selftest(path):
    with open(path, encoding="utf-8") as f:
        vectors = json.load(f)["vectors"]
    bad = 0
    for vec in vectors:
        name, shape = vec["name"], vec["shape"]
        label = f"{name} {shape}"
        a = synth(name, shape)
        s, c = scale_offset(name, shape)
        checks = [
            ("fnv1a64", "0x%016x" % fnv1a64(name), vec["fnv1a64"]),
            ("s", float(s).hex(), float.fromhex(vec["s_hex"]).hex()),
            ("c", c, vec["c"]),
            ("n", a.size, vec["n"]),
            ("first8", [_hex32(x) for x in a.ravel()[:8]], vec["first8_hex"]),
            ("last", _hex32(a.ravel()[-1]), vec["last_hex"]),
        ]
        acc = 0.0
        for x in a.ravel().astype(np.float64).tolist():
            acc += x
        checks.append(("sum_sequential", acc.hex(), float(vec["sum_f64_sequential"]).hex()))
        checks.append(("sum_fsum", math.fsum(a.ravel().astype(np.float64).tolist()), vec["sum_f64_fsum"]))
        for what, got, want in checks:
            if got != want:
                print(f"FAIL - {label}: {what}: got {got}, want {want}")
                bad += 1
        if not any(g != w for _, g, w in checks):
            print(f"ok - {label}")
    print(f"{len(vectors)} vectors, {bad} mismatches")
    return bad == 0


def _default_vectors():
    here = os.path.dirname(os.path.abspath(__file__))
    return os.path.join(here, "..", "tests", "data", "synth-vectors.json")


if __name__ == "__main__":
    args = sys.argv[1:]
    if args and args[0] == "--selftest":
        path = args[1] if len(args) > 1 else _default_vectors()
        sys.exit(0 if selftest(path) else 1)
    print(__doc__.strip())
    sys.exit(2)
