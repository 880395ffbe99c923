#!/usr/bin/env python3
"""Golden cases for the CLIP tokenizer and the CLIP text encoders, made with
the upstream libraries (transformers' slow CLIPTokenizer and CLIPTextModel).

Run inside the reference environment (tools/ref-env.sh):

    .venv-ref/bin/python tests/gen/make_text_cases.py [--vocab DIR] [--out DIR]
        [--only tokenizer|sd15|sd21]

--vocab: folder with the CLIP BPE vocab.json and merges.txt (default
tests/data/vocab/clip). Writes under --out (default tests/data/text):
  tokenizer-extra.json     ids of prompts that stress odd input
  clip-sd15-full/          SD1 text encoder (CLIP ViT-L/14), synthetic weights
  clip-sd21-full/          SD2 text encoder (OpenCLIP ViT-H as diffusers runs it)
The encoder weights are not written: they follow from the synthetic weight
specification (tools/synth_weights.py) and the config in each manifest.
Everything runs offline; no configuration is read from a hub.
"""

import argparse
import json
import math
import os
import platform
import sys
import time
import unicodedata

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tools"))

import synth_weights  # noqa: E402

MAX_LEN = 77


def require_no_ftfy():
    try:
        import ftfy  # noqa: F401
    except ImportError:
        return
    sys.exit("ftfy is installed: the cases must be made without it (the CLIP tokenizer changes behaviour)")


# ---------------------------------------------------------------- tokenizer


def load_tokenizers(vocab_dir):
    from transformers import CLIPTokenizer

    vocab = os.path.join(vocab_dir, "vocab.json")
    merges = os.path.join(vocab_dir, "merges.txt")
    sd1 = CLIPTokenizer(vocab, merges)
    # Stable Diffusion 2.x's tokenizer folder differs only in pad_token "!";
    # transformers registers it as an added special token (id 0), so every
    # "!" in a prompt is split out as id 0.
    sd2 = CLIPTokenizer(vocab, merges, pad_token="!")
    assert sd1.pad_token_id == 49407 and sd2.pad_token_id == 0
    return sd1, sd2


def count_tokens(tok, text):
    return len(tok(text, add_special_tokens=False).input_ids)


def fit_prompt(tok, head, filler, tail, want, pad=" red"):
    """head + filler * k + pad * j + tail with exactly WANT tokens (SD1
    tokenizer), smallest j first (pad is one token)."""
    for j in range(0, 8):
        for k in range(0, 200):
            text = head + filler * k + pad * j + tail
            n = count_tokens(tok, text)
            if n == want:
                return text
            if n > want:
                break
    raise RuntimeError(f"cannot fit {want} tokens with {head!r} {filler!r} {tail!r}")


