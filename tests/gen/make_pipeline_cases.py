#!/usr/bin/env python3
"""End-to-end golden cases for txt2img and img2img, made with diffusers' own
StableDiffusionPipeline and StableDiffusionImg2ImgPipeline on tiny models with
synthetic weights.

Run inside the reference environment (tools/ref-env.sh):

    .venv-ref/bin/python tests/gen/make_pipeline_cases.py [--out DIR] [--only CASE ...]

Writes one folder per case under DIR (default tests/data/pipeline). Every
model is built in code from the configs in the repository and filled with the
synthetic weights (tools/synth_weights.py) by state_dict name; nothing is read
from a hub and no weight file is written.

Precision: the reference is the pipeline run with every model in float64, with
the random numbers a float32 user gets. diffusers draws with
randn_tensor(shape, generator, dtype=<pipeline dtype>), and torch's CPU normal
stream differs between float32 and float64, so during the float64 run every
randn_tensor the library reaches is replaced by one that draws float32 from
the same generator and casts the values to float64. The plain float32 pipeline
(no replacement) is run as well and its distance to the float64 result stored.
"""

import argparse
import contextlib
import inspect
import json
import os
import platform
import re
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_OFFLINE", "1")

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tools"))

import synth_weights  # noqa: E402

# The small AutoencoderKL of the published vae-tiny case (2 levels: a 16x16
# latent is a 32x32 image).
VAE_CONFIG = {
    "_class_name": "AutoencoderKL",
    "_diffusers_version": "0.25.1",
    "act_fn": "silu",
    "block_out_channels": [32, 64],
    "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
    "force_upcast": True,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 1,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 32,
    "scaling_factor": 0.18215,
    "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"],
}

# runwayml/stable-diffusion-v1-5 scheduler/scheduler_config.json (PNDM), with
# the timestep_spacing later diffusers versions read as the default.
SCHEDULER_BASE = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "trained_betas": None,
    "steps_offset": 1,
    "set_alpha_to_one": False,
    "clip_sample": False,
    "skip_prk_steps": True,
    "timestep_spacing": "leading",
}

MODELS = {
    "sd1": {
        "unet": "tests/data/tiny/config.json",
        "text_encoder": "tests/data/text/clip-tiny-sd1/config.json",
        "tokenizer": "sd1",
        "prediction_type": "epsilon",
    },
    "sd2": {
        "unet": "tests/data/tiny-sd2/config.json",
        "text_encoder": "tests/data/text/clip-tiny-sd2/config.json",
        "tokenizer": "sd2",
        "prediction_type": "v_prediction",
    },
}

ASTRONAUT = "a photo of an astronaut riding a horse on mars"

CASES = [
    {
        "name": "sd1-ddim",
        "models": "sd1",
        "pipeline": "txt2img",
        "scheduler": "DDIMScheduler",
        "prompt": ASTRONAUT,
        "negative_prompt": None,
        "seed": 0,
        "steps": 4,
        "guidance_scale": 7.5,
        "height": 32,
        "width": 32,
    },
    {
        "name": "sd1-dpmpp2m",
        "models": "sd1",
        "pipeline": "txt2img",
        "scheduler": "DPMSolverMultistepScheduler",
        "scheduler_overrides": {"algorithm_type": "dpmsolver++", "solver_order": 2},
        "prompt": "a watercolor painting of a fox in the snow, highly detailed",
        "negative_prompt": "blurry",
        "seed": 42,
        "steps": 5,
        "guidance_scale": 5.0,
        "height": 32,
        "width": 32,
        "num_images_per_prompt": 2,
    },
    {
        "name": "sd1-euler-a",
        "models": "sd1",
        "pipeline": "txt2img",
        "scheduler": "EulerAncestralDiscreteScheduler",
        "prompt": ASTRONAUT,
        "negative_prompt": None,
        "seed": 7,
        "steps": 4,
        "guidance_scale": 7.5,
        "height": 32,
        "width": 32,
    },
    {
        "name": "sd1-pndm",
        "models": "sd1",
        "pipeline": "txt2img",
        "scheduler": "PNDMScheduler",
        "prompt": "an oil painting of a lighthouse at dusk",
        "negative_prompt": None,
        "seed": 3,
        "steps": 5,
        "guidance_scale": 7.5,
        "height": 32,
        "width": 32,
        "clip_skip": 1,
    },
    {
        "name": "sd1-guidance1",
        "models": "sd1",
        "pipeline": "txt2img",
        "scheduler": "EulerDiscreteScheduler",
        "prompt": "a red car parked by the sea",
        "negative_prompt": None,
        "seed": 5,
        "steps": 4,
        "guidance_scale": 1.0,
        "height": 32,
        "width": 48,
    },
    {
        "name": "sd1-img2img",
        "models": "sd1",
        "pipeline": "img2img",
        "scheduler": "DDIMScheduler",
        "prompt": "a mosaic of coloured tiles",
        "negative_prompt": None,
        "seed": 11,
        "steps": 10,
        "strength": 0.6,
        "guidance_scale": 7.5,
        "height": 32,
        "width": 32,
    },
    {
        "name": "sd2-v-ddim",
        "models": "sd2",
        "pipeline": "txt2img",
        "scheduler": "DDIMScheduler",
        "prompt": "a majestic lion jumping from a big stone at night!",
        "negative_prompt": None,
        "seed": 1,
        "steps": 4,
        "guidance_scale": 7.5,
        "height": 32,
        "width": 32,
    },
]


