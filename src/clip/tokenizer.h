/* The CLIP BPE tokenizer of the Stable Diffusion text encoders, id-exact
 * with Hugging Face transformers' slow CLIPTokenizer as it runs without ftfy
 * (the usual diffusers setup):
 *
 *   1. the added tokens <|startoftext|>, <|endoftext|> (and, with the SD2
 *      pad token "!", every "!") are split out first, case-sensitively;
 *   2. each remaining piece is cleaned like BERT's BasicTokenizer with
 *      strip_accents=False and no punctuation split: characters of category
 *      C* (but tab, LF, CR), U+0000 and U+FFFD are removed, whitespace and Zs
 *      become spaces, CJK ideographs get a space on each side, the text is
 *      NFC-normalised, split on whitespace and each word lowercased with
 *      Python's str.lower (full mapping, final sigma);
 *   3. words are split by the pattern
 *      's|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+ (case-
 *      insensitive, so 'ſ matches 's), each match is UTF-8 mapped through
 *      bytes_to_unicode and BPE-merged by merge rank with "</w>" on its last
 *      symbol. A match spelling <|startoftext|> or <|endoftext|> is that id.
 *
 * Unicode data: Unicode 14.0.0 (Python 3.11's unicodedata).
 *
 * Input text must be valid UTF-8 (no overlong forms, surrogates or code
 * points past U+10FFFF): otherwise SDUNET_E_INVALID_ARG, with the byte
 * offset of the first bad byte in the message. Time and memory are linear
 * in the input length (BPE uses a heap), so megabyte prompts are fine.
 *
 * A tokenizer is immutable after sd_tokenizer_set_pad; it may be shared by
 * threads for tokenizing and decoding. */
#ifndef SD_CLIP_TOKENIZER_H
#define SD_CLIP_TOKENIZER_H

#include "common.h"

typedef struct sd_tokenizer sd_tokenizer;

/* Stable Diffusion's prompt length: <|startoftext|> + 75 tokens + <|endoftext|>. */
#define SD_TOKENIZER_MAX_LEN 77

/* The shipped CLIP vocabulary (openai/CLIP's bpe_simple_vocab_16e6: 49408
 * tokens, 48894 merges), configured like SD1.x: pad = <|endoftext|>. */
sdunet_status sd_tokenizer_builtin(sd_tokenizer **out, sdunet_error *err);

/* A diffusers tokenizer/ folder's vocab.json and merges.txt. Token ids come
 * from vocab.json (any order); the vocabulary must hold <|startoftext|> and
 * <|endoftext|> (bos, eos; eos is also the unknown token). merges.txt is
 * read as transformers does: whitespace-stripped, universal newlines, the
 * first line skipped, at most 48894 merge lines after it; the merge on line
 * k (counting from 0 after the header) has rank k, a line that is not two
 * whitespace-separated symbols takes a rank but merges nothing, and a pair
 * listed twice keeps its later rank. Pad is <|endoftext|>. vocab.json is
 * read with the strict JSON reader (src/io/json.h): duplicate keys, \u0000
 * and ids that are not integers in [0, INT32_MAX] are SDUNET_E_FORMAT, as
 * is merges.txt that is not valid UTF-8. */
sdunet_status sd_tokenizer_from_files(const char *vocab_json, const char *merges_txt,
                                      sd_tokenizer **out, sdunet_error *err);
/* The same from bytes in memory (neither needs a terminating NUL). */
sdunet_status sd_tokenizer_from_memory(const char *vocab_json, size_t vocab_len,
                                       const char *merges_txt, size_t merges_len,
                                       sd_tokenizer **out, sdunet_error *err);

/* Sets the pad token by its vocabulary string: "<|endoftext|>" (SD1.x) or
 * "!" (SD2.x). A pad token other than <|startoftext|> / <|endoftext|> also
 * becomes an added token split out of the text wherever it occurs, as in
 * the SD2.x tokenizer (every "!" is id 0, never part of a BPE token).
 * SDUNET_E_INVALID_ARG if the string is empty or not in the vocabulary. */
sdunet_status sd_tokenizer_set_pad(sd_tokenizer *t, const char *pad_token, sdunet_error *err);

int32_t sd_tokenizer_bos(const sd_tokenizer *t);
int32_t sd_tokenizer_eos(const sd_tokenizer *t);
int32_t sd_tokenizer_pad(const sd_tokenizer *t);

/* Token ids of `len` bytes of UTF-8 text, without bos/eos and untruncated.
 * *ids is malloc'd (free with free; NULL when *n_ids is 0). */
sdunet_status sd_tokenize(const sd_tokenizer *t, const char *utf8, size_t len, int32_t **ids,
                          size_t *n_ids, sdunet_error *err);

/* The encoder's input, max_len ids in out: out[0] = bos, then
 * ids[0 .. min(n_ids, max_len - 2)), eos, and pad up to max_len (SD: 77,
 * SD_TOKENIZER_MAX_LEN). Returns how many of the n_ids ids were kept (the
 * rest were truncated); 0 and out untouched when max_len < 2. */
size_t sd_tokenizer_pad_ids(const sd_tokenizer *t, const int32_t *ids, size_t n_ids, size_t max_len,
                            int32_t *out);

/* The vocabulary string of an id (bytes_to_unicode form, e.g. "photo</w>"),
 * NUL-terminated, owned by the tokenizer; NULL for an id not in the vocabulary. */
const char *sd_tokenizer_piece(const sd_tokenizer *t, int32_t id);

/* Readable text of ids, as transformers' convert_tokens_to_string (decode
 * without clean_up_tokenization_spaces): the pieces joined, mapped back to
 * bytes, "</w>" made a space, invalid UTF-8 replaced by U+FFFD (one per
 * maximal invalid subpart, as Python's errors="replace"), surrounding
 * whitespace stripped. Meant for showing which words were cut off at
 * max_len. *text is malloc'd and NUL-terminated (the id of byte 0x00 would
 * end it early). SDUNET_E_INVALID_ARG for an id not in the vocabulary. */
sdunet_status sd_tokenizer_decode(const sd_tokenizer *t, const int32_t *ids, size_t n_ids,
                                  char **text, sdunet_error *err);

void sd_tokenizer_free(sd_tokenizer *t);

#endif
