/* sdunet encode-text: prompts -> the (B, L, D) context .npy the UNet takes. */
#include "cli.h"

#include "clip/encoder.h"
#include "io/npy.h"
#include "sdunet_text.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char encode_text_help[] =
    "usage: sdunet encode-text (--model PATH | --synthetic sd15|sd21) --prompt TEXT\n"
    "                          [--prompt TEXT2 ...] --out CONTEXT.npy [options]\n"
    "\n"
    "Tokenizes the prompts with CLIP's tokenizer and runs the text encoder, writing the\n"
    "float32 context (B, 77, D) that `sdunet run --context` and `sdunet sample` take.\n"
    "\n"
    "  --model PATH          a single-file checkpoint (.safetensors/.ckpt; SD1 or SD2), a\n"
    "                        diffusers pipeline folder (text_encoder/ + tokenizer/), or a\n"
    "                        text_encoder folder\n"
    "  --synthetic PRESET    the full-size encoder on synthetic weights: sd15 (CLIP ViT-L/14)\n"
    "                        or sd21 (OpenCLIP ViT-H/14), or a config.json\n"
    "  --variant NAME        diffusers folders: text_encoder/model.NAME.safetensors (fp16)\n"
    "  --config FILE         the text encoder's config.json when it cannot be found or\n"
    "                        inferred\n"
    "  --tokenizer DIR       vocab.json + merges.txt to use (default: the folder's\n"
    "                        tokenizer/, else the built-in CLIP vocabulary)\n"
    "  --prompt TEXT         a prompt (UTF-8); repeat for a batch\n"
    "  --clip-skip N         use the hidden state N layers from the end, through the final\n"
    "                        LayerNorm (diffusers' clip_skip; AUTOMATIC1111's \"Clip skip\"\n"
    "                        is N + 1); default 0\n"
    "  --long-prompt MODE    truncate (default, as diffusers: the first 75 tokens; what is\n"
    "                        dropped is said on stderr) or chunk (75-token windows, each\n"
    "                        encoded on its own and concatenated: context 154, 231, ...)\n"
    "  --prompt-syntax S     plain (default, exact to diffusers) or a1111: (word:1.3),\n"
    "                        (word) x1.1, [word] /1.1, \\( escapes, BREAK\n"
    "  --tokens              print each prompt's token ids and pieces\n"
    "  --out FILE.npy        where to write the context\n"
    "  --threads N           worker threads (default: SDUNET_THREADS, else all CPUs)\n";

#define MAX_PROMPTS 256