def extra_prompts(sd1):
    p = []

    def add(name, prompt):
        p.append((name, prompt))

    # long words and runs
    add("long-word-300", "x" + "abcdefghij" * 30)
    add("long-word-random", "qzxwvtkpjfhgmnbrlcdsy" * 6 + " zyzzyva floccinaucinihilipilification")
    add("long-word-unicode", "ü" * 60 + " " + "日本" * 3 + "ё" * 40)
    # punctuation runs
    add("bang-runs", "wow!!! amazing!!!! stop!!!!!!!! !a! !!!b!!!")
    add("ellipsis", "wait... what...... ok. . . end.... ......")
    add("interrobang", "really?! no?!?! yes!? ‽ ?!?!?!?! ¿qué? ¡hola!")
    add("punct-mixed-runs", "~~~***___---+++===|||\\\\\\///###@@@$$$%%%^^^&&&")
    # contractions and apostrophes
    add("contractions-upper", "I'M SURE YOU DON'T KNOW WE'RE HERE, THEY'VE SAID I'LL GO, SHE'D SAY IT'S")
    add("contractions-odd-case", "i'M dOn'T We'Re they'VE yOu'Ll He'D it'S CAN'T won'T")
    add("long-s", "'ſ 'ſt it'ſ Wiſdom 'ſſ ſ's 'ﬅ")
    add("apostrophe-like", "it’s don’t it`s it´s it′s ''s '''t s' 'x 'S 'T 'M 'LL 'D 'VE 'RE")
    # numbers
    add("number-separators", "1,000,000 3.14159 1_000 10'000 1 000 2024-01-01 12:30:59 1e-5 0x1F -0.5 +1.5e+10")
    add("number-scripts", "٣٤٥ ۱۲۳ १२३ ১২৩ ๑๒๓ ①②③ ⅰⅱⅲ 𝟙𝟚𝟛 ¹²³ ¼¾")
    # scripts and case mapping
    add("greek-sigma", "ΟΔΥΣΣΕΥΣ ΣΟΦΟΣ ΣΑΣ Σ ΣΣ λόγος ΑΣ. ΑΣ,ΑΣ")
    add("turkish-i", "İSTANBUL İzmir ıi IĞDIR ŞİŞLİ iİıI")
    add("german-sharp-s", "STRAẞE straße Fußball GROẞ ẞ ß SS")
    add("cyrillic-mixed", "Москва ПРИВЕТ мир ёлка Ёж Ѣ ѣ Україна Ґ")
    add("arabic-harakat", "مرحبا بالعالم السَّلَامُ عَلَيْكُمْ ـــ")
    add("hindi-marks", "नमस्ते दुनिया हिन्दी क़ ज़ क़")
    add("thai", "สวัสดีครับ ภาษาไทย น้ำ")
    add("korean-jamo", "\u1112\u1161\u11ab\u1100\u1173\u11af ㅎㅏㄴ 한글 \u1100\u1161")
    add("japanese-kana-kanji", "東京タワーの夜景、ひらがな カタカナ 漢字かな交じり文。ｶﾞｷﾞ")
    add("fullwidth-ascii", "ＡＢＣ ａｂｃ １２３ ！？ ＃＄％ （ｗｏｒｄ：１．３） ＜｜ｅｎｄｏｆｔｅｘｔ｜＞")
    add("mixed-scripts-glued", "caféКафе咖啡カフェ카페καφέςcoffee")
    # emoji
    add("emoji-zwj", "👩\u200d💻 👨\u200d👩\u200d👧\u200d👦 🏳\ufe0f\u200d🌈 🧑🏽\u200d🚀 ❤\ufe0f\u200d🔥")
    add("emoji-skin-tones", "👍🏻👍🏼👍🏽👍🏾👍🏿 ✋🏿 🏻")
    add("emoji-flags", "🇺🇸🇯🇵🇩🇪 🇫 🏴\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f flag")
    add("emoji-keycaps", "1\ufe0f\u20e3 #\ufe0f\u20e3 ©\ufe0f ™ ↔\ufe0f")
    # combining marks
    add("combining-stack", "Z\u0335\u0321\u0322\u034da\u0338\u031b\u034el\u0337g\u0334o\u0336 \u0301start a\u0308\u0301 o\u0328\u0304")
    add("combining-nfc", "A\u030a \u212b \u00c5 e\u0301\u0301 \u1e9b\u0323 \uf900")
    # whitespace and invisible characters
    add("tabs-newlines", "a\tphoto\n\nof a\r\ncat\t\t\tsitting \n\r on\x0b\x0c a mat\n")
    add("unicode-spaces-only", "\u3000\u00a0\u2003\t\n\u2028\u202f\u205f")
    add("invisible-chars", "a\u200bb\u200cc\u200dd\u2060e\ufeff f\u00adg \ue000h\U000f0000i\ufffej \u061cx \u2066y\u2069")
    # special tokens typed in the text
    add("special-mid", "a photo <|startoftext|> of a cat <|startoftext|><|startoftext|> dog")
    add("special-glued-punct", "cat<|endoftext|>!!dog.<|endoftext|>,<|endoftext|><|endoftext|>?")
    add("special-near-miss", "<|ENDOFTEXT|> <|startoftext| <|endof text|> <|endoftext|>> <<|startoftext|>")
    # A1111 prompt syntax (the tokenizer sees it as text)
    add("a1111-weights", "(masterpiece:1.3), ((best quality)), [worst quality:0.5], (blue eyes:0.8), (((x)))")
    add("a1111-escapes", "\\(parenthesis\\) \\[bracket\\] a \\\\ b {curly} <lora:name_v2:0.7> <hypernet:x:1>")
    add("a1111-break", "a red car BREAK a blue sky BREAK, AND green BREAKING break")
    add("a1111-scheduling", "[dog:cat:0.5] [a|b|c] [from:to:10] (word)++ --no text, embedding:easynegative")
    # lengths at the 75-token boundary
    add("tokens-75-bang", fit_prompt(sd1, "a portrait", ", very detailed", " face!", 75))
    add("tokens-76-split-word", fit_prompt(sd1, "a", " cat", " floccinaucinihilipilification", 76))
    add("tokens-77-emoji", fit_prompt(sd1, "", "🐱 ", "end", 77))
    add("long-bangs", "!" * 80)
    add("long-emoji", "👨\u200d👩\u200d👧\u200d👦" * 30)
    return p


