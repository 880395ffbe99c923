"""PyTorch peer for `sdunet bench --text`: transformers' CLIPTokenizer (slow,
as diffusers loads it) + CLIPTextModel in float32 on the same synthetic
weights, one prompt, timed like the C bench (warm-up, then the median of
--runs). Prints one machine-readable line:

    peer: torch=2.1.2 preset=sd15 threads=2 median_s=... min_s=... rel_l2_vs_ref=... peak_rss_mb=...

Needs the reference environment (tools/ref-env.sh)."""
import argparse
import os
import resource
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
sys.path.insert(0, os.path.join(ROOT, "tests", "gen"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="sd15", choices=["sd15", "sd21"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--prompt", default="a photo of an astronaut riding a horse on mars")
    a = ap.parse_args()

    import numpy as np
    import torch

    import make_text_cases as m

    torch.set_num_threads(a.threads)
    vocab = os.path.join(ROOT, "tests", "data", "text")
    sd1, sd2 = m.load_tokenizers(vocab)
    tok = sd1 if a.preset == "sd15" else sd2
    model, _ = m.build_model(m.SD15_CONFIG if a.preset == "sd15" else m.SD21_CONFIG)
    model = model.float().eval()

    def encode():
        ids = tok(a.prompt, padding="max_length", max_length=77, truncation=True,
                  return_tensors="pt").input_ids
        with torch.no_grad():
            return model(ids)[0]

    times = []
    for r in range(a.warmup + a.runs):
        t0 = time.perf_counter()
        out = encode()
        dt = time.perf_counter() - t0
        if r >= a.warmup:
            times.append(dt)
    # Against the float64 reference of the same prompt when the case has it.
    rel = float("nan")
    case = os.path.join(vocab, "clip-sd15-full" if a.preset == "sd15" else "clip-sd21-full")
    ref_path = os.path.join(case, "expected.npy")
    import json
    with open(os.path.join(case, "manifest.json")) as f:
        prompts = json.load(f)["prompts"]
    if a.prompt in prompts and os.path.exists(ref_path):
        ref = np.load(ref_path)[prompts.index(a.prompt)].astype(np.float64)
        o = out[0].double().numpy()
        rel = float(np.linalg.norm(o - ref) / np.linalg.norm(ref))
    print(f"peer: torch={torch.__version__} preset={a.preset} threads={a.threads} "
          f"median_s={statistics.median(times):.4f} min_s={min(times):.4f} rel_l2_vs_ref={rel:.3g} "
          f"peak_rss_mb={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}")


if __name__ == "__main__":
    main()