int cmd_encode_text(int argc, char **argv)
{
    /* --prompt may repeat: collect those, hand the rest to parse_opts. */
    const char *prompts[MAX_PROMPTS];
    int np = 0;
    char **rest = malloc(sizeof(char *) * (size_t)(argc + 1));
    int nrest = 0;
    if (!rest)
        return die("out of memory");
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--prompt") == 0) {
            if (i + 1 >= argc) {
                free(rest);
                return die("option --prompt needs a value");
            }
            if (np == MAX_PROMPTS) {
                free(rest);
                return die("at most %d prompts", MAX_PROMPTS);
            }
            prompts[np++] = argv[++i];
        } else {
            rest[nrest++] = argv[i];
        }
    }
    opt o[] = {
        {.name = "--model"},       {.name = "--synthetic"},     {.name = "--variant"},
        {.name = "--config"},      {.name = "--tokenizer"},     {.name = "--clip-skip"},
        {.name = "--long-prompt"}, {.name = "--prompt-syntax"}, {.name = "--tokens", .is_flag = 1},
        {.name = "--out"},         {.name = "--threads"}};
    const int no = sizeof o / sizeof o[0];
    int help, rc = 1;
    int perr = parse_opts(nrest, rest, o, no, &help);
    free(rest);
    if (perr)
        return 1;
    if (help) {
        fputs(encode_text_help, stdout);
        return 0;
    }
    const char *model = get(o, no, "--model"), *synthetic = get(o, no, "--synthetic");
    const char *out_p = get(o, no, "--out");
    if (!!model == !!synthetic)
        return die("give exactly one of --model PATH or --synthetic PRESET (see --help)");
    if (np == 0)
        return die("give at least one --prompt (see --help)");
    if (!out_p && !get(o, no, "--tokens"))
        return die("give --out FILE.npy (or --tokens to see the tokens only)");
    sdunet_text_params tp;
    sdunet_text_params_default(&tp);
    if (get(o, no, "--clip-skip") &&
        parse_int(get(o, no, "--clip-skip"), "--clip-skip", 0, 1000, &tp.clip_skip))
        return 1;
    const char *lp = get(o, no, "--long-prompt"), *sx = get(o, no, "--prompt-syntax");
    if (lp && strcmp(lp, "truncate") != 0 && strcmp(lp, "chunk") != 0)
        return die("--long-prompt is truncate or chunk, not '%s'", lp);
    tp.long_prompt = lp && strcmp(lp, "chunk") == 0 ? SDUNET_LONG_CHUNK : SDUNET_LONG_TRUNCATE;
    if (sx && strcmp(sx, "plain") != 0 && strcmp(sx, "a1111") != 0)
        return die("--prompt-syntax is plain or a1111, not '%s'", sx);
    tp.syntax = sx && strcmp(sx, "a1111") == 0 ? SDUNET_SYNTAX_A1111 : SDUNET_SYNTAX_PLAIN;
    sdunet_text_options to;
    sdunet_text_options_default(&to);
    if (get(o, no, "--threads") &&
        parse_int(get(o, no, "--threads"), "--threads", 1, 1024, &to.threads))
        return 1;
    to.variant = get(o, no, "--variant");
    to.config = get(o, no, "--config");
    to.tokenizer = get(o, no, "--tokenizer");
    if (synthetic && (to.variant || to.config))
        return die("--variant and --config go with --model");
    if (out_p && check_writable(out_p)) /* fail before any work */
        return 1;

    sdunet_error err = {0};
    sdunet_text *t = NULL;
    float *ctx = NULL;
    int32_t *ids = NULL;
    progress("loading text encoder...\n");
    double t0 = now_s();
    if ((synthetic ? sdunet_text_load_synthetic(synthetic, &to, &t, &err)
                   : sdunet_text_load(model, &to, &t, &err))) {
        die("%s", err.message);
        goto done;
    }
    double t_load = now_s() - t0;
    sdunet_text_info info;
    sdunet_text_get_info(t, &info);
    for (int b = 0; b < np; b++) {
        int n_dropped = 0;
        char dropped[1024];
        if (tp.long_prompt == SDUNET_LONG_TRUNCATE) {
            if (sdunet_text_dropped(t, prompts[b], &tp, &n_dropped, dropped, sizeof dropped,
                                    &err)) {
                die("prompt %d: %s", b + 1, err.message);
                goto done;
            }
            if (n_dropped)
                fprintf(stderr,
                        "sdunet: warning: prompt %d is longer than 75 tokens; %d dropped: "
                        "\"%s\" (--long-prompt chunk keeps them)\n",
                        b + 1, n_dropped, dropped);
        }
        if (get(o, no, "--tokens")) {
            int n = 0, n_tok = 0;
            sdunet_text_tokenize(t, prompts[b], &tp, NULL, 0, &n, &n_tok, &err);
            free(ids);
            ids = malloc(sizeof *ids * (size_t)(n > 0 ? n : 1));
            if (!ids || sdunet_text_tokenize(t, prompts[b], &tp, ids, n, &n, &n_tok, &err)) {
                die("prompt %d: %s", b + 1, ids ? err.message : "out of memory");
                goto done;
            }
            printf("prompt %d: %d tokens, %d window%s\n", b + 1, n_tok, n / 77,
                   n / 77 == 1 ? "" : "s");
            for (int w = 0; w < n / 77; w++) {
                /* the window up to and including its end token; padding counted */
                int end = 1;
                while (end < 77 && ids[w * 77 + end] != 49407)
                    end++;
                for (int i = 0; i < 77 && i <= end; i++) {
                    const char *piece = sdunet_text_token_piece(t, ids[w * 77 + i]);
                    printf("  %5d %s\n", ids[w * 77 + i], piece ? piece : "?");
                }
                if (end < 76)
                    printf("  ... %d x %d (padding)\n", 76 - end, ids[w * 77 + 76]);
            }
            if (n_dropped)
                printf("  dropped: %s\n", dropped);
        }
    }
    if (out_p) {
        int len;
        if (sdunet_text_context_len(t, prompts, np, &tp, &len, &err)) {
            die("%s", err.message);
            goto done;
        }
        size_t n = (size_t)np * len * info.hidden;
        if (!(ctx = malloc(n * sizeof *ctx))) {
            die("out of memory");
            goto done;
        }
        progress("encoding %d prompt%s...\n", np, np == 1 ? "" : "s");
        t0 = now_s();
        if (sdunet_text_encode(t, prompts, np, &tp, ctx, len, &err)) {
            die("%s", err.message);
            goto done;
        }
        double t_enc = now_s() - t0;
        int64_t shape[3] = {np, len, info.hidden};
        if (sd_npy_write_f32(out_p, ctx, 3, shape, &err)) {
            die("%s", err.message);
            goto done;
        }
        printf("context: (%d,%d,%d) -> %s\n", np, len, info.hidden, out_p);
        printf("text encoder: %s, %d layers of %d, %s; load %.2f s, encode %.3f s\n", info.family,
               info.layers, info.hidden, info.isa, t_load, t_enc);
        print_checksum(ctx, n);
    }
    rc = 0;
done:
    free(ctx);
    free(ids);
    sdunet_text_free(t);
    return rc;
}

