"""Model construction and shared helpers for the peer benchmarks (bench/peer_*.py,
driven by bench/run_peers.sh).

The peers run diffusers' own UNet2DConditionModel (the sd15 preset) and
AutoencoderKL decoder (Stable Diffusion's VAE) on the synthetic weights of
tools/synth_weights.py, the same values `sdunet --synthetic sd15` generates.
Everything derived from them (the weights as safetensors, the ONNX exports)
lives in a cache folder outside the repository, made once:

    .venv-ref/bin/python bench/peer_models.py --cache /tmp/sdunet-peers [--only unet|vae]

writes CACHE/unet.safetensors, CACHE/vae.safetensors (diffusers state dicts),
CACHE/unet/model.onnx and CACHE/vae_decoder/model.onnx (+ external data).
Exports take the batch (UNet) and the latent height and width (VAE) as dynamic
axes so that one file serves the timing shapes and the golden cases.
"""

import argparse
import json
import os
import resource
import statistics
import sys
import time

sys.dont_write_bytecode = True  # no bench/__pycache__ in the tree
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))

import numpy as np  # noqa: E402

import synth_weights  # noqa: E402

DEFAULT_CACHE = os.environ.get("PEER_CACHE", "/tmp/sdunet-peers")
UNET_CASE = os.path.join(ROOT, "tests", "data", "sd15-64")
VAE_CASE = os.path.join(ROOT, "tests", "data", "vae", "vae-sd-32")
OPSET = 17


def _config(path):
    with open(path, encoding="utf-8") as f:
        return {k: v for k, v in json.load(f).items() if not k.startswith("_")}


def unet_config():
    """The sd15 preset, as the golden case sd15-64 records it."""
    return _config(os.path.join(UNET_CASE, "config.json"))


def vae_config():
    """Stable Diffusion's AutoencoderKL: channels 128/256/512/512, 2 layers per
    block, 4 latent channels, 32 norm groups, scaling 0.18215."""
    cfg = _config(os.path.join(VAE_CASE, "config.json"))
    assert cfg["block_out_channels"] == [128, 256, 512, 512] and cfg["layers_per_block"] == 2
    assert cfg["latent_channels"] == 4 and cfg["norm_num_groups"] == 32
    assert cfg["scaling_factor"] == 0.18215
    return cfg


def _build(cls, config, weights_path):
    """cls(**config) in float32, eval mode, holding the synthetic weights: read
    from weights_path when cached (the model is built on the meta device and
    takes the loaded tensors as they are, so the weights are in memory once),
    else generated and then cached there."""
    import torch
    from safetensors.torch import load_file

    if weights_path and os.path.exists(weights_path):
        with torch.device("meta"):
            model = cls(**config)
        w = load_file(weights_path)
        sd = model.state_dict()
        assert sorted(w) == sorted(sd), "cached weights %s do not match the model" % weights_path
        model.load_state_dict(w, strict=True, assign=True)
        del w
        for n, t in list(model.named_parameters()) + list(model.named_buffers()):
            assert not t.is_meta, "%s was not loaded" % n
        return model.float().eval()
    return _fill(cls(**config).float().eval(), weights_path)


def _fill(model, weights_path):
    """Copies synthetic weights into a freshly built model and caches them as
    safetensors."""
    import torch
    from safetensors.torch import save_file

    sd = model.state_dict()
    w = {}
    with torch.no_grad():
        for k, t in sd.items():
            v = torch.from_numpy(synth_weights.synth(k, tuple(t.shape)))
            t.copy_(v)
            w[k] = v
    if weights_path:
        os.makedirs(os.path.dirname(weights_path), exist_ok=True)
        tmp = weights_path + ".tmp"
        save_file(w, tmp)
        os.replace(tmp, weights_path)
    return model


def build_unet(cache=DEFAULT_CACHE):
    """diffusers UNet2DConditionModel (sd15 preset) in float32, eval mode,
    with its default attention processor."""
    from diffusers import UNet2DConditionModel

    return _build(UNet2DConditionModel, unet_config(),
                  os.path.join(cache, "unet.safetensors") if cache else None)


def build_vae(cache=DEFAULT_CACHE):
    """diffusers AutoencoderKL (SD's VAE) in float32, eval mode."""
    from diffusers import AutoencoderKL

    return _build(AutoencoderKL, vae_config(),
                  os.path.join(cache, "vae.safetensors") if cache else None)


class UNetWrap:
    """Positional forward for export: (sample, timestep (B,), context) -> eps."""

    @staticmethod
    def make(unet):
        import torch

        class W(torch.nn.Module):
            def __init__(self, u):
                super().__init__()
                self.u = u

            def forward(self, sample, timestep, encoder_hidden_states):
                return self.u(sample, timestep, encoder_hidden_states, return_dict=False)[0]

        return W(unet).eval()


def vae_decoder_module(vae):
    """latent as the sampler returns it -> image: decoder(latent / scaling_factor)
    (post_quant_conv included), as the pipelines and `sdunet decode` do."""
    import torch

    class D(torch.nn.Module):
        def __init__(self, v):
            super().__init__()
            self.v = v
            self.sf = float(v.config.scaling_factor)

        def forward(self, latent):
            return self.v.decode(latent / self.sf, return_dict=False)[0]

    return D(vae).eval()


def onnx_path(cache, what):
    return os.path.join(cache, {"unet": "unet", "vae": "vae_decoder"}[what], "model.onnx")


