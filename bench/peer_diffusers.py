"""PyTorch eager peer: diffusers' UNet2DConditionModel / AutoencoderKL decoder
in float32 on the synthetic weights (bench/peer_models.py), with
torch.set_num_threads(T) and torch.inference_mode(). Prints one line:

    peer: engine=torch version=2.1.2 workload=unet batch=1 threads=1 median_s=... peak_rss_mb=... rel_l2=...

    .venv-ref/bin/python bench/peer_diffusers.py --workload unet|vae --threads T [--runs R] [--check]
"""
import sys

import peer_models as pm


def main():
    a = pm.peer_args("diffusers (PyTorch eager) peer")
    import torch

    torch.set_num_threads(a.threads)
    torch.set_num_interop_threads(1)
    if a.workload == "unet":
        model = pm.build_unet(a.cache)
        s, t, c = (torch.from_numpy(x) for x in pm.unet_inputs(a.batch))

        def fwd(s, t, c):
            with torch.inference_mode():
                return model(s, t, c, return_dict=False)[0]

        median, mn = pm.time_runs(lambda: fwd(s, t, c), a.runs, a.warmup)
        rss = pm.peak_rss_mb()
        rel = None
        if a.check:
            gs, gt, gc, ref = pm.unet_golden()
            rel = pm.rel_l2(fwd(*(torch.from_numpy(x) for x in (gs, gt, gc))).numpy(), ref)
    else:
        dec = pm.vae_decoder_module(pm.build_vae(a.cache))
        z = torch.from_numpy(pm.vae_latent(a.batch))

        def fwd(z):
            with torch.inference_mode():
                return dec(z)

        median, mn = pm.time_runs(lambda: fwd(z), a.runs, a.warmup)
        rss = pm.peak_rss_mb()
        rel = None
        if a.check:
            gz, ref = pm.vae_golden()
            rel = pm.rel_l2(fwd(torch.from_numpy(gz)).numpy(), ref)
    pm.report("torch", torch.__version__.split("+")[0], a, median, mn, rss, rel)


if __name__ == "__main__":
    sys.exit(main())
