/* sdunet text encoding: the CLIP tokenizer and the Stable Diffusion 1.x /
 * 2.x text encoders, prompt -> the (batch, 77, dim) context the UNet takes.
 *
 * Same contracts as sdunet.h: float32 tensors owned by the caller; every
 * function that can fail returns an sdunet_status and fills `err` with a
 * one-line message; nothing prints, exits or aborts. A text encoder may be
 * used from one thread at a time: a second concurrent call on the same
 * object returns SDUNET_E_BUSY. */
#ifndef SDUNET_TEXT_H
#define SDUNET_TEXT_H

#include "sdunet.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct sdunet_text sdunet_text;

typedef struct sdunet_text_options {
    int threads;           /* 0 = SDUNET_THREADS, else online CPUs */
    const char *variant;   /* diffusers folders: "fp16" loads text_encoder/model.fp16.safetensors */
    const char *config;    /* a transformers CLIPTextConfig config.json, or a preset ("sd15",
                              "sd21"); NULL: the folder's text_encoder/config.json, else
                              inferred from the tensor shapes */
    const char *tokenizer; /* folder holding vocab.json + merges.txt (and optionally
                              special_tokens_map.json / tokenizer_config.json); NULL: a
                              diffusers folder's tokenizer/ when present, else the built-in
                              CLIP vocabulary */
} sdunet_text_options;

void sdunet_text_options_default(sdunet_text_options *opt);

/* Loads a text encoder from `path`:
 *   - a diffusers pipeline folder (text_encoder/ + tokenizer/), or a
 *     text_encoder folder itself (config.json + model.safetensors);
 *   - a single-file checkpoint (.safetensors or .ckpt): SD1.x
 *     (cond_stage_model.transformer.text_model.*) or SD2.x (OpenCLIP names
 *     under cond_stage_model.model.*; diffusers runs 23 of its 24 blocks);
 *   - a standalone text-encoder weight file with transformers' names.
 * Weights in F32, F16, BF16 or F64. The family decides the tokenizer's
 * padding: SD1 pads with <|endoftext|> (49407); SD2 (OpenCLIP files, width
 * 1024) pads with "!" (id 0), which also makes every "!" in a prompt its
 * own token 0, as transformers does for SD2 (a tokenizer folder's
 * special_tokens_map.json overrides this). A file with no text encoder is
 * SDUNET_E_WEIGHTS naming what was looked for; a folder without the weight
 * file, SDUNET_E_IO. */
sdunet_status sdunet_text_load(const char *path, const sdunet_text_options *opt, sdunet_text **out,
                               sdunet_error *err);

/* The deterministic synthetic weights of spec/synthetic-weights.md:
 * "sd15" (CLIP ViT-L/14, 12 x 768) or "sd21" (OpenCLIP ViT-H/14 as
 * diffusers runs it, 23 x 1024), or a config.json path (SD1 padding unless
 * hidden_size is 1024). */
sdunet_status sdunet_text_load_synthetic(const char *preset, const sdunet_text_options *opt,
                                         sdunet_text **out, sdunet_error *err);

typedef enum sdunet_long_prompt {
    /* As diffusers: the first 75 tokens, the rest dropped (context length 77). */
    SDUNET_LONG_TRUNCATE = 0,
    /* As AUTOMATIC1111 / stable-diffusion.cpp: 75-token windows, each
     * encoded as its own 77 and concatenated (77, 154, 231, ...). */
    SDUNET_LONG_CHUNK = 1
} sdunet_long_prompt;

typedef enum sdunet_prompt_syntax {
    SDUNET_SYNTAX_PLAIN = 0, /* the prompt is plain text (exact to diffusers) */
    /* AUTOMATIC1111's emphasis: (text) x1.1, [text] /1.1, (text:1.3), \( \)
     * \[ \] escapes, BREAK starts a new window; each token's vector is
     * scaled by its weight and the window's mean restored. */
    SDUNET_SYNTAX_A1111 = 1
} sdunet_prompt_syntax;

