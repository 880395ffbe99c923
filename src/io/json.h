/* A small, strict JSON (RFC 8259) DOM parser for config.json and
 * safetensors headers. Bounded nesting depth; no global state. */
#ifndef SD_JSON_H
#define SD_JSON_H

#include "common.h"

typedef enum sd_json_type {
    SD_JSON_NULL,
    SD_JSON_BOOL,
    SD_JSON_NUMBER,
    SD_JSON_STRING,
    SD_JSON_ARRAY,
    SD_JSON_OBJECT
} sd_json_type;

typedef struct sd_json sd_json;
struct sd_json {
    sd_json_type type;
    int boolean;     /* BOOL */
    double number;   /* NUMBER */
    int is_int;      /* NUMBER written without fraction/exponent and fits int64 */
    int64_t integer; /* valid when is_int */
    char *string;    /* STRING: UTF-8, NUL-terminated (may contain no NULs: \u0000 is rejected) */
    size_t len;      /* STRING: byte length; ARRAY/OBJECT: element count */
    sd_json *items;  /* ARRAY elements / OBJECT values */
    char **keys;     /* OBJECT keys, in file order (duplicates rejected) */
};

#define SD_JSON_MAX_DEPTH 64

sdunet_status sd_json_parse(const char *text, size_t len, sd_json **out, sdunet_error *err);
void sd_json_free(sd_json *j);

/* Object member by key or NULL (also NULL if obj is not an object). */
const sd_json *sd_json_get(const sd_json *obj, const char *key);

#endif
