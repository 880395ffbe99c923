#!/bin/sh
# The whole txt2img, 512x512, 20 steps of Euler a, guidance 7.5, full-size
# synthetic SD1.5 single-file checkpoint: sdunet txt2img vs
# stable-diffusion.cpp's CLI (ggml, CPU backend), interleaved, with each
# phase's time and peak RSS. Both read the same file, written once by
# `sdunet synth --checkpoint` (DTYPE f32 or f16, ~4.3 or ~2.1 GB) into
# CKPT_DIR. The two pictures differ (each tool has its own random numbers);
# this compares speed and memory only. Needs `make` and /usr/bin/time.
#
# SDCPP is a stable-diffusion.cpp CLI built from source (never downloaded
# nor committed here): clone leejet/stable-diffusion.cpp with its ggml
# submodule, then
#   cmake -S stable-diffusion.cpp -B sdcpp-build -DCMAKE_BUILD_TYPE=Release \
#         -DGGML_NATIVE=ON -DSD_WEBP=OFF -DSD_WEBM=OFF
#   cmake --build sdcpp-build --target sd-cli -j2
# and pass SDCPP=sdcpp-build/bin/sd-cli (older trees name it `sd`).
# SDCPP_ARGS are extra arguments for it; the default --eager-load reads all
# weights before generating, as sdunet does, so that its phase times hold no
# loading (without it, each model's weights load on first use, inside the
# text, sampling and decoding times). On 2 busy cores one round of 20 steps
# in f16 took 31 minutes, nearly all of it sd.cpp's; STEPS=4 takes 3-6.
#
#   SDCPP=/path/to/sd-cli THREADS=2 STEPS=20 SIZE=512 ROUNDS=1 DTYPE=f16 \
#       sh bench/run_peer_sdcpp.sh
set -eu
cd "$(dirname "$0")/.."
THREADS=${THREADS:-2}
STEPS=${STEPS:-20}
SIZE=${SIZE:-512}
ROUNDS=${ROUNDS:-1}
DTYPE=${DTYPE:-f16}
SDCPP=${SDCPP:-}
SDCPP_ARGS=${SDCPP_ARGS---eager-load}
CKPT_DIR=${CKPT_DIR:-${TMPDIR:-/tmp}/sdunet-peer-sdcpp}
PROMPT="a photo of an astronaut riding a horse on mars"
case "$DTYPE" in f32 | f16) ;; *) echo "DTYPE is f32 or f16" >&2; exit 1 ;; esac
if [ -z "$SDCPP" ] || [ ! -x "$SDCPP" ]; then
    echo "set SDCPP to a stable-diffusion.cpp CLI built from source (see this script's header)" >&2
    exit 1
fi
[ -x /usr/bin/time ] || { echo "needs /usr/bin/time (GNU time)" >&2; exit 1; }
[ -x build/sdunet ] || make -s
mkdir -p "$CKPT_DIR"
CKPT=$CKPT_DIR/sd15-ckpt-$DTYPE.safetensors
if [ ! -s "$CKPT" ]; then
    ./build/sdunet synth --config sd15 --checkpoint --dtype "$DTYPE" --out "$CKPT.part"
    mv "$CKPT.part" "$CKPT"
fi
echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')  cpu: $(lscpu | sed -n 's/^Model name: *//p')  commit: $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
echo "checkpoint: $CKPT ($DTYPE)  threads $THREADS  steps $STEPS  ${SIZE}x$SIZE  sd.cpp args: $SDCPP_ARGS"
"$SDCPP" --version 2>/dev/null | head -n 2 | sed 's/^/sd.cpp: /' || true
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT INT TERM

# the first number after the pattern $1 in the lines of $2, summed
sumof() {
    sed -nE "s/.*$1[^0-9]*([0-9]+(\.[0-9]+)?).*/\1/p" "$2" |
        awk '{ s += $1; n++ } END { if (n) printf "%.2f", s; else printf "nan" }'
}
# elapsed (h:mm:ss or m:ss.ss) of /usr/bin/time -v, in seconds
wallof() {
    sed -n 's/.*Elapsed (wall clock) time.*: //p' "$1" |
        awk -F: '{ s = 0; for (i = 1; i <= NF; i++) s = s * 60 + $i; printf "%.2f", s }'
}
rssof() { awk '/Maximum resident/ { printf "%.0f", $6 / 1024 }' "$1"; }