def tokenizer_case(sd1, sd2, name, prompt):
    full = sd1(prompt, add_special_tokens=False).input_ids
    full2 = sd2(prompt, add_special_tokens=False).input_ids
    ids1 = sd1(prompt, padding="max_length", max_length=MAX_LEN, truncation=True).input_ids
    ids2 = sd2(prompt, padding="max_length", max_length=MAX_LEN, truncation=True).input_ids
    assert len(ids1) == MAX_LEN and len(ids2) == MAX_LEN
    # the documented composition, so a reader can rely on it
    assert ids1 == ([49406] + full[:75] + [49407] + [49407] * MAX_LEN)[:MAX_LEN]
    assert ids2 == ([49406] + full2[:75] + [49407] + [0] * MAX_LEN)[:MAX_LEN]
    return {
        "name": name,
        "prompt": prompt,
        "prompt_utf8_hex": prompt.encode("utf-8").hex(),
        "n_tokens": len(full),
        "ids_full": full,
        "ids_sd1": ids1,
        "ids_sd2": ids2,
        "n_tokens_sd2": len(full2),
        "ids_full_sd2": full2,
        "sd2_differs_beyond_padding": full2 != full,
        "truncated": len(full) > 75,
        "tokens": sd1.convert_ids_to_tokens(full),
        "ascii": prompt.isascii(),
    }


def check_published_ids(sd1, sd2, path):
    """Compares the tokenizers with a published tokenizer case file (same
    fields); returns a summary for the reference block."""
    with open(path, encoding="utf-8") as f:
        published = json.load(f)["cases"]
    bad = []
    for c in published:
        prompt = bytes.fromhex(c["prompt_utf8_hex"]).decode("utf-8")
        got = tokenizer_case(sd1, sd2, c["name"], prompt)
        for k in ("ids_sd1", "ids_sd2", "ids_full", "ids_full_sd2"):
            if got[k] != c[k]:
                bad.append(f"{c['name']}:{k}")
    print(f"published tokenizer cases: {len(published)} prompts, {len(bad)} disagreements {bad[:5]}")
    return {
        "what": "these tokenizers reproduce the ids of the published tokenizer.json cases (made by a separate port)",
        "prompts": len(published),
        "disagreements": bad,
    }


