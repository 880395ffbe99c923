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

/* A model config's text: sd_json_parse, with a syntax error reported as
 * SDUNET_E_CONFIG and its message prefixed by `what` ("config: ..."). */
sdunet_status sd_json_parse_config(const char *text, size_t len, const char *what, sd_json **out,
                                   sdunet_error *err);

/* Python's json module writes NaN, Infinity and -Infinity, which are not
 * JSON (diffusers' configs can hold them, e.g. lambda_min_clipped: -Infinity).
 * Returns a malloc'd copy of the text with those literals, outside strings,
 * replaced by null (*out_len its length), for sd_json_parse; NULL when out
 * of memory. A key whose value was one of them then reads as null. */
char *sd_json_from_python(const char *text, size_t len, size_t *out_len);

/* Object member by key or NULL (also NULL if obj is not an object). */
const sd_json *sd_json_get(const sd_json *obj, const char *key);

/* Whether v is absent, null or false. */
int sd_json_null_or_false(const sd_json *v);

/* A model config's member `key` of obj into *out: absent or null leaves
 * *out as it is; another type, or an integer out of lo..hi, a float not
 * finite, is SDUNET_E_CONFIG "WHAT: 'KEY' must be ...". */
sdunet_status sd_json_config_int(const sd_json *obj, const char *key, int lo, int hi,
                                 const char *what, int *out, sdunet_error *err);
sdunet_status sd_json_config_bool(const sd_json *obj, const char *key, const char *what, int *out,
                                  sdunet_error *err);
sdunet_status sd_json_config_float(const sd_json *obj, const char *key, const char *what,
                                   float *out, sdunet_error *err);

#endif
