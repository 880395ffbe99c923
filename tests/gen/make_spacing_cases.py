"""Timesteps, sigmas and init_noise_sigma of diffusers 0.25.1's schedulers for
each timestep_spacing (leading, linspace, trailing), built from the SD1.5
scheduler config as from_config would, for a few step counts. Writes
tests/data/schedulers/spacing.json. Run with the reference environment:

    .venv-ref/bin/python tests/gen/make_spacing_cases.py
"""
import json
import os

import diffusers
import numpy as np
from diffusers import (DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
                       EulerDiscreteScheduler, LMSDiscreteScheduler, PNDMScheduler,
                       UniPCMultistepScheduler)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SD15 = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
            beta_schedule="scaled_linear", steps_offset=1, set_alpha_to_one=False,
            clip_sample=False, skip_prk_steps=True)
CLASSES = {"ddim": DDIMScheduler, "pndm": PNDMScheduler, "euler": EulerDiscreteScheduler,
           "euler_a": EulerAncestralDiscreteScheduler, "lms": LMSDiscreteScheduler,
           "dpmpp_2m": DPMSolverMultistepScheduler, "unipc": UniPCMultistepScheduler}


def main():
    cases = []
    for name, cls in CLASSES.items():
        for spacing in ("leading", "linspace", "trailing"):
            for n in (1, 4, 7, 20, 50):
                s = cls.from_config(dict(SD15, timestep_spacing=spacing))
                s.set_timesteps(n)
                sig = getattr(s, "sigmas", None)
                cases.append({
                    "scheduler": name, "spacing": spacing, "steps": n,
                    "timesteps": [float(t) for t in np.asarray(s.timesteps, dtype=np.float64)],
                    "sigmas": None if sig is None or name in ("ddim", "pndm")
                    else [float(x) for x in np.asarray(sig, dtype=np.float64)],
                    "init_noise_sigma": float(s.init_noise_sigma),
                })
    out = os.path.join(ROOT, "tests", "data", "schedulers", "spacing.json")
    with open(out, "w") as f:
        json.dump({"diffusers": diffusers.__version__, "config": SD15, "cases": cases}, f)
        f.write("\n")
    print(f"wrote {out}: {len(cases)} cases")


if __name__ == "__main__":
    main()