typedef struct sdunet_text_params {
    int clip_skip; /* 0 = last layer; N: the hidden state N layers from the end, through the
                      final LayerNorm (diffusers' clip_skip; AUTOMATIC1111's "Clip skip" is
                      this + 1) */
    sdunet_long_prompt long_prompt;
    sdunet_prompt_syntax syntax;
} sdunet_text_params;

void sdunet_text_params_default(sdunet_text_params *p);

/* The context length encoding these prompts gives: 77 * windows, where
 * windows is 1 for SDUNET_LONG_TRUNCATE and the largest window count of
 * the batch for SDUNET_LONG_CHUNK (shorter prompts get empty windows). */
sdunet_status sdunet_text_context_len(sdunet_text *t, const char *const *prompts, int batch,
                                      const sdunet_text_params *p, int *len, sdunet_error *err);

/* Encodes `batch` UTF-8 prompts into out (batch, len, dim), len from
 * sdunet_text_context_len. A prompt that is not valid UTF-8 is
 * SDUNET_E_INVALID_ARG naming the byte offset. p may be NULL (defaults). */
sdunet_status sdunet_text_encode(sdunet_text *t, const char *const *prompts, int batch,
                                 const sdunet_text_params *p, float *out, int len,
                                 sdunet_error *err);

/* Encodes token ids directly: ids (batch, len), len <= the encoder's 77
 * positions, each id below the vocabulary size; out (batch, len, dim). */
sdunet_status sdunet_text_encode_ids(sdunet_text *t, const int32_t *ids, int batch, int len,
                                     int clip_skip, float *out, sdunet_error *err);

/* The ids the encoder sees for one prompt: window by window, each
 * <|startoftext|> + 75 tokens + <|endoftext|> + padding. Writes up to cap
 * ids; *n gets 77 * windows (also when cap is too small, with
 * SDUNET_E_INVALID_ARG); *n_tokens, if non-NULL, the prompt's token count
 * before truncation. */
sdunet_status sdunet_text_tokenize(sdunet_text *t, const char *prompt, const sdunet_text_params *p,
                                   int32_t *ids, int cap, int *n, int *n_tokens, sdunet_error *err);

/* What truncation drops from a prompt (SDUNET_LONG_TRUNCATE keeps the first
 * window): *n_dropped tokens, and their text (transformers' decode) in buf
 * (NUL terminated, cut to buflen; "" when nothing is dropped). */
sdunet_status sdunet_text_dropped(sdunet_text *t, const char *prompt, const sdunet_text_params *p,
                                  int *n_dropped, char *buf, size_t buflen, sdunet_error *err);

/* The vocabulary entry of a token id (e.g. "photo</w>"), or NULL. */
const char *sdunet_text_token_piece(const sdunet_text *t, int32_t id);

/* Readable text of n token ids (transformers' decode) into buf (NUL
 * terminated, cut to buflen). */
sdunet_status sdunet_text_decode(const sdunet_text *t, const int32_t *ids, int n, char *buf,
                                 size_t buflen, sdunet_error *err);

typedef struct sdunet_text_info {
    int hidden, layers, heads, ffn, vocab, positions;
    int quick_gelu;     /* 1: SD1's CLIP activation; 0: exact GELU (SD2) */
    const char *family; /* "sd1" or "sd2" (tokenizer padding) */
    int32_t pad_id;
    int64_t n_params;
    int threads;
    const char *isa;
} sdunet_text_info;

void sdunet_text_get_info(const sdunet_text *t, sdunet_text_info *info);

sdunet_status sdunet_text_set_threads(sdunet_text *t, int threads, sdunet_error *err);

/* NULL is a no-op. */
void sdunet_text_free(sdunet_text *t);

#ifdef __cplusplus
}
#endif
#endif /* SDUNET_TEXT_H */