def make_tokenizer_cases(vocab_dir, out_dir, published=None):
    import regex
    import transformers

    sd1, sd2 = load_tokenizers(vocab_dir)
    cases = []
    names = set()
    for name, prompt in extra_prompts(sd1):
        assert name not in names, name
        names.add(name)
        assert "\x00" not in prompt
        cases.append(tokenizer_case(sd1, sd2, name, prompt))
    doc = {
        "title": "CLIP tokenizer golden ids, extra prompts (odd input)",
        "format": "one entry per prompt, same fields as the shared tokenizer cases; ids are CLIP BPE vocabulary ids",
        "fields": {
            "prompt": "the text passed to the tokenizer (JSON string; prompt_utf8_hex = its UTF-8 bytes, the authority)",
            "ids_full": "SD1 tokenizer, untruncated, without <|startoftext|>/<|endoftext|>; n_tokens = its length",
            "ids_sd1": "tokenizer(prompt, padding='max_length', max_length=77, truncation=True).input_ids, SD1.x tokenizer: [49406] + ids_full[:75] + [49407], padded with 49407",
            "ids_sd2": "the same for the SD2.x tokenizer (pad_token '!' = id 0, an added special token: every '!' in the text becomes id 0), padded with 0",
            "ids_full_sd2": "SD2 tokenizer, untruncated, without start/end; n_tokens_sd2 = its length",
            "sd2_differs_beyond_padding": "ids_full_sd2 != ids_full",
            "truncated": "n_tokens > 75",
            "tokens": "SD1 token strings (byte-level unicode, '</w>' = end of word), for debugging",
            "ascii": "the prompt is plain ASCII",
        },
        "reference": {
            "implementation": "transformers.CLIPTokenizer (slow, Python), ftfy not installed; SD1: CLIPTokenizer(vocab.json, merges.txt); SD2: CLIPTokenizer(vocab.json, merges.txt, pad_token='!')",
            "generator": "tests/gen/make_text_cases.py",
            "transformers": transformers.__version__,
            "regex_module": regex.__version__,
            "python": platform.python_version(),
            "unicodedata": unicodedata.unidata_version,
        },
        "cases": cases,
    }
    if published:
        doc["reference"]["published_cases_check"] = check_published_ids(sd1, sd2, published)
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "tokenizer-extra.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {path}: {len(cases)} prompts")
    return sd1, sd2


# ---------------------------------------------------------------- encoders

SD15_CONFIG = {
    # openai/clip-vit-large-patch14 text model, as in SD 1.x text_encoder/config.json
    "architectures": ["CLIPTextModel"],
    "attention_dropout": 0.0,
    "bos_token_id": 0,
    "dropout": 0.0,
    "eos_token_id": 2,
    "hidden_act": "quick_gelu",
    "hidden_size": 768,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "model_type": "clip_text_model",
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "pad_token_id": 1,
    "projection_dim": 768,
    "torch_dtype": "float32",
    "vocab_size": 49408,
}

SD21_CONFIG = {
    # stabilityai/stable-diffusion-2-1 text_encoder/config.json (OpenCLIP ViT-H/14
    # text tower without its last block)
    "architectures": ["CLIPTextModel"],
    "attention_dropout": 0.0,
    "bos_token_id": 0,
    "dropout": 0.0,
    "eos_token_id": 2,
    "hidden_act": "gelu",
    "hidden_size": 1024,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "intermediate_size": 4096,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "model_type": "clip_text_model",
    "num_attention_heads": 16,
    "num_hidden_layers": 23,
    "pad_token_id": 1,
    "projection_dim": 512,
    "torch_dtype": "float32",
    "vocab_size": 49408,
}


def build_model(config_dict):
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(**{k: v for k, v in config_dict.items() if k not in ("architectures", "model_type")})
    with torch.no_grad():
        model = CLIPTextModel(cfg)
        model.eval()
        sd = model.state_dict()
        names = []
        for name, t in sd.items():
            if name.endswith("position_ids"):
                continue  # a buffer (arange), not a weight
            names.append(name)
            t.copy_(torch.from_numpy(synth_weights.synth(name, tuple(t.shape))))
    return model, names


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
        "first8": [float(v) for v in x.ravel()[:8]],
    }


