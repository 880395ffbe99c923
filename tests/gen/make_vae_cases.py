#!/usr/bin/env python3
"""Golden case for the VAE (diffusers AutoencoderKL), made with the upstream
library in float64 on synthetic weights.

Run inside the reference environment (tools/ref-env.sh):

    .venv-ref/bin/python tests/gen/make_vae_cases.py [--out DIR] [--crosscheck DIR]

Writes DIR (default tests/data/vae/vae-gen-small): a small AutoencoderKL
(2 levels, 8 GroupNorm groups, so 2 and 4 channels per group) decoding a
batch of 2 non-square latents (40 high, 56 wide) and encoding a batch of 2
non-square images, with the 8-bit image the Stable Diffusion pipelines
produce. --crosscheck DIR runs the same set-up on the published small case
DIR/vae-tiny (its weight file) and records the agreement.
Everything runs offline; the configuration is built in code.
"""

import argparse
import json
import os
import platform
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tools"))

import synth_weights  # noqa: E402

CONFIG = {
    "act_fn": "silu",
    "block_out_channels": [16, 32],
    "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
    "force_upcast": True,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "out_channels": 3,
    "sample_size": 32,
    "scaling_factor": 0.18215,
    "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"],
}
BATCH = 2
LATENT_HW = (40, 56)  # height, width


def rel_l2(a, b):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm((a - b).ravel()) / np.linalg.norm(b.ravel()))


def stats(x):
    x = np.asarray(x, dtype=np.float64)
    return {
        "l2_norm_f64": float(np.linalg.norm(x.ravel())),
        "max_abs_f64": float(np.abs(x).max()),
        "mean_f64": float(x.mean()),
        "std_f64": float(x.std()),
        "min_f64": float(x.min()),
        "max_f64": float(x.max()),
        "first8": [float(v) for v in x.ravel()[:8]],
    }


def build_vae(config, weights=None):
    import torch
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(**config)
    vae.eval()
    sd = vae.state_dict()
    if weights is None:
        weights = {k: synth_weights.synth(k, tuple(t.shape)) for k, t in sd.items()}
    assert sorted(weights) == sorted(sd), "state_dict names differ"
    with torch.no_grad():
        for k, t in sd.items():
            t.copy_(torch.from_numpy(np.asarray(weights[k], dtype=np.float32)))
    return vae, weights


def run(vae, latent, image, noise):
    """decode, postprocess to 8 bits, and encode, in the VAE's dtype."""
    import torch
    from diffusers.image_processor import VaeImageProcessor

    dtype = next(vae.parameters()).dtype
    sf = vae.config.scaling_factor
    f = 2 ** (len(vae.config.block_out_channels) - 1)
    with torch.no_grad():
        z = torch.from_numpy(latent).to(dtype)
        dec = vae.decode(z / sf, return_dict=False)[0]
        proc = VaeImageProcessor(vae_scale_factor=f)
        pil = proc.postprocess(dec, output_type="pil", do_denormalize=[True] * dec.shape[0])
        u8 = np.stack([np.asarray(im) for im in pil])
        post = vae.encode(torch.from_numpy(image).to(dtype)).latent_dist
        mean = post.mean
        logvar = post.logvar
        sample = post.mean + post.std * torch.from_numpy(noise).to(dtype)
        moments = vae.quant_conv(vae.encoder(torch.from_numpy(image).to(dtype)))
        raw_logvar = torch.chunk(moments, 2, dim=1)[1]
    return {
        "decode": dec.numpy(),
        "decode_u8": u8,
        "encode_mean": mean.numpy(),
        "encode_logvar": logvar.numpy(),
        "encode_latent_mode": (mean * sf).numpy(),
        "encode_latent_sample": (sample * sf).numpy(),
        "_raw_logvar": raw_logvar.numpy(),
    }


def boundary_distance(x64):
    """Distance of the float32 product clamp(x/2+0.5,0,1)*255 to the nearest
    rounding tie, in 8-bit levels."""
    v = np.clip(x64 / 2 + 0.5, 0, 1).astype(np.float32) * np.float32(255)
    v = v.astype(np.float64)
    return np.abs(v - np.floor(v) - 0.5)


