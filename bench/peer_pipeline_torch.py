"""diffusers 0.25.1 StableDiffusionPipeline on PyTorch (float32, CPU) with the
full-size synthetic SD1.5 models (the same weights `sdunet txt2img
--synthetic sd15` builds), timed by phase like sdunet's --verbose output.
Prints one machine-readable line:

    peer: torch=... threads=T size=512 steps=20 total_s=... text_s=... step_s=... decode_s=... peak_rss_mb=...

Needs the reference environment (tools/ref-env.sh)."""
import argparse
import os
import resource
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
sys.path.insert(0, os.path.join(ROOT, "tests", "gen"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--scheduler", default="EulerAncestralDiscreteScheduler")
    a = ap.parse_args()

    import torch
    import diffusers
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    import make_pipeline_cases as mp
    import make_text_cases as mt

    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    ucfg = mp.read_json("tests/data/sd15-64/config.json")
    unet = UNet2DConditionModel(**{k: v for k, v in ucfg.items() if not k.startswith("_")}).eval()
    mp.fill_synthetic(unet)
    te, _ = mt.build_model(mt.SD15_CONFIG)
    te = te.float().eval()
    from diffusers import AutoencoderKL
    vae = AutoencoderKL(block_out_channels=[128, 256, 512, 512], layers_per_block=2,
                        down_block_types=["DownEncoderBlock2D"] * 4,
                        up_block_types=["UpDecoderBlock2D"] * 4, latent_channels=4,
                        norm_num_groups=32, sample_size=512).eval()
    mp.fill_synthetic(vae)
    tok = mp.build_tokenizer("sd1")
    sched = getattr(diffusers, a.scheduler).from_config(mp.SCHEDULER_BASE)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet,
                                   scheduler=sched, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    load_s = time.perf_counter() - t0

    marks = {}

    def on_step_end(p, i, t, kw):
        marks.setdefault("first_step_end", time.perf_counter())
        marks["last_step_end"] = time.perf_counter()
        return kw

    inner = pipe.encode_prompt

    def encode_prompt(*args, **kwargs):
        s = time.perf_counter()
        r = inner(*args, **kwargs)
        marks["text_s"] = time.perf_counter() - s
        marks["loop_start"] = time.perf_counter()
        return r

    pipe.encode_prompt = encode_prompt
    g = torch.Generator("cpu").manual_seed(1)
    with torch.inference_mode():
        t1 = time.perf_counter()
        pipe("a photo of an astronaut riding a horse on mars", height=a.size, width=a.size,
             num_inference_steps=a.steps, guidance_scale=7.5, generator=g, output_type="np",
             callback_on_step_end=on_step_end)
        total = time.perf_counter() - t1
    end = time.perf_counter()
    steps_s = marks["last_step_end"] - marks["loop_start"]
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(f"peer: torch={torch.__version__} threads={a.threads} size={a.size} steps={a.steps} "
          f"load_s={load_s:.1f} total_s={total:.1f} text_s={marks['text_s']:.3f} "
          f"step_s={steps_s / a.steps:.2f} decode_s={end - marks['last_step_end']:.1f} "
          f"peak_rss_mb={rss:.0f}")


if __name__ == "__main__":
    main()