def rel_l2(a, b):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm((a - b).ravel()) / np.linalg.norm(b.ravel()))


def max_abs(a, b):
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())


def read_json(rel):
    with open(os.path.join(ROOT, rel), encoding="utf-8") as f:
        return json.load(f)


def jsonable(v):
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    return v


# ---------------------------------------------------------------- models


def fill_synthetic(module, skip=()):
    """Every state_dict entry (except the named buffers) gets the synthetic
    values of its name and shape. Returns the names filled."""
    import torch

    sd = module.state_dict()
    names = []
    with torch.no_grad():
        for name, t in sd.items():
            if any(name.endswith(s) for s in skip):
                continue
            t.copy_(torch.from_numpy(synth_weights.synth(name, tuple(t.shape))))
            names.append(name)
    return names


def build_unet(config_path):
    from diffusers import UNet2DConditionModel

    cfg = {k: v for k, v in read_json(config_path).items() if not k.startswith("_")}
    unet = UNet2DConditionModel(**cfg)
    unet.eval()
    return unet, fill_synthetic(unet)


def build_text_encoder(config_path):
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = read_json(config_path)
    cfg = {k: v for k, v in cfg.items() if k not in ("architectures", "model_type", "transformers_version")}
    te = CLIPTextModel(CLIPTextConfig(**cfg))
    te.eval()
    # position_ids is an arange buffer, not a weight
    return te, fill_synthetic(te, skip=("position_ids",))


def build_vae():
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(**{k: v for k, v in VAE_CONFIG.items() if not k.startswith("_")})
    vae.eval()
    return vae, fill_synthetic(vae)


def build_tokenizer(flavor):
    from transformers import CLIPTokenizer

    vocab = os.path.join(ROOT, "tests", "data", "text", "vocab.json")
    merges = os.path.join(ROOT, "tests", "data", "text", "merges.txt")
    # As the SD tokenizer/ folders configure it: model_max_length 77; SD2's
    # differs only in pad_token "!" (an added special token, id 0).
    if flavor == "sd1":
        tok = CLIPTokenizer(vocab, merges, model_max_length=77)
        assert tok.pad_token_id == 49407
    else:
        tok = CLIPTokenizer(vocab, merges, pad_token="!", model_max_length=77)
        assert tok.pad_token_id == 0
    return tok


def text_encoder_default_dtype(te):
    """transformers 4.36 builds CLIP's causal mask with torch.full(finfo(model
    dtype).min) in the default dtype; in float64 that value overflows float32
    to -inf. The softmax gives the same result either way, but keep the mask
    finite: run the encoder with the default dtype equal to its own."""
    import torch

    inner = te.forward

    def forward(*args, **kwargs):
        saved = torch.get_default_dtype()
        torch.set_default_dtype(te.dtype)
        try:
            return inner(*args, **kwargs)
        finally:
            torch.set_default_dtype(saved)

    te.forward = forward


def make_scheduler(case, prediction_type):
    import diffusers

    cls = getattr(diffusers, case["scheduler"])
    base = dict(SCHEDULER_BASE, prediction_type=prediction_type)
    base.update(case.get("scheduler_overrides", {}))
    # as a user swapping schedulers does: NewScheduler.from_config(old.config)
    return cls.from_config(base)