def crosscheck(case_dir):
    from safetensors.numpy import load_file

    with open(os.path.join(case_dir, "config.json"), encoding="utf-8") as f:
        cfg = {k: v for k, v in json.load(f).items() if not k.startswith("_")}
    weights = load_file(os.path.join(case_dir, "weights.safetensors"))
    synth_equal = all(np.array_equal(v, synth_weights.synth(k, v.shape)) for k, v in weights.items())
    vae, _ = build_vae(cfg, weights)
    vae.double()
    latent = np.load(os.path.join(case_dir, "latent.npy"))
    image = np.load(os.path.join(case_dir, "image.npy"))
    noise = np.load(os.path.join(case_dir, "noise.npy"))
    out = run(vae, latent, image, noise)
    res = {"case": os.path.basename(os.path.normpath(case_dir)), "weights_equal_to_synth": bool(synth_equal)}
    for k in ("decode", "encode_mean", "encode_logvar", "encode_latent_sample"):
        res[f"rel_l2_{k}"] = rel_l2(out[k], np.load(os.path.join(case_dir, f"{k}_f64.npy")))
    res["decode_u8_values_differing"] = int(np.count_nonzero(out["decode_u8"] != np.load(os.path.join(case_dir, "decode_u8.npy"))))
    return res


def main():
    import diffusers
    import safetensors
    import torch
    from safetensors.torch import save_file

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "data", "vae", "vae-gen-small"))
    ap.add_argument("--crosscheck", metavar="DIR", help="folder holding the published vae-tiny case (optional)")
    args = ap.parse_args()
    torch.set_num_threads(2)

    f = 2 ** (len(CONFIG["block_out_channels"]) - 1)
    h, w = LATENT_HW
    lshape = (BATCH, CONFIG["latent_channels"], h, w)
    ishape = (BATCH, CONFIG["in_channels"], h * f, w * f)
    latent = synth_weights.synth("input.latent", lshape)
    image = synth_weights.synth("input.image", ishape)
    noise = synth_weights.synth("input.posterior_noise", lshape)

    vae, weights = build_vae(CONFIG)
    n_params = sum(int(v.size) for v in weights.values())
    vae.double()
    t0 = time.time()
    ref = run(vae, latent, image, noise)
    f64_s = time.time() - t0
    vae.float()
    got32 = run(vae, latent, image, noise)

    os.makedirs(args.out, exist_ok=True)
    vae.save_config(args.out)  # config.json, diffusers' own serialisation
    save_file(
        {k: torch.from_numpy(np.ascontiguousarray(weights[k])) for k in sorted(weights)},
        os.path.join(args.out, "weights.safetensors"),
        metadata={"format": "pt"},
    )
    for name, arr in (("latent", latent), ("image", image), ("noise", noise)):
        np.save(os.path.join(args.out, f"{name}.npy"), arr)
    for k in ("decode", "encode_mean", "encode_logvar", "encode_latent_mode", "encode_latent_sample"):
        np.save(os.path.join(args.out, f"{k}.npy"), ref[k].astype(np.float32))
    np.save(os.path.join(args.out, "decode_u8.npy"), ref["decode_u8"])

    d = boundary_distance(ref["decode"])
    u8_32 = got32["decode_u8"]
    differ = u8_32 != ref["decode_u8"]
    d_nhwc = d.transpose(0, 2, 3, 1)

    def out_entry(k, what):
        return dict({"file": f"{k}.npy", "what": what, "dtype": "float32 (rounded from the float64 result)", "shape": list(ref[k].shape)}, **stats(ref[k]))

    manifest = {
        "case": "vae-gen-small",
        "model": f"diffusers AutoencoderKL ({diffusers.__version__}), small config: 2 levels, channels (16, 32), 1 resnet per level (+1 in the decoder), GroupNorm with 8 groups (2 and 4 channels per group), mid-block attention over {h * w} positions",
        "config": "config.json",
        "scaling_factor": CONFIG["scaling_factor"],
        "vae_scale_factor": f,
        "weights_spec": "synthetic-weights specification version 1 (tools/synth_weights.py), NAME = the diffusers AutoencoderKL state_dict key",
        "weights": "weights.safetensors",
        "weight_files": {"weights.safetensors": "diffusers AutoencoderKL keys, F32, __metadata__ {format: pt}, tensors sorted by name; equal to the synthetic values"},
        "n_weight_tensors": len(weights),
        "n_params": n_params,
        "inputs": {
            "latent": {"file": "latent.npy", "synth_name": "input.latent", "shape": list(lshape), "dtype": "float32", "role": "UNet-space latent, batch of 2, 40 high x 56 wide; the decoder input is latent / scaling_factor"},
            "image": {"file": "image.npy", "synth_name": "input.image", "shape": list(ishape), "dtype": "float32", "role": "image in [-1, 1), NCHW, R G B"},
            "noise": {"file": "noise.npy", "synth_name": "input.posterior_noise", "shape": list(lshape), "dtype": "float32", "role": "stands in for randn in the posterior's sample()"},
            "note": "each input is generated over its whole (batch included) shape, row-major",
        },
        "decode": {
            "semantics": "vae.decode(latent / scaling_factor).sample in float64, NCHW, not clamped",
            "expected": out_entry("decode", "decoded image"),
            "expected_u8": {
                "file": "decode_u8.npy",
                "shape": list(ref["decode_u8"].shape),
                "dtype": "uint8",
                "layout": "NHWC, RGB",
                "semantics": "diffusers VaeImageProcessor.postprocess(decode, output_type='pil') on the float64 decode, np.asarray of each PIL image: (x/2+0.5).clamp(0,1) in float64, to float32, *255 in float32, numpy round (half to even), uint8",
                "values_with_boundary_distance_below_1e-4": int(np.count_nonzero(d < 1e-4)),
                "values_with_boundary_distance_below_1e-3": int(np.count_nonzero(d < 1e-3)),
                "values_with_boundary_distance_below_1e-2": int(np.count_nonzero(d < 1e-2)),
                "fraction_0": float(np.mean(ref["decode_u8"] == 0)),
                "fraction_255": float(np.mean(ref["decode_u8"] == 255)),
            },
            "float32_pytorch": {
                "rel_l2": rel_l2(got32["decode"], ref["decode"]),
                "max_abs": float(np.abs(got32["decode"].astype(np.float64) - ref["decode"]).max()),
                "u8_values_differing": int(np.count_nonzero(differ)),
                "u8_max_abs_diff": int(np.abs(u8_32.astype(int) - ref["decode_u8"].astype(int)).max()),
                "max_boundary_distance_where_differing": float(d_nhwc[differ].max()) if differ.any() else None,
            },
        },
        "encode": {
            "semantics": "posterior = vae.encode(image).latent_dist in float64: mean, logvar = chunk(quant_conv(encoder(image)), 2, dim=1), logvar clamped to [-30, 20]; latent_mode = scaling_factor * mean; latent_sample = scaling_factor * (mean + exp(0.5 * logvar) * noise)",
            "mean": out_entry("encode_mean", "posterior mean"),
            "logvar": out_entry("encode_logvar", "posterior logvar after the clamp"),
            "latent_mode": out_entry("encode_latent_mode", "scaling_factor * mean"),
            "latent_sample": out_entry("encode_latent_sample", "scaling_factor * (mean + std * noise)"),
            "logvar_before_clamp_range": [float(ref["_raw_logvar"].min()), float(ref["_raw_logvar"].max())],
            "float32_pytorch": {k: {"rel_l2": rel_l2(got32[f"encode_{k}"], ref[f"encode_{k}"])} for k in ("mean", "logvar", "latent_mode", "latent_sample")},
        },
        "float32_pytorch_what": "the same model with vae.float() and float32 inputs, rel L2 ||a-b||/||b|| against the float64 result",
        "compute": {"implementation": "diffusers AutoencoderKL(**config), vae.double(), default attention processor", "float64_seconds": round(f64_s, 2), "threads": 2},
        "versions": {
            "diffusers": diffusers.__version__,
            "torch": torch.__version__,
            "numpy": np.__version__,
            "safetensors": safetensors.__version__,
            "python": platform.python_version(),
        },
        "generator": "tests/gen/make_vae_cases.py",
    }
    if args.crosscheck:
        cc = crosscheck(os.path.join(args.crosscheck, "vae-tiny"))
        manifest["cross_check_small"] = dict(
            {"what": "this generator's set-up (diffusers AutoencoderKL in float64, the same decode/postprocess/encode calls) run on a published small case made by a separate pipeline, with that case's weight file and inputs: rel L2 to its float64 outputs"},
            **cc,
        )
        print(f"cross-check {cc}")
    with open(os.path.join(args.out, "manifest.json"), "w", encoding="utf-8") as fh:
        json.dump(manifest, fh, indent=1)
        fh.write("\n")
    print(
        f"wrote {args.out}: f32 vs f64 decode {manifest['decode']['float32_pytorch']['rel_l2']:.2e},"
        f" mean {manifest['encode']['float32_pytorch']['mean']['rel_l2']:.2e},"
        f" u8 differing {manifest['decode']['float32_pytorch']['u8_values_differing']}; f64 {f64_s:.1f}s"
    )


if __name__ == "__main__":
    main()