# one row per tool and round: wall text denoise decode rss (seconds, MiB)
: >"$out/sdunet.tsv"
: >"$out/sdcpp.tsv"
r=1
while [ "$r" -le "$ROUNDS" ]; do
    echo "round $r, load average: $(cut -d' ' -f1-3 /proc/loadavg)"
    /usr/bin/time -v ./build/sdunet txt2img --model "$CKPT" --prompt "$PROMPT" \
        --width "$SIZE" --height "$SIZE" --steps "$STEPS" --guidance 7.5 --scheduler euler_a \
        --seed 1 --threads "$THREADS" --verbose --out "$out/sdunet.png" \
        >/dev/null 2>"$out/err.txt" || { cat "$out/err.txt" >&2; exit 1; }
    grep -E ': [0-9.]+ s' "$out/err.txt" | sed 's/^ */  sdunet /'
    printf '%s %s %s %s %s\n' "$(wallof "$out/err.txt")" \
        "$(sumof 'text encoding:' "$out/err.txt")" "$(sumof 'denoising:' "$out/err.txt")" \
        "$(sumof 'VAE decoding:' "$out/err.txt")" "$(rssof "$out/err.txt")" >>"$out/sdunet.tsv"
    echo "  sdunet wall $(wallof "$out/err.txt") s, peak RSS $(rssof "$out/err.txt") MiB"

    # shellcheck disable=SC2086 # SDCPP_ARGS is a list of words
    /usr/bin/time -v "$SDCPP" -m "$CKPT" -p "$PROMPT" -W "$SIZE" -H "$SIZE" --steps "$STEPS" \
        --cfg-scale 7.5 --sampling-method euler_a -s 1 -t "$THREADS" $SDCPP_ARGS \
        -o "$out/sdcpp.png" >"$out/sd.txt" 2>"$out/err.txt" ||
        { tail -n 40 "$out/sd.txt" "$out/err.txt" >&2; exit 1; }
    cat "$out/sd.txt" >>"$out/err.txt"
    grep -E 'loading tensors completed|get_learned_condition completed|sampling completed|decode_first_stage completed|generate_image completed' \
        "$out/err.txt" | sed -E 's/^.* - /  sd.cpp /'
    printf '%s %s %s %s %s\n' "$(wallof "$out/err.txt")" \
        "$(sumof 'get_learned_condition completed' "$out/err.txt")" \
        "$(sumof '- sampling completed' "$out/err.txt")" \
        "$(sumof 'decode_first_stage completed' "$out/err.txt")" "$(rssof "$out/err.txt")" >>"$out/sdcpp.tsv"
    echo "  sd.cpp wall $(wallof "$out/err.txt") s, peak RSS $(rssof "$out/err.txt") MiB"
    r=$((r + 1))
done

# medians over the rounds; "load+" is the wall time less the three phases
# (loading, process start, PNG writing), the same definition for both
med() { sort -n | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.2f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
col() { awk -v c="$2" '{ print $c }' "$1" | med; }
row() {
    w=$(col "$2" 1) t=$(col "$2" 2) d=$(col "$2" 3) v=$(col "$2" 4) m=$(col "$2" 5)
    awk -v n="$1" -v w="$w" -v t="$t" -v d="$d" -v v="$v" -v m="$m" -v s="$STEPS" 'BEGIN {
        printf "| %s | %.2f s | %.2f s | %.2f s | %.2f s | %.2f s | %.2f s | %d MiB |\n",
            n, w - t - d - v, t, d, d / s, v, w, m }'
}
echo
echo "medians over $ROUNDS round(s), $DTYPE, ${SIZE}x$SIZE, $STEPS steps, $THREADS threads:"
echo "| | load+ | text encoding | denoising | per step | VAE decode | wall total | peak RSS |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
row "sdunet txt2img" "$out/sdunet.tsv"
row "stable-diffusion.cpp" "$out/sdcpp.tsv"
awk -v a="$(col "$out/sdunet.tsv" 1)" -v b="$(col "$out/sdcpp.tsv" 1)" \
    -v c="$(col "$out/sdunet.tsv" 3)" -v d="$(col "$out/sdcpp.tsv" 3)" \
    -v e="$(col "$out/sdunet.tsv" 5)" -v f="$(col "$out/sdcpp.tsv" 5)" 'BEGIN {
    printf "sdunet / sd.cpp: wall %.2fx, denoising %.2fx, peak RSS %.2fx\n", a / b, c / d, e / f }'