/* ---- sdunet bench --text ---- */

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static const char bench_text_help[] =
    "usage: sdunet bench --text PRESET|PATH [--prompt TEXT] [--batch B] [--runs N]\n"
    "                    [--warmup N] [--threads N] [--shapes]\n"
    "\n"
    "Times text encoding (tokenizer + encoder) of --batch copies of one prompt (default: the\n"
    "astronaut prompt): --text sd15 / sd21 runs the full-size encoder on synthetic weights,\n"
    "a path loads a checkpoint or folder. Prints the last run's breakdown by op kind (with\n"
    "--shapes also by op kind and shape), the median and minimum time, GFLOP/s and peak\n"
    "RSS; the last line is machine-readable:\n"
    "  bench: model=text family=sd1 layers=12 hidden=768 batch=1 threads=2 median_s=...\n"
    "         min_s=... gflops=... peak_rss_mb=...   (one line)\n";

int cmd_bench_text(int argc, char **argv)
{
    opt o[] = {{.name = "--text"},
               {.name = "--prompt"},
               {.name = "--batch"},
               {.name = "--runs"},
               {.name = "--warmup"},
               {.name = "--threads"},
               {.name = "--shapes", .is_flag = 1}};
    const int no = sizeof o / sizeof o[0];
    int help;
    if (parse_opts(argc, argv, o, no, &help))
        return 1;
    if (help) {
        fputs(bench_text_help, stdout);
        return 0;
    }
    const char *what = get(o, no, "--text");
    const char *prompt = get(o, no, "--prompt");
    if (!prompt)
        prompt = "a photo of an astronaut riding a horse on mars";
    int B = 1, runs = 5, warmup = 1;
    sdunet_text_options to;
    sdunet_text_options_default(&to);
    if ((get(o, no, "--batch") && parse_int(get(o, no, "--batch"), "--batch", 1, 64, &B)) ||
        (get(o, no, "--runs") && parse_int(get(o, no, "--runs"), "--runs", 1, 1000, &runs)) ||
        (get(o, no, "--warmup") &&
         parse_int(get(o, no, "--warmup"), "--warmup", 0, 1000, &warmup)) ||
        (get(o, no, "--threads") &&
         parse_int(get(o, no, "--threads"), "--threads", 1, 1024, &to.threads)))
        return 1;
    sdunet_error err = {0};
    sdunet_text *t = NULL;
    int synthetic = strcmp(what, "sd15") == 0 || strcmp(what, "sd21") == 0;
    progress("loading text encoder %s...\n", what);
    if (synthetic ? sdunet_text_load_synthetic(what, &to, &t, &err)
                  : sdunet_text_load(what, &to, &t, &err))
        return die("%s", err.message);
    sdunet_text_info info;
    sdunet_text_get_info(t, &info);
    const char **prompts = malloc(sizeof *prompts * (size_t)B);
    float *ctx = malloc(sizeof *ctx * (size_t)B * 77 * info.hidden);
    double *times = malloc(sizeof *times * (size_t)runs);
    int rc = 1;
    if (!prompts || !ctx || !times) {
        die("out of memory");
        goto done;
    }
    for (int b = 0; b < B; b++)
        prompts[b] = prompt;
    sd_prof prof; /* of the last run */
    for (int r = 0; r < warmup + runs; r++) {
        memset(&prof, 0, sizeof prof);
        sd_text_set_profile(t, r >= warmup ? &prof : NULL);
        double t0 = now_s();
        if (sdunet_text_encode(t, prompts, B, NULL, ctx, 77, &err)) {
            die("%s", err.message);
            goto done;
        }
        if (r >= warmup)
            times[r - warmup] = now_s() - t0;
    }
    sd_text_set_profile(t, NULL);
    qsort(times, (size_t)runs, sizeof *times, cmp_double);
    double med = runs % 2 ? times[runs / 2] : 0.5 * (times[runs / 2 - 1] + times[runs / 2]);
    /* multiply-adds x 2 of the projections, the MLP and the causal attention */
    double M = 77.0 * B, D = info.hidden, F = info.ffn;
    double flops = info.layers * (2 * M * (4 * D * D + 2 * D * F) + 2.0 * B * 77 * 78 * D);
    FILE *f = fopen("/proc/self/status", "r");
    double rss = 0;
    if (f) {
        char line[256];
        while (fgets(line, sizeof line, f))
            if (strncmp(line, "VmHWM:", 6) == 0)
                rss = strtod(line + 6, NULL) / 1024.0;
        fclose(f);
    }
    printf("text encoder: %s, %d layers of %d, %s, %d thread%s\n", info.family, info.layers,
           info.hidden, info.isa, info.threads, info.threads == 1 ? "" : "s");
    for (int r = 0; r < runs; r++)
        printf("  run %d: %.4f s\n", r + 1, times[r]);
    print_breakdown(&prof);
    if (get(o, no, "--shapes"))
        print_shapes(&prof);
    printf("\nbench: model=text family=%s layers=%d hidden=%d batch=%d threads=%d median_s=%.4f "
           "min_s=%.4f gflops=%.1f peak_rss_mb=%.0f\n",
           info.family, info.layers, info.hidden, B, info.threads, med, times[0],
           flops / med * 1e-9, rss);
    rc = 0;
done:
    free(prompts);
    free(ctx);
    free(times);
    sdunet_text_free(t);
    return rc;
}