def export(cache, what):
    """Exports the model to ONNX once (skipped when the file is there)."""
    import torch

    out = onnx_path(cache, what)
    if os.path.exists(out):
        print("peer_models: %s exists" % out, flush=True)
        return out
    os.makedirs(os.path.dirname(out), exist_ok=True)
    t0 = time.perf_counter()
    if what == "unet":
        mod = UNetWrap.make(build_unet(cache))
        args = (
            torch.zeros(1, 4, 64, 64),
            torch.tensor([999.0]),
            torch.zeros(1, 77, 768),
        )
        names = ["sample", "timestep", "encoder_hidden_states"]
        dyn = {"sample": {0: "batch"}, "timestep": {0: "batch"},
               "encoder_hidden_states": {0: "batch"}, "out": {0: "batch"}}
    else:
        mod = vae_decoder_module(build_vae(cache))
        args = (torch.zeros(1, 4, 64, 64),)
        names = ["latent"]
        dyn = {"latent": {0: "batch", 2: "h", 3: "w"}, "out": {0: "batch", 2: "H", 3: "W"}}
    print("peer_models: %s built in %.1f s, exporting..." % (what, time.perf_counter() - t0), flush=True)
    tmp_dir = os.path.dirname(out) + ".tmp"
    os.makedirs(tmp_dir, exist_ok=True)
    tmp = os.path.join(tmp_dir, "model.onnx")
    t0 = time.perf_counter()
    with torch.inference_mode(False), torch.no_grad():
        torch.onnx.export(mod, args, tmp, input_names=names, output_names=["out"],
                          dynamic_axes=dyn, opset_version=OPSET, do_constant_folding=True)
    # One external data file beside the graph instead of one per tensor (the
    # UNet is over protobuf's 2 GB limit; the VAE is stored the same way).
    import onnx

    m = onnx.load(tmp, load_external_data=True)
    onnx.save_model(m, out, save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.onnx.data", size_threshold=1024)
    del m
    for f in os.listdir(tmp_dir):
        os.remove(os.path.join(tmp_dir, f))
    os.rmdir(tmp_dir)
    print("peer_models: torch %s, opset %d, wrote %s in %.1f s" %
          (torch.__version__, OPSET, out, time.perf_counter() - t0), flush=True)
    return out


# ---- inputs, golden cases, timing ----

def unet_inputs(batch, h=64, w=64, ctx_len=77):
    """The synthetic inputs of `sdunet bench --cfg` (sample, timesteps,
    context): a batch as classifier-free guidance runs it, row 0 of the
    synthetic sample and timestep 999 in every row, a context per row."""
    s = synth_weights.synth("input.sample", (batch, 4, h, w))
    s = np.ascontiguousarray(np.broadcast_to(s[:1], s.shape))
    c = synth_weights.synth("input.encoder_hidden_states", (batch, ctx_len, 768))
    t = np.full((batch,), 999.0, dtype=np.float32)
    return s, t, c


def unet_golden():
    """(sample, timestep (1,), context, expected float64) of the sd15-64 case."""
    with open(os.path.join(UNET_CASE, "manifest.json"), encoding="utf-8") as f:
        man = json.load(f)
    s = np.load(os.path.join(UNET_CASE, "sample.npy")).astype(np.float32)
    c = np.load(os.path.join(UNET_CASE, "context.npy")).astype(np.float32)
    t = np.array(man["inputs"]["timesteps_per_row"], dtype=np.float32)
    return s, t, c, np.load(os.path.join(UNET_CASE, "expected_f64.npy"))


def vae_latent(batch=1, h=64, w=64):
    return synth_weights.synth("input.latent", (batch, 4, h, w))


def vae_golden():
    """(latent (1,4,32,32), expected float64 image (1,3,256,256)) of vae-sd-32."""
    return (np.load(os.path.join(VAE_CASE, "latent.npy")).astype(np.float32),
            np.load(os.path.join(VAE_CASE, "decode_f64.npy")))


def rel_l2(out, ref):
    a = np.asarray(out, dtype=np.float64).ravel()
    b = np.asarray(ref, dtype=np.float64).ravel()
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def time_runs(fn, runs, warmup):
    """Median and minimum seconds of `runs` calls after `warmup` calls."""
    times = []
    for i in range(warmup + runs):
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        if i >= warmup:
            times.append(dt)
        print("  %s %d: %.3f s" % ("run" if i >= warmup else "warm-up", i + 1, dt),
              file=sys.stderr, flush=True)
    return statistics.median(times), min(times)


def peer_args(description):
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--workload", choices=["unet", "vae"], required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--check", action="store_true",
                    help="also run the golden case once and report rel_l2 vs its float64 output")
    ap.add_argument("--cache", default=DEFAULT_CACHE)
    return ap.parse_args()


def report(engine, version, a, median, mn, rss, rel, extra=""):
    """The one machine-readable line run_peers.sh reads."""
    print("peer: engine=%s version=%s workload=%s batch=%d threads=%d median_s=%.4f min_s=%.4f "
          "peak_rss_mb=%.0f rel_l2=%s%s" % (engine, version, a.workload, a.batch, a.threads, median,
                                            mn, rss, ("%.3g" % rel) if rel is not None else "-",
                                            extra), flush=True)


def main():
    ap = argparse.ArgumentParser(description="Makes the peers' cached weights and ONNX exports.")
    ap.add_argument("--cache", default=DEFAULT_CACHE)
    ap.add_argument("--only", choices=["unet", "vae"])
    a = ap.parse_args()
    for what in ([a.only] if a.only else ["vae", "unet"]):
        export(a.cache, what)


if __name__ == "__main__":
    main()