def forward(model, ids):
    import torch

    dtype = next(model.parameters()).dtype
    saved = torch.get_default_dtype()
    # transformers 4.36 builds the causal mask with torch.full(finfo(model
    # dtype).min) in the default dtype, which overflows for float64 unless the
    # default dtype is float64 too.
    torch.set_default_dtype(dtype)
    try:
        with torch.no_grad():
            out = model(input_ids=ids, output_hidden_states=True)
            last = out.last_hidden_state
            # diffusers 0.25.1 encode_prompt, clip_skip=1
            skip1 = model.text_model.final_layer_norm(out.hidden_states[-2])
    finally:
        torch.set_default_dtype(saved)
    assert last.dtype == dtype and skip1.dtype == dtype
    return last.numpy(), skip1.numpy()


def make_encoder_case(case, config_dict, prompts, tokenizer, flavor, out_dir, crosscheck=None):
    import torch
    import transformers

    t0 = time.time()
    model, names = build_model(config_dict)
    build_s = time.time() - t0
    enc = [tokenizer(p, padding="max_length", max_length=MAX_LEN, truncation=True).input_ids for p in prompts]
    n_untrunc = [len(tokenizer(p, add_special_tokens=False).input_ids) for p in prompts]
    ids = torch.tensor(enc, dtype=torch.int64)

    torch.set_num_threads(2)
    model.double()
    t0 = time.time()
    last64, skip64 = forward(model, ids)
    f64_s = time.time() - t0

    model.float()
    last32, skip32 = forward(model, ids)
    # one prompt, float32, 2 threads: best of 5 after a warm-up
    one = ids[:1]
    forward(model, one)
    load_before = os.getloadavg()[0]
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        forward(model, one)
        times.append(time.perf_counter() - t0)

    os.makedirs(out_dir, exist_ok=True)
    np.save(os.path.join(out_dir, "ids.npy"), ids.numpy().astype(np.int64))
    np.save(os.path.join(out_dir, "expected.npy"), last64.astype(np.float32))
    np.save(os.path.join(out_dir, "expected_skip1.npy"), skip64.astype(np.float32))
    with open(os.path.join(out_dir, "config.json"), "w", encoding="utf-8") as f:
        json.dump(dict(config_dict, transformers_version=transformers.__version__), f, indent=2, sort_keys=True)
        f.write("\n")

    n_params = sum(int(np.prod(p.shape)) for p in model.parameters())
    manifest = {
        "case": case,
        "model": "transformers CLIPTextModel, synthetic weights",
        "config": "config.json",
        "dims": {k: config_dict[k] for k in ("vocab_size", "hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers", "max_position_embeddings", "hidden_act", "layer_norm_eps", "projection_dim")},
        "weights_spec": "synthetic-weights specification version 1 (tools/synth_weights.py), NAME = the transformers CLIPTextModel state_dict key; the position_ids buffer is not a weight",
        "weights_written": False,
        "n_weight_tensors": len(names),
        "n_params": n_params,
        "tokenizer": {
            "flavor": flavor,
            "call": "tokenizer(prompt, padding='max_length', max_length=77, truncation=True)",
            "implementation": "transformers.CLIPTokenizer (slow), ftfy not installed" + (", pad_token='!'" if flavor == "sd2" else ""),
        },
        "prompts": prompts,
        "ids": {"file": "ids.npy", "dtype": "int64", "shape": list(ids.shape), "n_tokens_untruncated": n_untrunc},
        "expected": dict(
            {
                "file": "expected.npy",
                "what": "last_hidden_state = final_layer_norm(output of the last encoder layer) (diffusers prompt_embeds, clip_skip None); computed in float64, stored rounded to float32",
                "dtype": "float32",
                "shape": list(last64.shape),
            },
            **stats(last64),
        ),
        "expected_skip1": dict(
            {
                "file": "expected_skip1.npy",
                "what": "diffusers 0.25.1 encode_prompt clip_skip=1: text_model.final_layer_norm(hidden_states[-2]); float64, stored as float32",
                "dtype": "float32",
                "shape": list(skip64.shape),
            },
            **stats(skip64),
        ),
        "compute": {
            "implementation": "CLIPTextModel(CLIPTextConfig(...)) with model.double(), input_ids only (no attention_mask, as SD pipelines call it), output_hidden_states=True; torch default dtype float64 during the call (transformers 4.36 builds the causal mask in the default dtype)",
            "float64_forward_seconds": round(f64_s, 2),
            "build_seconds": round(build_s, 2),
            "threads": 2,
        },
        "float32_torch": {
            "what": "the same model and ids in float32 (model.float()), compared with the float64 result: rel L2 ||a-b||/||b||",
            "rel_l2_last_hidden_state": rel_l2(last32, last64),
            "rel_l2_skip1": rel_l2(skip32, skip64),
            "max_abs_diff_last_hidden_state": float(np.abs(last32.astype(np.float64) - last64).max()),
            "rel_l2_of_stored_float32_rounding": rel_l2(last64.astype(np.float32), last64),
        },
        "timing_float32_one_prompt": {
            "what": "torch float32 forward of 1 prompt (1x77), torch.set_num_threads(2), best of 5 after a warm-up (output_hidden_states=True); wall time, so other load on the machine inflates it (load_average_1min)",
            "seconds": round(min(times), 4),
            "all_seconds": [round(t, 4) for t in times],
            "cpu": platform.processor() or platform.machine(),
            "torch_num_threads": torch.get_num_threads(),
            "load_average_1min": round(load_before, 2),
            "cpu_count": os.cpu_count(),
        },
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
        "generator": "tests/gen/make_text_cases.py",
    }
    if crosscheck:
        manifest["cross_check_small"] = dict(
            {
                "what": "this generator's model set-up (transformers CLIPTextModel, weights by name, float64) run on a small published case made by a separate implementation (numpy port), with that case's weight file: rel L2 to its float64 outputs",
            },
            **crosscheck,
        )
        print(f"  cross-check {crosscheck['case']}: rel L2 {crosscheck['rel_l2_last_hidden_state']:.2e}")
    with open(os.path.join(out_dir, "manifest.json"), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(
        f"wrote {out_dir}: f32 vs f64 rel L2 last {manifest['float32_torch']['rel_l2_last_hidden_state']:.3e}"
        f" skip1 {manifest['float32_torch']['rel_l2_skip1']:.3e}; f32 1 prompt {min(times):.3f}s; f64 {f64_s:.1f}s"
    )


def time_float32(config_dict, ids, repeats):
    """Best wall time of a float32 forward of IDS at 2 threads."""
    import torch

    torch.set_num_threads(2)
    model, _ = build_model(config_dict)
    forward(model, ids)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        forward(model, ids)
        times.append(time.perf_counter() - t0)
    return min(times), times


def crosscheck_tiny(case_dir, tokenizer):
    """Runs this script's pipeline (transformers model, synthetic weights by
    name, the real tokenizer) on a small published case made by a separate
    implementation and reports the agreement."""
    import torch
    from safetensors.numpy import load_file

    with open(os.path.join(case_dir, "config.json"), encoding="utf-8") as f:
        cfg = json.load(f)
    with open(os.path.join(case_dir, "manifest.json"), encoding="utf-8") as f:
        man = json.load(f)
    model, names = build_model(cfg)
    stored = load_file(os.path.join(case_dir, "weights.safetensors"))
    assert sorted(stored) == sorted(names), "tensor names differ"
    same = [k for k in names if stored[k].dtype == np.float32]
    mism = [k for k in same if not np.array_equal(stored[k], synth_weights.synth(k, stored[k].shape))]
    assert not mism, f"synthetic values differ from the stored file: {mism[:3]}"
    # the stored file is authoritative (it may hold rounded tensors)
    sd = model.state_dict()
    with torch.no_grad():
        for k in names:
            sd[k].copy_(torch.from_numpy(stored[k].astype(np.float32)))
    ids_ref = np.load(os.path.join(case_dir, "ids.npy"))
    ids = [tokenizer(p, padding="max_length", max_length=MAX_LEN, truncation=True).input_ids for p in man["prompts"]]
    assert np.array_equal(np.array(ids, dtype=np.int64), ids_ref), "tokenizer ids differ"
    model.double()
    last, skip = forward(model, torch.from_numpy(ids_ref))
    return {
        "case": os.path.basename(os.path.normpath(case_dir)),
        "ids_equal": True,
        "f32_tensors_equal_to_synth": len(same),
        "rel_l2_last_hidden_state": rel_l2(last, np.load(os.path.join(case_dir, "expected_f64.npy"))),
        "rel_l2_skip1": rel_l2(skip, np.load(os.path.join(case_dir, "expected_skip1_f64.npy"))),
    }


SD15_PROMPTS = ["a photo of an astronaut riding a horse on mars", ""]
SD21_PROMPTS = [
    "a majestic lion jumping from a big stone at night, highly detailed!",
    "masterpiece, best quality, ultra detailed, 8k wallpaper, cinematic lighting, "
    "a lone knight standing on a cliff above a stormy sea, dramatic clouds, rim light, "
    "volumetric fog, intricate armor with gold filigree, flowing red cape, long shadows, "
    "oil painting by a renaissance master, sharp focus, depth of field, award winning, "
    "trending on artstation, concept art, matte painting, epic composition, golden hour",
]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vocab", default=os.path.join(ROOT, "tests", "data", "vocab", "clip"))
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "data", "text"))
    ap.add_argument("--only", choices=["tokenizer", "sd15", "sd21"], action="append")
    ap.add_argument(
        "--timing-only",
        action="store_true",
        help="write nothing: time the float32 forward of one prompt (2 threads) for the chosen encoders and print it, for a comparison run on a quiet machine",
    )
    ap.add_argument(
        "--crosscheck",
        metavar="DIR",
        help="folder holding the published text cases (tokenizer.json, clip-tiny-sd1/, clip-tiny-sd2/) to cross-check the tokenizers and the encoder set-up against (optional)",
    )
    args = ap.parse_args()
    require_no_ftfy()
    for f in ("vocab.json", "merges.txt"):
        if not os.path.isfile(os.path.join(args.vocab, f)):
            sys.exit(f"no {f} in {args.vocab} (give the CLIP vocabulary folder with --vocab)")
    only = set(args.only or ["tokenizer", "sd15", "sd21"])
    sd1, sd2 = load_tokenizers(args.vocab)
    if args.timing_only:
        import torch

        for key, cfg, prompt, tok in (("sd15", SD15_CONFIG, SD15_PROMPTS[0], sd1), ("sd21", SD21_CONFIG, SD21_PROMPTS[0], sd2)):
            if key in only:
                ids = torch.tensor([tok(prompt, padding="max_length", max_length=MAX_LEN, truncation=True).input_ids])
                best, times = time_float32(cfg, ids, 10)
                print(json.dumps({"encoder": key, "best_seconds": round(best, 4), "all": [round(t, 4) for t in times], "load_average_1min": os.getloadavg()[0]}))
        return
    if "tokenizer" in only:
        published = os.path.join(args.crosscheck, "tokenizer.json") if args.crosscheck else None
        make_tokenizer_cases(args.vocab, args.out, published)
    if "sd15" in only:
        cc = crosscheck_tiny(os.path.join(args.crosscheck, "clip-tiny-sd1"), sd1) if args.crosscheck else None
        make_encoder_case("clip-sd15-full", SD15_CONFIG, SD15_PROMPTS, sd1, "sd1", os.path.join(args.out, "clip-sd15-full"), cc)
    if "sd21" in only:
        n = len(sd2(SD21_PROMPTS[1], add_special_tokens=False).input_ids)
        assert n > 75, n
        cc = crosscheck_tiny(os.path.join(args.crosscheck, "clip-tiny-sd2"), sd2) if args.crosscheck else None
        make_encoder_case("clip-sd21-full", SD21_CONFIG, SD21_PROMPTS, sd2, "sd2", os.path.join(args.out, "clip-sd21-full"), cc)


if __name__ == "__main__":
    main()
