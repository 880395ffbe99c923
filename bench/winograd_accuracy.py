#!/usr/bin/env python3
"""Float32 rounding error of one 3x3 convolution computed directly and by
Winograd F(2x2,3x3), F(3x3,3x3) and F(4x4,3x3), against a float64 direct
convolution.

Why: the model must stay within relative L2 2e-6 of the float64 reference,
so a Winograd variant whose single-convolution error is already near that bar
cannot be used. Run: /usr/bin/python3 bench/winograd_accuracy.py (numpy).
"""
import numpy as np

F32 = np.float32


def direct(x, w):
    """x (H+2, W+2, C) zero-padded, w (3, 3, C, N); in x's dtype."""
    H, W = x.shape[0] - 2, x.shape[1] - 2
    out = np.zeros((H, W, w.shape[3]), x.dtype)
    for i in range(3):
        for j in range(3):
            out += x[i:i + H, j:j + W, :] @ w[i, j]
    return out


def winograd(x, w, BT, G, AT, m, u64=False):
    """F(m x m, 3x3) with every step rounded to float32 (U in float64 first
    when u64)."""
    a = m + 2
    H, W = x.shape[0] - 2, x.shape[1] - 2
    U = np.einsum('ik,klcn,jl->ijcn', G, w, G)  # float64, then rounded once
    if not u64:
        U = np.einsum('ik,klcn->ilcn', G.astype(F32), w.astype(F32)).astype(F32)
        U = np.einsum('ilcn,jl->ijcn', U, G.astype(F32)).astype(F32)
    U = U.astype(F32)
    BT, AT, x = BT.astype(F32), AT.astype(F32), x.astype(F32)
    out = np.zeros((H, W, w.shape[3]), F32)
    for ty in range(H // m):
        for tx in range(W // m):
            d = x[ty * m:ty * m + a, tx * m:tx * m + a, :]
            V = np.einsum('ik,klc->ilc', BT, d).astype(F32)
            V = np.einsum('ilc,jl->ijc', V, BT).astype(F32)
            M = np.einsum('ijc,ijcn->ijn', V, U).astype(F32)
            Y = np.einsum('ik,kln->iln', AT, M).astype(F32)
            out[ty * m:ty * m + m, tx * m:tx * m + m] = np.einsum('iln,jl->ijn', Y, AT)
    return out


def toom_cook(m, points):
    """B^T, G, A^T of F(m, 3) on the finite points plus infinity."""
    n = m + 2
    p = np.array(points, float)
    AT, G, BT = np.zeros((m, n)), np.zeros((n, 3)), np.zeros((n, n))
    for k, pk in enumerate(p):
        AT[:, k] = pk ** np.arange(m)
        G[k] = pk ** np.arange(3) / np.prod([pk - q for j, q in enumerate(p) if j != k])
        BT[k, :n - 1] = np.poly([q for j, q in enumerate(p) if j != k])[::-1]
    AT[m - 1, n - 1] = 1
    G[n - 1] = [0, 0, 1]
    BT[n - 1] = np.poly(p)[::-1]
    return BT, G, AT


def table(title, channels, H, N, methods):
    """One row per input channel count: the relative L2 of each method
    (x, w -> output in float32) against the float64 direct convolution of
    an H x H image of N(0,1) values, N outputs, weights of std 1/sqrt(9 C)."""
    rng = np.random.default_rng(0)
    print(title)
    for C in channels:
        x = np.zeros((H + 2, H + 2, C))
        x[1:-1, 1:-1] = rng.standard_normal((H, H, C))
        w = rng.standard_normal((3, 3, C, N)) / np.sqrt(9 * C)
        x, w = x.astype(F32).astype(float), w.astype(F32).astype(float)
        ref = direct(x, w)
        errs = [np.linalg.norm(m(x, w) - ref) / np.linalg.norm(ref) for m in methods]
        print('%-5d ' % C + '  '.join('%.2e' % e for e in errs))


def main():
    f2 = toom_cook(2, [0, 1, -1])
    f4 = toom_cook(4, [0, 1, -1, 2, -2])
    f4h = toom_cook(4, [0, 1, -1, 0.5, -0.5])
    f3 = [toom_cook(3, [0, 1, -1, q]) for q in (2, 0.5, -2)]

    def direct32(x, w):
        return direct(x.astype(F32), w.astype(F32))
    table('Cin   direct    F(2x2)    F(4x4)    F(4x4) U64  F(4x4) +-1/2', (320, 640), 16, 64,
          [direct32, lambda x, w: winograd(x, w, *f2, 2), lambda x, w: winograd(x, w, *f4, 4),
           lambda x, w: winograd(x, w, *f4, 4, u64=True), lambda x, w: winograd(x, w, *f4h, 4)])
    # F(3x3, 3x3) on a 12x12 image (whole 3x3 tiles), three point sets
    table('\nCin   direct    F(2x2)    F(3x3) 2  F(3x3) 1/2  F(3x3) -2', (320, 640, 1280), 12, 32,
          [direct32, lambda x, w: winograd(x, w, *f2, 2)] +
          [lambda x, w, f=f: winograd(x, w, *f, 3) for f in f3])


if __name__ == '__main__':
    main()
