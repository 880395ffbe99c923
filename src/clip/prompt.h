/* Prompts to encoder windows: tokenizing a prompt (plain, or with
 * AUTOMATIC1111's emphasis syntax), cutting the tokens into 75-token
 * windows and laying each out as <|startoftext|> + tokens + <|endoftext|>
 * + padding, with a weight per position. */
#ifndef SD_CLIP_PROMPT_H
#define SD_CLIP_PROMPT_H

#include "clip/tokenizer.h"
#include "common.h"

#define SD_CLIP_WINDOW 77 /* positions per window */
#define SD_CLIP_CHUNK 75  /* prompt tokens per window */

/* A piece of an AUTOMATIC1111-syntax prompt: text (not NUL-terminated)
 * with its weight, or a BREAK. */
typedef struct sd_prompt_piece {
    const char *text;
    size_t len;
    double weight;
    int is_break;
} sd_prompt_piece;

/* Parses AUTOMATIC1111's emphasis syntax as its parse_prompt_attention
 * does: "(x)" multiplies x's weight by 1.1, "[x]" divides by 1.1,
 * "(x:1.3)" multiplies by 1.3, "\(" "\)" "\[" "\]" "\\" are the literal
 * characters (a lone "\" disappears), unbalanced brackets apply to the end,
 * "BREAK" (a whole word) separates windows, neighbouring pieces of equal
 * weight are merged (their texts concatenated). *out and *buf (which the
 * pieces' texts point into) are malloc'd: free both with free. */
sdunet_status sd_prompt_parse_a1111(const char *text, size_t len, sd_prompt_piece **out, size_t *n,
                                    char **buf, sdunet_error *err);

/* A prompt as windows: n_windows * 77 ids and weights, malloc'd. */
typedef struct sd_prompt_windows {
    int32_t *ids;
    float *weights;
    int n_windows;
    size_t n_tokens;  /* prompt tokens (all windows, before any truncation) */
    int weighted;     /* some weight differs from 1 */
    int32_t *dropped; /* truncate mode: the tokens that did not fit, malloc'd or NULL */
    size_t n_dropped;
} sd_prompt_windows;

/* Tokenizes `prompt` (syntax 0 plain, 1 AUTOMATIC1111) into windows;
 * chunk = 0 keeps only the first window (diffusers' truncation) and
 * records what was dropped. */
sdunet_status sd_prompt_windows_make(const sd_tokenizer *tok, const char *prompt, size_t len,
                                     int syntax, int chunk, sd_prompt_windows *w,
                                     sdunet_error *err);
void sd_prompt_windows_free(sd_prompt_windows *w);

/* AUTOMATIC1111's emphasis on one encoded window z (77 x dim): each row
 * scaled by its weight, then the whole window by old mean / new mean. */
void sd_prompt_apply_weights(float *z, int dim, const float *weights);

#endif
