/* The CLI's shared helpers. Every command is `int cmd_NAME(argc, argv)`
 * with argv starting after the command word; it returns the exit status. */
#ifndef SD_CLI_H
#define SD_CLI_H

#include "common.h"
#include "engine/layers.h"

/* Seconds on a monotonic clock. */
double now_s(void);
/* Prints "sdunet: error: ..." on stderr and returns 1. */
int die(const char *fmt, ...) SD_PRINTF(1, 2);

/* Progress messages: printed on stderr only when it is a terminal, so a
 * failing command in a script leaves exactly one line (the error). */
void progress(const char *fmt, ...) SD_PRINTF(1, 2);

/* --flag value pairs (is_flag: takes no value). */
typedef struct opt {
    const char *name;
    const char *value;
    int is_flag;
    int seen;
} opt;

/* Parses argv into opts; sets *want_help on --help/-h. Returns non-zero
 * (after printing the error) on unknown, repeated or incomplete options. */
int parse_opts(int argc, char **argv, opt *opts, int nopts, int *want_help);
/* The value given for `name`, or NULL. */
const char *get(opt *opts, int n, const char *name);
/* 0 when `path` can be written (checked by opening it for appending; a
 * file that did not exist is removed again), else the error printed, 1. */
int check_writable(const char *path);
/* Integer in lo..hi, else an error naming `what`. */
int parse_int(const char *s, const char *what, int lo, int hi, int *out);
/* Comma-separated finite numbers, at most cap. */
int parse_timesteps(const char *s, float *out, int cap, int *n);

/* Loads a model from a file (model, config, variant) or synthetic weights,
 * reporting progress on a terminal and the error on failure (returns 1). */
struct sdunet_model;
int load_model(const char *model, const char *config, const char *variant, const char *synthetic,
               int threads, int allow_nonfinite, struct sdunet_model **m);
/* The --weights value s ("f32", "f16", "bf16", "auto"; NULL: $SDUNET_WEIGHTS,
 * else auto) as an sdunet_weights value; prints the error and returns 1 on
 * anything else. */
int parse_weights(const char *s, int *out);
/* The fast mode (sdunet_options.fast): 1 when the --fast flag was given
 * (flag != 0), else $SDUNET_FAST ("1" on, "0" or empty or unset off);
 * prints the error and returns 1 on any other value. */
int parse_fast(int flag, int *out);
/* load_model with a weight storage (sdunet_weights) and the fast mode;
 * load_model takes them from $SDUNET_WEIGHTS and $SDUNET_FAST. */
int load_model_w(const char *model, const char *config, const char *variant, const char *synthetic,
                 int threads, int allow_nonfinite, int weights, int fast, struct sdunet_model **m);
/* Prints a profile's table by op kind (time, share, GFLOP, GFLOP/s, calls)
 * on stdout; returns its total FLOPs. */
double print_breakdown(const sd_prof *prof);
/* The profile's time by op kind and shape (norms and element-wise ops are
 * in print_breakdown's table only), longest first. */
void print_shapes(const sd_prof *prof);
/* Prints "checksum: sum=... l2=... max_abs=..." for an output on stdout. */
void print_checksum(const float *y, size_t n);

int cmd_sample(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_encode_text(int argc, char **argv);
int cmd_bench_text(int argc, char **argv); /* sdunet bench --text */
int cmd_decode(int argc, char **argv);
int cmd_encode_image(int argc, char **argv);
int cmd_txt2img(int argc, char **argv);
int cmd_img2img(int argc, char **argv);
int cmd_demo_pipeline(int argc, char **argv); /* sdunet demo (without --unet) */

#endif