def build_pipeline(case, dtype):
    import torch
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline

    m = MODELS[case["models"]]
    unet, unet_names = build_unet(m["unet"])
    te, te_names = build_text_encoder(m["text_encoder"])
    vae, vae_names = build_vae()
    tok = build_tokenizer(m["tokenizer"])
    sched = make_scheduler(case, m["prediction_type"])
    for mod in (unet, te, vae):
        mod.to(dtype)
    text_encoder_default_dtype(te)
    cls = StableDiffusionImg2ImgPipeline if case["pipeline"] == "img2img" else StableDiffusionPipeline
    pipe = cls(
        vae=vae,
        text_encoder=te,
        tokenizer=tok,
        unet=unet,
        scheduler=sched,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    assert pipe.vae_scale_factor == 2
    counts = {"unet": len(unet_names), "text_encoder": len(te_names), "vae": len(vae_names)}
    return pipe, counts


# ---------------------------------------------------------------- draws


@contextlib.contextmanager
def recorded_randn(draw_float32):
    """Replaces diffusers.utils.torch_utils.randn_tensor and every module's
    own reference to it (pipelines, schedulers, the VAE's posterior). Records
    each call (caller, shape, requested dtype, the float32 values). With
    draw_float32, values are drawn in float32 and cast to the requested
    dtype."""
    import torch
    import diffusers.utils.torch_utils as tu

    orig = tu.randn_tensor
    log = []

    def randn_tensor(shape, generator=None, device=None, dtype=None, layout=None):
        caller = inspect.stack()[1]
        mod = os.path.splitext(os.path.basename(caller.filename))[0]
        if draw_float32:
            assert isinstance(generator, torch.Generator) and generator.device.type == "cpu"
            out = orig(shape, generator=generator, device=device, dtype=torch.float32, layout=layout)
            values = out.clone()
            out = out.to(dtype or torch.float32)
        else:
            out = orig(shape, generator=generator, device=device, dtype=dtype, layout=layout)
            values = out.clone()
        log.append(
            {
                "caller": f"{mod}.{caller.function}",
                "shape": [int(s) for s in shape],
                "requested_dtype": str(dtype).replace("torch.", ""),
                "values": values.numpy().astype(np.float32),
            }
        )
        return out

    patched = []
    for name, mod in list(sys.modules.items()):
        if name.startswith("diffusers") and getattr(mod, "randn_tensor", None) is orig:
            setattr(mod, "randn_tensor", randn_tensor)
            patched.append(name)
    try:
        yield log, patched
    finally:
        for name in patched:
            setattr(sys.modules[name], "randn_tensor", orig)


def draw_role(case, caller, index, n_before):
    if caller.endswith("pipeline_stable_diffusion.prepare_latents"):
        return "initial latents (txt2img prepare_latents), before * init_noise_sigma"
    if caller.endswith("vae.sample"):
        return "VAE posterior sample: latent = mean + std * noise (img2img prepare_latents -> retrieve_latents)"
    if caller.endswith("pipeline_stable_diffusion_img2img.prepare_latents"):
        return "img2img noise for scheduler.add_noise(image latents, noise, first timestep)"
    if caller.endswith(".step"):
        k = index - n_before
        role = f"scheduler step noise (step {k})"
        if case["scheduler"] == "EulerDiscreteScheduler":
            role += ": drawn on every step but unused (s_churn 0, so gamma 0 and no noise is added); it still advances the generator"
        elif case["scheduler"] == "EulerAncestralDiscreteScheduler" and k == case["steps"] - 1:
            role += ": last step, sigma_to 0 so sigma_up 0 and the noise is multiplied by 0"
        return role
    return "other"


# ---------------------------------------------------------------- init image


def init_image_u8(h, w):
    """A deterministic RGB8 pattern: red ramps across, green ramps down, blue
    a coarse checker mixed with a diagonal."""
    y, x = np.mgrid[0:h, 0:w]
    r = (x * 255) // (w - 1)
    g = (y * 255) // (h - 1)
    b = np.where(((x // 4) + (y // 4)) % 2 == 0, 200, 40) + ((x + y) % 8) * 6
    return np.stack([r, g, b], axis=-1).astype(np.uint8)


# ---------------------------------------------------------------- one run


def run_pipeline(pipe, case, dtype, init_pil):
    """One pipeline call with output_type='np'. Returns the np image, the
    latents after every step (callback), the latents the loop starts from and
    the timesteps the loop ran."""
    import torch

    captured = {"steps": [], "timesteps": []}
    inner_prepare = pipe.prepare_latents

    def prepare_latents(*args, **kwargs):
        out = inner_prepare(*args, **kwargs)
        captured["start"] = out.detach().clone()
        return out

    pipe.prepare_latents = prepare_latents

    def on_step_end(p, i, t, kw):
        captured["steps"].append(kw["latents"].detach().clone())
        captured["timesteps"].append(int(t))
        return kw

    kwargs = dict(
        prompt=case["prompt"],
        negative_prompt=case["negative_prompt"],
        num_inference_steps=case["steps"],
        guidance_scale=case["guidance_scale"],
        num_images_per_prompt=case.get("num_images_per_prompt", 1),
        eta=case.get("eta", 0.0),
        generator=torch.Generator("cpu").manual_seed(case["seed"]),
        output_type="np",
        clip_skip=case.get("clip_skip"),
        callback_on_step_end=on_step_end,
    )
    if case["pipeline"] == "img2img":
        kwargs.update(image=init_pil, strength=case["strength"])
    else:
        kwargs.update(height=case["height"], width=case["width"])
    with torch.no_grad():
        out = pipe(**kwargs)
    pipe.prepare_latents = inner_prepare
    assert out.nsfw_content_detected is None
    steps = torch.stack(captured["steps"])
    assert steps.dtype == dtype, steps.dtype
    return {
        "image_np": out.images,
        "steps": steps,
        "start": captured["start"],
        "timesteps_run": captured["timesteps"],
        "scheduler_timesteps": [int(t) for t in pipe.scheduler.timesteps],
    }


def encode(pipe, case):
    import torch

    cfg = case["guidance_scale"] > 1.0
    with torch.no_grad():
        pe, ne = pipe.encode_prompt(
            case["prompt"],
            torch.device("cpu"),
            case.get("num_images_per_prompt", 1),
            cfg,
            case["negative_prompt"],
            clip_skip=case.get("clip_skip"),
        )
    return pe, ne


def decode_f64(pipe, latents):
    """What the pipeline does after the loop, kept in float64:
    vae.decode(latents / scaling_factor), then (x/2+0.5).clamp(0,1), NHWC."""
    import torch

    with torch.no_grad():
        img = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False)[0]
        img = (img / 2 + 0.5).clamp(0, 1)
    assert img.dtype == torch.float64
    return img.permute(0, 2, 3, 1).numpy()


def ids_of(tok, text):
    return tok(text, padding="max_length", max_length=77, truncation=True).input_ids


# ---------------------------------------------------------------- one case


def make_case(case, out_root):
    import diffusers
    import PIL
    import torch
    import transformers
    from PIL import Image

    name = case["name"]
    out = os.path.join(out_root, name)
    os.makedirs(out, exist_ok=True)
    t0 = time.time()

    init_pil = None
    init_u8 = None
    if case["pipeline"] == "img2img":
        init_u8 = init_image_u8(case["height"], case["width"])
        init_pil = Image.fromarray(init_u8, mode="RGB")
        init_pil.save(os.path.join(out, "init.png"))
        np.save(os.path.join(out, "init.npy"), init_u8)
        # the PNG round-trips exactly
        assert np.array_equal(np.asarray(Image.open(os.path.join(out, "init.png")).convert("RGB")), init_u8)

    # ---- float64 reference, float32 draws
    pipe64, counts = build_pipeline(case, torch.float64)
    if init_pil is not None:
        pre = pipe64.image_processor.preprocess(init_pil)
        want = torch.from_numpy(init_u8.astype(np.float32) / np.float32(255)).permute(2, 0, 1)[None] * 2.0 - 1.0
        assert pre.dtype == torch.float32 and torch.equal(pre, want), "image preprocessing is not x/255*2-1"
    with recorded_randn(draw_float32=True) as (draws64, patched):
        need = {"diffusers.utils.torch_utils", "diffusers.models.autoencoders.vae", type(pipe64).__module__}
        if hasattr(sys.modules[type(pipe64.scheduler).__module__], "randn_tensor"):
            need.add(type(pipe64.scheduler).__module__)  # PNDM never draws
        assert need <= set(patched), f"randn_tensor not replaced in {need - set(patched)}"
        r64 = run_pipeline(pipe64, case, torch.float64, init_pil)
    pe64, ne64 = encode(pipe64, case)
    neg_ignores_clip_skip = None
    if case.get("clip_skip") is not None and ne64 is not None:
        _, ne_noskip = encode(pipe64, dict(case, clip_skip=None))
        neg_ignores_clip_skip = bool(torch.equal(ne_noskip, ne64))
    image_latents = None
    if init_pil is not None:
        # prepare_latents redone by hand from the recorded draws: posterior
        # sample with draw 0, add_noise with draw 1 at the first timestep
        with torch.no_grad():
            post = pipe64.vae.encode(pre.to(torch.float64)).latent_dist
            noise0 = torch.from_numpy(draws64[0]["values"]).to(torch.float64)
            image_latents = pipe64.vae.config.scaling_factor * (post.mean + post.std * noise0)
            noise1 = torch.from_numpy(draws64[1]["values"]).to(torch.float64)
            t_first = torch.tensor([r64["timesteps_run"][0]])
            again = pipe64.scheduler.add_noise(image_latents, noise1, t_first)
        assert torch.equal(again, r64["start"]), "img2img start latents not reproduced"
    final64 = r64["steps"][-1]
    img64 = decode_f64(pipe64, final64)
    # the pipeline's own output_type='np' result is this image cast to float32
    assert r64["image_np"].dtype == np.float32
    assert np.array_equal(r64["image_np"], img64.astype(np.float32)), "float64 decode does not reproduce the pipeline output"
    pil = pipe64.image_processor.numpy_to_pil(r64["image_np"])
    u8 = np.stack([np.asarray(p) for p in pil])
    assert np.array_equal(u8, (img64.astype(np.float32) * np.float32(255)).round().astype(np.uint8))
    sched_cfg = jsonable(dict(pipe64.scheduler.config))
    # diffusers fills this list from a set: sort it so reruns give the same file
    sched_cfg["_use_default_values"] = sorted(sched_cfg.get("_use_default_values", []))
    sched_extra = {"order": pipe64.scheduler.order, "init_noise_sigma": float(pipe64.scheduler.init_noise_sigma)}
    tok = pipe64.tokenizer
    f64_s = time.time() - t0

    # ---- plain float32 pipeline
    pipe32, _ = build_pipeline(case, torch.float32)
    with recorded_randn(draw_float32=False) as (draws32, _):
        r32 = run_pipeline(pipe32, case, torch.float32, init_pil)
    pe32, ne32 = encode(pipe32, case)
    img32 = r32["image_np"]
    u8_32 = np.stack([np.asarray(p) for p in pipe32.image_processor.numpy_to_pil(img32)])

    # the draws are the same numbers in both runs
    assert len(draws32) == len(draws64)
    for a, b in zip(draws32, draws64):
        assert a["caller"] == b["caller"] and np.array_equal(a["values"], b["values"])
        assert a["requested_dtype"] == "float32" and b["requested_dtype"] == "float64"
    assert r32["timesteps_run"] == r64["timesteps_run"]

    # ---- files
    b = case.get("num_images_per_prompt", 1)
    assert img64.shape == (b, case["height"], case["width"], 3)
    np.save(os.path.join(out, "image_f64.npy"), img64)
    np.save(os.path.join(out, "image_f32.npy"), img32)
    np.save(os.path.join(out, "image_u8.npy"), u8)
    np.save(os.path.join(out, "latents_init.npy"), draws64[0]["values"])
    np.save(os.path.join(out, "noise_draws.npy"), np.stack([d["values"] for d in draws64]))
    np.save(os.path.join(out, "latents_start_f64.npy"), r64["start"].numpy())
    np.save(os.path.join(out, "latents_steps_f64.npy"), r64["steps"].numpy())
    np.save(os.path.join(out, "latents_final_f64.npy"), final64.numpy())
    np.save(os.path.join(out, "prompt_embeds_f64.npy"), pe64.numpy())
    if ne64 is not None:
        np.save(os.path.join(out, "negative_prompt_embeds_f64.npy"), ne64.numpy())
    if image_latents is not None:
        np.save(os.path.join(out, "image_latents_f64.npy"), image_latents.numpy())
    with open(os.path.join(out, "unet_config.json"), "w", encoding="utf-8") as f:
        json.dump(read_json(MODELS[case["models"]]["unet"]), f, indent=2, sort_keys=True)
        f.write("\n")
    with open(os.path.join(out, "vae_config.json"), "w", encoding="utf-8") as f:
        json.dump(VAE_CONFIG, f, indent=2, sort_keys=True)
        f.write("\n")
    with open(os.path.join(out, "scheduler_config.json"), "w", encoding="utf-8") as f:
        json.dump(sched_cfg, f, indent=2, sort_keys=True)
        f.write("\n")

    n_before = 1 if case["pipeline"] == "txt2img" else 2
    draw_list = []
    for i, d in enumerate(draws64):
        draw_list.append(
            {
                "index": i,
                "role": draw_role(case, d["caller"], i, n_before),
                "caller": d["caller"],
                "shape": d["shape"],
                "dtype_drawn": "float32 (torch.randn on the CPU generator)",
            }
        )

    cfg = case["guidance_scale"] > 1.0
    neg_text = case["negative_prompt"] if case["negative_prompt"] is not None else ""
    m = MODELS[case["models"]]
    lat_shape = list(final64.shape)
    manifest = {
        "case": name,
        "pipeline": {
            "txt2img": "diffusers.StableDiffusionPipeline",
            "img2img": "diffusers.StableDiffusionImg2ImgPipeline",
        }[case["pipeline"]],
        "call": {
            "prompt": case["prompt"],
            "negative_prompt": case["negative_prompt"],
            "negative_prompt_effective": neg_text if cfg else None,
            "seed": case["seed"],
            "generator": "torch.Generator('cpu').manual_seed(seed), passed as generator=",
            "num_inference_steps": case["steps"],
            "guidance_scale": case["guidance_scale"],
            "classifier_free_guidance": cfg,
            "num_images_per_prompt": b,
            "height": case["height"],
            "width": case["width"],
            "strength": case.get("strength"),
            "clip_skip": case.get("clip_skip"),
            "eta": case.get("eta", 0.0),
            "output_type": "np",
        },
        "models": {
            "flavor": case["models"],
            "unet": {"config": "unet_config.json", "source": m["unet"], "class": "UNet2DConditionModel", "n_tensors": counts["unet"]},
            "text_encoder": {"config": m["text_encoder"], "class": "transformers.CLIPTextModel", "n_tensors": counts["text_encoder"]},
            "tokenizer": {
                "class": "transformers.CLIPTokenizer (slow), ftfy not installed",
                "files": "tests/data/text/vocab.json, tests/data/text/merges.txt",
                "model_max_length": 77,
                "pad_token": tok.pad_token,
                "pad_token_id": tok.pad_token_id,
                "prompt_ids": ids_of(tok, case["prompt"]),
                "negative_prompt_ids": ids_of(tok, neg_text) if cfg else None,
            },
            "vae": {"config": "vae_config.json", "class": "AutoencoderKL", "n_tensors": counts["vae"], "vae_scale_factor": 2, "scaling_factor": VAE_CONFIG["scaling_factor"]},
            "weights": "synthetic-weights specification version 1 (tools/synth_weights.py) for every state_dict tensor, by its diffusers / transformers name (CLIP's position_ids buffer excepted); no weight file",
            "attention_processor": type(next(iter(pipe64.unet.attn_processors.values()))).__name__,
            "safety_checker": None,
            "feature_extractor": None,
            "requires_safety_checker": False,
        },
        "scheduler": {
            "class": case["scheduler"],
            "built_with": f"{case['scheduler']}.from_config(<SD1.5 scheduler_config.json values> + prediction_type" + (" + " + json.dumps(case["scheduler_overrides"]) if case.get("scheduler_overrides") else "") + ")",
            "config": sched_cfg,
            "config_file": "scheduler_config.json",
            **sched_extra,
            "timesteps_after_set_timesteps": r64["scheduler_timesteps"],
            "timesteps_run": r64["timesteps_run"],
            "n_unet_steps": len(r64["timesteps_run"]),
            "unet_batch_per_step": (2 if cfg else 1) * b,
        },
        "random_draws": {
            "what": "every randn_tensor call in order; all from the one CPU generator; the float64 run draws these float32 values and casts them",
            "count": len(draw_list),
            "draws": draw_list,
            "file": "noise_draws.npy: float32 (count, " + ", ".join(str(s) for s in draw_list[0]["shape"]) + ") stacked in draw order",
        },
        "files": {
            "image_f64.npy": f"float64 (B,H,W,3) = {[b, case['height'], case['width'], 3]}, in [0,1]: the float64 run's vae.decode(latents_final / scaling_factor), then (x/2+0.5).clamp(0,1), NHWC. output_type='np' returns exactly this cast to float32 (diffusers' postprocess calls .float())",
            "image_f32.npy": "float32 (B,H,W,3): the plain float32 pipeline's output_type='np' image (float32 models, float32 draws)",
            "image_u8.npy": "uint8 (B,H,W,3): the pipeline's own 8-bit conversion of the float64 run: numpy_to_pil, (float32(image_f64) * 255).round() (half to even), uint8; equals output_type='pil'",
            "latents_init.npy": f"float32 {draw_list[0]['shape']}: the first random draw ({draw_list[0]['role']})",
            "noise_draws.npy": "float32: all draws in order (see random_draws)",
            "latents_start_f64.npy": "float64: what prepare_latents returned, the latents entering the first step (txt2img: latents_init * init_noise_sigma; img2img: scheduler.add_noise(scaling_factor * posterior sample, noise, first timestep))",
            "latents_steps_f64.npy": f"float64 (n_steps, {', '.join(str(s) for s in lat_shape)}): latents after each scheduler step (callback_on_step_end)",
            "latents_final_f64.npy": f"float64 {lat_shape}: the latents handed to the VAE decoder (before / scaling_factor)",
            "prompt_embeds_f64.npy": "float64 (B,77,D): pipe.encode_prompt(prompt, cpu, num_images_per_prompt, cfg, negative_prompt, clip_skip=clip_skip)[0], repeated per image",
            "negative_prompt_embeds_f64.npy": ("float64 (B,77,D): encode_prompt(...)[1] (clip_skip does not apply to it in diffusers 0.25.1)" if cfg else "absent: guidance_scale <= 1 runs no unconditional pass"),
        },
        "float32_pytorch": {
            "what": "the plain float32 pipeline (float32 models, no replacement of randn_tensor) against the float64 run: rel L2 = ||a-b|| / ||b||",
            "rel_l2_image": rel_l2(img32, img64),
            "max_abs_image": max_abs(img32, img64),
            "rel_l2_latents_final": rel_l2(r32["steps"][-1].numpy(), final64.numpy()),
            "rel_l2_latents_per_step": [rel_l2(r32["steps"][i].numpy(), r64["steps"][i].numpy()) for i in range(len(r64["steps"]))],
            "rel_l2_prompt_embeds": rel_l2(pe32.numpy(), pe64.numpy()),
            "rel_l2_negative_prompt_embeds": rel_l2(ne32.numpy(), ne64.numpy()) if ne64 is not None else None,
            "u8_values_differing": int(np.count_nonzero(u8_32 != u8)),
            "u8_max_abs_diff": int(np.abs(u8_32.astype(int) - u8.astype(int)).max()),
            "draws_identical": True,
        },
        "precision_notes": [
            "float64 run: unet, text encoder and VAE .to(torch.float64); randn_tensor replaced in diffusers.utils.torch_utils and in every loaded diffusers module holding its own reference (here called from: " + ", ".join(sorted({d["caller"] for d in draws64})) + ") so that it draws float32 from the generator and casts (a float64 torch.randn would be another stream)",
            "inside the float64 run diffusers still computes some pieces in float32: scheduler tables (betas, alphas_cumprod, sigmas) are float32 tensors, the UNet's sinusoidal timestep embedding is computed in float32 and cast, the Euler / Euler-ancestral step casts the sample to float32 and the result back to the model dtype",
            "text encoder run with torch's default dtype equal to its own (transformers 4.36 builds the causal mask in the default dtype)",
        ],
        "versions": {
            "diffusers": diffusers.__version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "numpy": np.__version__,
            "pillow": PIL.__version__,
            "python": platform.python_version(),
        },
        "generator": "tests/gen/make_pipeline_cases.py",
    }
    if neg_ignores_clip_skip is not None:
        manifest["clip_skip_note"] = {
            "negative_prompt_embeds_equal_to_clip_skip_none": neg_ignores_clip_skip,
            "what": "diffusers 0.25.1 encode_prompt applies clip_skip to the prompt only: the negative prompt is encoded with the last layer (last_hidden_state) whatever clip_skip is",
        }
    if case["pipeline"] == "img2img":
        init_timestep = min(int(case["steps"] * case["strength"]), case["steps"])
        manifest["img2img"] = {
            "init_image": "init.png (RGB8 PNG) = init.npy (uint8 (H,W,3))",
            "preprocess": "VaeImageProcessor.preprocess(PIL image): float32 x/255*2-1, NCHW, no resize (32x32 is a multiple of vae_scale_factor); then cast to the pipeline dtype",
            "init_timestep": init_timestep,
            "t_start": max(case["steps"] - init_timestep, 0),
            "timesteps_sliced": "scheduler.timesteps[t_start * order:]",
            "order_of_draws": "1) vae.encode(image).latent_dist.sample(generator): noise of the latent shape, latent = mean + std * noise, times scaling_factor; 2) noise of the same shape for scheduler.add_noise at timesteps[t_start]; eta 0 DDIM draws nothing per step",
        }
        man_files = manifest["files"]
        man_files["init.png"] = "the init image, RGB8"
        man_files["init.npy"] = "the same, uint8 (H,W,3)"
        man_files["image_latents_f64.npy"] = "float64 (1,4,h,w): scaling_factor * (posterior mean + posterior std * draw 0), the image latents before add_noise; scheduler.add_noise(this, draw 1, timesteps_run[0]) reproduces latents_start_f64 exactly"
    text = json.dumps(manifest, indent=1, ensure_ascii=False)
    # integer lists (token ids, timesteps, shapes) on one line
    text = re.sub(r"\[\s*(-?\d+(?:,\s*-?\d+)*)\s*\]", lambda mo: "[" + ", ".join(x.strip() for x in mo.group(1).split(",")) + "]", text)
    with open(os.path.join(out, "manifest.json"), "w", encoding="utf-8") as f:
        f.write(text + "\n")
    fp = manifest["float32_pytorch"]
    print(
        f"{name}: f32 vs f64 image {fp['rel_l2_image']:.2e} latents {fp['rel_l2_latents_final']:.2e},"
        f" u8 differing {fp['u8_values_differing']}; draws {len(draw_list)}; timesteps {r64['timesteps_run']}; {time.time() - t0:.1f}s",
        flush=True,
    )


def crosscheck(out_root):
    """The models as built here against the published single-model cases in
    the repository (made by a separate set-up): writes crosscheck.json."""
    import torch

    res = {
        "what": "this generator's models (synthetic weights by name, float64, default attention processor) on the inputs of the single-model cases under tests/data: rel L2 to their float64 expectations",
    }
    for flavor, case_dir, t in (("sd1", "tests/data/tiny", 981), ("sd2", "tests/data/tiny-sd2", 500)):
        unet, _ = build_unet(MODELS[flavor]["unet"])
        unet.double()
        d = os.path.join(ROOT, case_dir)
        sample = torch.from_numpy(np.load(os.path.join(d, "sample.npy"))).double()
        ctx = torch.from_numpy(np.load(os.path.join(d, "context.npy"))).double()
        with torch.no_grad():
            got = unet(sample, t, ctx).sample.numpy()
        res[f"unet_{flavor}_vs_{os.path.basename(case_dir)}"] = rel_l2(got, np.load(os.path.join(d, "expected_f64.npy")))
    res["unet_note"] = (
        "the UNet cases were made with torch 1.13; diffusers computes the sinusoidal timestep embedding in float32, and torch versions differ there (time_proj at t 981 differs from tests/data/tiny/trace/00_time_proj.npy by up to 1.9e-6), "
        "which is the ~1e-8 left; tiny-sd2 was run with upcast_attention switched off (diffusers' upcast is a float32 cast), the pipeline's default AttnProcessor2_0 has no upcast"
    )
    for flavor, case_dir in (("sd1", "tests/data/text/clip-tiny-sd1"), ("sd2", "tests/data/text/clip-tiny-sd2")):
        with open(os.path.join(ROOT, case_dir, "manifest.json"), encoding="utf-8") as f:
            prompts = json.load(f)["prompts"]
        te, _ = build_text_encoder(MODELS[flavor]["text_encoder"])
        te.double()
        text_encoder_default_dtype(te)
        tok = build_tokenizer(MODELS[flavor]["tokenizer"])
        ids = torch.tensor([ids_of(tok, p) for p in prompts])
        assert np.array_equal(ids.numpy(), np.load(os.path.join(ROOT, case_dir, "ids.npy")))
        key = f"text_encoder_{flavor}_vs_{os.path.basename(case_dir)}"
        want = np.load(os.path.join(ROOT, case_dir, "expected_f64.npy"))
        with torch.no_grad():
            res[key] = rel_l2(te(ids)[0].numpy(), want)
            if flavor == "sd2":
                # that case rounds its token embedding to float16 (see its
                # manifest); the pipeline cases keep the plain synthetic values
                emb = te.text_model.embeddings.token_embedding.weight
                emb.copy_(emb.to(torch.float16).to(torch.float64))
                res[key + "_token_embedding_rounded_to_float16_as_there"] = rel_l2(te(ids)[0].numpy(), want)
    os.makedirs(out_root, exist_ok=True)
    with open(os.path.join(out_root, "crosscheck.json"), "w", encoding="utf-8") as f:
        json.dump(res, f, indent=1)
        f.write("\n")
    print("cross-check:", {k: v for k, v in res.items() if isinstance(v, float)}, flush=True)


def main():
    import torch

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "data", "pipeline"))
    ap.add_argument("--only", action="append", choices=[c["name"] for c in CASES])
    args = ap.parse_args()
    try:
        import ftfy  # noqa: F401

        sys.exit("ftfy is installed: the cases must be made without it (the CLIP tokenizer changes behaviour)")
    except ImportError:
        pass
    torch.set_num_threads(2)
    if not args.only:
        crosscheck(args.out)
    for case in CASES:
        if args.only and case["name"] not in args.only:
            continue
        make_case(case, args.out)


if __name__ == "__main__":
    main()
