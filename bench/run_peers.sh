#!/bin/sh
# sdunet vs every CPU peer in one run: PyTorch eager (diffusers), ONNX Runtime
# (CPU execution provider) and OpenVINO (CPU plugin), on
#   unet   the SD1.5 UNet, 64x64 latent, 77 context tokens, batch 1 (and 2 with BATCH2=1)
#   vae    the SD VAE decoder, 64x64 latent -> 512x512 image
#   text   the SD1.5 text encoder (CLIP ViT-L/14), one prompt (sdunet vs PyTorch only)
#   pipeline  the whole txt2img (PIPE_SIZE, PIPE_STEPS of Euler a, guidance 7.5): sdunet
#          txt2img vs diffusers' StableDiffusionPipeline (PyTorch only; generation time
#          without loading: text encoding + denoising + VAE decode; not in the default
#          WORKLOADS: ~5 minutes a round at 2 threads)
# all float32 on the same synthetic weights (tools/synth_weights.py), interleaved
# round by round (sdunet, then each peer, ROUNDS times; with BATCH2=1 batch 1
# and batch 2 in the same round) at each thread count so that load from other
# work on the machine hits every engine, and both batch sizes, alike.
# Each engine's output is checked once against the float64 golden output
# (UNet: tests/data/sd15-64; VAE: tests/data/vae/vae-sd-32, a 32x32 latent;
# text: tests/data/text/clip-sd15-full) as rel L2 = ||out - ref|| / ||ref||.
# Ends with a markdown table: per workload and thread count the median over
# rounds of each engine's median seconds, fastest peer / sdunet, peak RSS and
# rel L2; and, with TILED=1, the peak RSS of a tiled 128x128-latent decode.
# Before each engine's turn, bench/host_probe measures the GFLOP/s one thread
# gets from the FMA units and the tile unit and its read bandwidth from a
# 32 MiB buffer (the "probe" column, FMA/AMX/GB/s): a busy sibling
# hyperthread of another tenant halves the first two, traffic in the shared
# L3 lowers the third, and neither hits every engine alike, so compare
# rounds taken under like figures.
#
#   sh bench/run_peers.sh
#   RUNS=1 ROUNDS=1 THREADS=2 WORKLOADS=vae sh bench/run_peers.sh     # a quick look
#
# Needs `make` and the reference environment (tools/ref-env.sh); installs
# onnxruntime, openvino and onnx into it from PyPI when missing. The peers'
# weights and ONNX exports (about 7 GB) are made once in CACHE, outside the
# repository (bench/peer_models.py; the UNet export takes ~10 GB of memory).
# Environment (defaults):
#   THREADS="1 2"  ROUNDS=3          thread counts; rounds per thread count
#   RUNS=3 WARMUP=1                  UNet: timed / warm-up forwards per engine and round
#   VAE_RUNS=1 VAE_WARMUP=1          VAE decodes (sdunet decode has no warm-up: its first is timed)
#   TEXT_RUNS=7                      text encodings (1 warm-up)
#   BATCH2=0                         1: also the UNet at batch 2 as classifier-free guidance
#                                    runs it: one latent and timestep 999, two contexts (--cfg)
#   WORKLOADS="unet vae text"        ENGINES="torch ort openvino"
#   CHECK=1                          0: skip the golden-output checks
#   TILED=1                          0: skip the tiled 1024x1024 decode's peak RSS
#   PIPE_SIZE=512 PIPE_STEPS=20      the pipeline workload's image side and steps
#   PIPE_THREADS=$THREADS PIPE_ROUNDS=$ROUNDS   its thread counts and rounds (a 1-thread
#                                    round takes ~10 minutes: PIPE_THREADS=2 keeps it out)
#   FAST=0                           1: also sdunet's fast mode (--fast) on the UNet and the VAE,
#                                    its own column; rel L2 on the same golden inputs
#   CACHE=/tmp/sdunet-peers  PY=.venv-ref/bin/python  SDUNET=build/sdunet
set -eu
cd "$(dirname "$0")/.."
THREADS=${THREADS:-"1 2"}
ROUNDS=${ROUNDS:-3}
RUNS=${RUNS:-3}
WARMUP=${WARMUP:-1}
VAE_RUNS=${VAE_RUNS:-1}
VAE_WARMUP=${VAE_WARMUP:-1}
TEXT_RUNS=${TEXT_RUNS:-7}
BATCH2=${BATCH2:-0}
WORKLOADS=${WORKLOADS:-"unet vae text"}
ENGINES=${ENGINES:-"torch ort openvino"}
CHECK=${CHECK:-1}
TILED=${TILED:-1}
PIPE_SIZE=${PIPE_SIZE:-512}
PIPE_STEPS=${PIPE_STEPS:-20}
PIPE_THREADS=${PIPE_THREADS:-$THREADS}
PIPE_ROUNDS=${PIPE_ROUNDS:-$ROUNDS}
FAST=${FAST:-0}
CACHE=${CACHE:-/tmp/sdunet-peers}
PY=${PY:-.venv-ref/bin/python}
SDUNET=${SDUNET:-build/sdunet}
PROMPT="a photo of an astronaut riding a horse on mars"
export PEER_CACHE="$CACHE" PYTHONDONTWRITEBYTECODE=1
# Same threading conditions for every process: each engine gets its thread
# count from its own option.
unset OPENBLAS_CORETYPE OPENBLAS_L2_SIZE OMP_NUM_THREADS MKL_NUM_THREADS OPENBLAS_NUM_THREADS || true

[ -x "$PY" ] || { echo "run_peers: no $PY: run tools/ref-env.sh first" >&2; exit 1; }
if ! "$PY" -c "import onnxruntime, openvino, onnx" 2>/dev/null; then
    echo "run_peers: installing onnxruntime, openvino and onnx into $(dirname "$(dirname "$PY")")" >&2
    # numpy stays at the reference environment's pin
    "$PY" -m pip install --disable-pip-version-check -q onnxruntime openvino onnx "numpy==1.26.4" >&2
fi
[ "$SDUNET" != build/sdunet ] || make -s -j2 build/sdunet >&2
PROBE_BIN=build/bench/host_probe
make -s "$PROBE_BIN" >&2 || echo "run_peers: no host probe; the log shows ? for it" >&2
mkdir -p "$CACHE"
has() { case " $1 " in *" $2 "*) return 0 ;; esac; return 1; }
for w in unet vae; do
    if has "$WORKLOADS" "$w" && { has "$ENGINES" ort || has "$ENGINES" openvino; }; then
        "$PY" bench/peer_models.py --cache "$CACHE" --only "$w" >&2
    fi
done
# sdunet's decode input: the same synthetic latents the peers use
"$PY" -c "
import sys; sys.path.insert(0, 'bench'); import numpy as np, peer_models as pm
for n in (64, 128):
    np.save('$CACHE/latent%d.npy' % n, pm.vae_latent(1, n, n))"

LOG=$(mktemp)
ERR=$(mktemp)
trap 'rm -f "$LOG" "$ERR" "$LOG.t"' EXIT
trap 'exit 1' INT TERM HUP
load() { cut -d' ' -f1-3 /proc/loadavg; }
# The host probe (bench/host_probe.c): the GFLOP/s one thread gets from the
# FMA units and the tile unit right now and its read bandwidth from a 32 MiB
# buffer, "fma/amx/GB/s" ("-" where absent, "?" without the probe).
probe() {
    p_o=$("$PROBE_BIN" 2>/dev/null) || p_o=
    echo "$(kv "$p_o" fma_gflops)/$(kv "$p_o" amx_gflops)/$(kv "$p_o" read_gbs)" | sed 's|^//$|?|'
}
# begin TEXT: probe the host, then the progress line for the engine about to run
begin() { PROBE=$(probe); echo "## $* (load $(load); probe $PROBE)" >&2; }
PROBE=?
# row KEY=VALUE...: one result line into the log, with the probe taken before it
row() { echo "row: $* probe=$PROBE" >>"$LOG"; echo "  -> $*" >&2; }
kv() { echo "$1" | tr ' ' '\n' | sed -n "s/^$2=//p" | head -n 1; }
# rel L2 of an .npy (optionally one row of it) against a float64 reference
rel() {
    "$PY" -c "
import sys, numpy as np
a = np.load(sys.argv[1]).astype(np.float64); b = np.load(sys.argv[2]).astype(np.float64)
if len(sys.argv) > 3: b = b[int(sys.argv[3])]
a = a.reshape(b.shape)
print('%.3g' % (np.linalg.norm(a - b) / np.linalg.norm(b)))" "$@"
}
# a peer: its `peer:` line, or a row saying it failed
peer() { # engine workload batch threads round args...
    p_e=$1 p_w=$2 p_b=$3 p_t=$4 p_r=$5
    shift 5
    p_key="workload=$p_w batch=$p_b threads=$p_t round=$p_r engine=$p_e"
    begin "$p_key"
    if "$PY" "bench/peer_$(case $p_e in torch) echo diffusers ;; *) echo "$p_e" ;; esac).py" \
        --workload "$p_w" --batch "$p_b" --threads "$p_t" --cache "$CACHE" "$@" >"$LOG.t" 2>"$ERR"; then
        p_l=$(grep '^peer:' "$LOG.t" | tail -n 1)
        row "$p_key median_s=$(kv "$p_l" median_s) peak_rss_mb=$(kv "$p_l" peak_rss_mb)" \
            "rel_l2=$(kv "$p_l" rel_l2) version=$(kv "$p_l" version) precision=$(kv "$p_l" precision)"
    else
        tail -n 5 "$ERR" >&2
        row "$p_key median_s=failed"
    fi
}

# the peak RSS in MiB that /usr/bin/time -f "maxrss_kb=%M" -o "$ERR" wrote
rss_mb() {
    r_k=$(sed -n 's/^maxrss_kb=//p' "$ERR")
    echo $((${r_k:-0} / 1024))
}

# unet_bench BATCH THREADS ROUND ENGINE REL_L2 [--fast]: one sdunet bench of
# the UNet as a row (batch 2 as classifier-free guidance runs it, --cfg; its
# rel L2 is that of batch 1's golden check, so it shows -)
unet_bench() {
    u_b=$1 u_t=$2 u_r=$3 u_e=$4 u_l=$5
    shift 5
    u_c=
    [ "$u_b" = 1 ] || u_c=--cfg u_l=-
    "$SDUNET" bench "$@" --synthetic sd15 --batch "$u_b" $u_c --threads "$u_t" --runs "$RUNS" \
        --warmup "$WARMUP" >"$LOG.t"
    ISA=$(sed -n 's/.* \([a-z0-9_]*\) kernels, .*/\1/p' "$LOG.t" | head -n 1)
    u_o=$(grep '^bench:' "$LOG.t")
    row "workload=unet batch=$u_b threads=$u_t round=$u_r engine=$u_e" \
        "median_s=$(kv "$u_o" median_s) peak_rss_mb=$(kv "$u_o" peak_rss_mb) rel_l2=$u_l"
}

# vae_decode THREADS ROUND ENGINE REL_L2 [--fast]: one sdunet decode of the
# 64x64 latent as a row
vae_decode() {
    v_t=$1 v_r=$2 v_e=$3 v_l=$4
    shift 4
    /usr/bin/time -f "maxrss_kb=%M" -o "$ERR" "$SDUNET" decode "$@" --synthetic sd15 \
        --latent "$CACHE/latent64.npy" --out "$CACHE/sd-decode.npy" --threads "$v_t" \
        --runs "$VAE_RUNS" >"$LOG.t"
    v_s=$(sed -n 's/^decode: median_s=\([0-9.]*\).*/\1/p; s/^decode: \([0-9.]*\) s$/\1/p' "$LOG.t")
    row "workload=vae batch=1 threads=$v_t round=$v_r engine=$v_e median_s=$v_s" \
        "peak_rss_mb=$(rss_mb) rel_l2=$v_l"
}

# txt2img THREADS ROUND ENGINE [--fast]: one timed sdunet txt2img (generation
# without loading: the sum of its --verbose phases) as a row
txt2img() {
    x_t=$1 x_r=$2 x_e=$3
    shift 3
    /usr/bin/time -f "maxrss_kb=%M" -o "$ERR" "$SDUNET" txt2img "$@" --synthetic sd15 \
        --prompt "$PROMPT" --width "$PIPE_SIZE" --height "$PIPE_SIZE" --steps "$PIPE_STEPS" \
        --scheduler euler_a --seed 1 --threads "$x_t" --verbose --out "$CACHE/sd-pipeline.png" \
        2>"$LOG.t" >/dev/null || true
    x_s=$(awk '/^  (text encoding|denoising|VAE decoding): [0-9.]+ s$/ { s += $(NF - 1); n++ }
        END { if (n == 3) printf "%.2f", s; else printf "failed" }' "$LOG.t")
    row "workload=pipeline batch=1 threads=$x_t round=$x_r engine=$x_e median_s=$x_s" \
        "peak_rss_mb=$(rss_mb) rel_l2=-"
}

START=$(date -u '+%Y-%m-%d %H:%M')
echo "# load before: $(load)" >&2
LOAD0=$(load)
SD_CHECK_UNET=- SD_CHECK_VAE=- SD_CHECK_TEXT=- SD_CHECK_UNET_FAST=- SD_CHECK_VAE_FAST=-
if [ "$CHECK" = 1 ]; then
    echo "## golden checks of sdunet (load $(load))" >&2
    u=tests/data/sd15-64 v=tests/data/vae/vae-sd-32
    if has "$WORKLOADS" unet && "$SDUNET" run --synthetic sd15 --sample $u/sample.npy --timestep 999 \
        --context $u/context.npy --out "$CACHE/check-unet.npy" >/dev/null; then
        SD_CHECK_UNET=$(rel "$CACHE/check-unet.npy" $u/expected_f64.npy)
    fi
    if has "$WORKLOADS" vae && "$SDUNET" decode --synthetic sd15 --latent $v/latent.npy \
        --out "$CACHE/check-vae.npy" >/dev/null; then
        SD_CHECK_VAE=$(rel "$CACHE/check-vae.npy" $v/decode_f64.npy)
    fi
    if [ "$FAST" = 1 ] && has "$WORKLOADS" unet && "$SDUNET" run --fast --synthetic sd15 \
        --sample $u/sample.npy --timestep 999 --context $u/context.npy \
        --out "$CACHE/check-unet-fast.npy" >/dev/null; then
        SD_CHECK_UNET_FAST=$(rel "$CACHE/check-unet-fast.npy" $u/expected_f64.npy)
    fi
    if [ "$FAST" = 1 ] && has "$WORKLOADS" vae && "$SDUNET" decode --fast --synthetic sd15 \
        --latent $v/latent.npy --out "$CACHE/check-vae-fast.npy" >/dev/null; then
        SD_CHECK_VAE_FAST=$(rel "$CACHE/check-vae-fast.npy" $v/decode_f64.npy)
    fi
    if has "$WORKLOADS" text && "$SDUNET" encode-text --synthetic sd15 --prompt "$PROMPT" \
        --out "$CACHE/check-text.npy" >/dev/null; then
        SD_CHECK_TEXT=$(rel "$CACHE/check-text.npy" tests/data/text/clip-sd15-full/expected.npy 0)
    fi
fi

BATCHES=1
[ "$BATCH2" = 1 ] && BATCHES="1 2"
ISA=? TISA=?
for w in $WORKLOADS; do
    case $w in unet) bs=$BATCHES ;; *) bs=1 ;; esac
    ts=$THREADS nr=$ROUNDS
    [ "$w" != pipeline ] || ts=$PIPE_THREADS nr=$PIPE_ROUNDS
    for t in $ts; do
        r=1
        while [ "$r" -le "$nr" ]; do
            # batch 1 and 2 side by side in each round, so their ratio is
            # taken under the same load
            for b in $bs; do
                chk=
                [ "$CHECK" = 1 ] && [ "$r" = 1 ] && chk=--check
                begin "$w batch=$b threads=$t round=$r: sdunet"
                case $w in
                unet)
                    unet_bench "$b" "$t" "$r" sdunet "$SD_CHECK_UNET"
                    if [ "$FAST" = 1 ]; then
                        begin "$w batch=$b threads=$t round=$r: sdunet --fast"
                        unet_bench "$b" "$t" "$r" sdunet_fast "$SD_CHECK_UNET_FAST" --fast
                    fi
                    for e in $ENGINES; do
                        c=$chk
                        [ "$b" = 1 ] || c=
                        peer "$e" "$w" "$b" "$t" "$r" --runs "$RUNS" --warmup "$WARMUP" $c
                    done
                    ;;
                vae)
                    vae_decode "$t" "$r" sdunet "$SD_CHECK_VAE"
                    if [ "$FAST" = 1 ]; then
                        begin "$w threads=$t round=$r: sdunet --fast"
                        vae_decode "$t" "$r" sdunet_fast "$SD_CHECK_VAE_FAST" --fast
                    fi
                    for e in $ENGINES; do
                        peer "$e" "$w" 1 "$t" "$r" --runs "$VAE_RUNS" --warmup "$VAE_WARMUP" $chk
                    done
                    ;;
                text)
                    "$SDUNET" bench --text sd15 --prompt "$PROMPT" --threads "$t" --runs "$TEXT_RUNS" >"$LOG.t"
                    l=$(grep '^bench:' "$LOG.t")
                    TISA=$(sed -n 's/^text encoder: .*, \([a-z0-9_]*\), [0-9]* thread.*/\1/p' "$LOG.t")
                    row "workload=$w batch=1 threads=$t round=$r engine=sdunet" \
                        "median_s=$(kv "$l" median_s) peak_rss_mb=$(kv "$l" peak_rss_mb) rel_l2=$SD_CHECK_TEXT"
                    if has "$ENGINES" torch; then
                        begin "$w threads=$t round=$r: torch"
                        l=$("$PY" bench/peer_text_torch.py --preset sd15 --prompt "$PROMPT" \
                            --threads "$t" --runs "$TEXT_RUNS" 2>/dev/null | grep '^peer:') || l=
                        row "workload=$w batch=1 threads=$t round=$r engine=torch" \
                            "median_s=$(kv "$l" median_s) peak_rss_mb=$(kv "$l" peak_rss_mb)" \
                            "rel_l2=$(kv "$l" rel_l2_vs_ref)"
                    fi
                    ;;
                pipeline)
                    txt2img "$t" "$r" sdunet
                    if [ "$FAST" = 1 ]; then
                        begin "$w threads=$t round=$r: sdunet --fast"
                        txt2img "$t" "$r" sdunet_fast --fast
                    fi
                    if has "$ENGINES" torch; then
                        begin "$w threads=$t round=$r: torch"
                        l=$("$PY" bench/peer_pipeline_torch.py --threads "$t" --steps "$PIPE_STEPS" \
                            --size "$PIPE_SIZE" 2>/dev/null | grep '^peer:') || l=
                        row "workload=$w batch=1 threads=$t round=$r engine=torch" \
                            "median_s=$(kv "$l" total_s) peak_rss_mb=$(kv "$l" peak_rss_mb) rel_l2=-"
                    fi
                    ;;
                *) echo "run_peers: unknown workload $w" >&2; exit 1 ;;
                esac
                echo "load=$(load)" >>"$LOG"
            done
            r=$((r + 1))
        done
    done
done
LOAD1=$(load)

TILED_LINE=
if [ "$TILED" = 1 ]; then
    echo "## tiled decode of a 128x128 latent (load $(load))" >&2
    t=$(echo "$THREADS" | awk '{ print $NF }')
    /usr/bin/time -v "$SDUNET" decode --synthetic sd15 --tiled --latent "$CACHE/latent128.npy" \
        --out "$CACHE/sd-tiled.npy" --threads "$t" >"$LOG.t" 2>"$ERR" || true
    kb=$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$ERR")
    s=$(sed -n 's/^decode: \([0-9.]*\) s$/\1/p' "$LOG.t")
    TILED_LINE="tiled VAE decode, 128x128 latent -> 1024x1024 image, $t threads: peak RSS ${kb:-?} KiB ($(awk -v k="${kb:-0}" 'BEGIN { printf "%.0f", k / 1024 }') MiB; bar: under 2 GB), decode ${s:-?} s"
fi

# ---- the report ----
flags=$(lscpu | sed -n 's/^Flags: *//p')
yn() { case " $flags " in *" $1 "*) echo yes ;; *) echo no ;; esac; }
commit=$(git rev-parse --short HEAD 2>/dev/null || echo '?')
git diff --quiet HEAD 2>/dev/null || commit="$commit (+ uncommitted changes)"
vers=$(grep '^row:' "$LOG" | tr ' ' '\n' | sed -n 's/^version=//p' | sort -u | tr '\n' ' ')
prec=$(grep '^row:.*engine=openvino' "$LOG" | tr ' ' '\n' | sed -n 's/^precision=//p' | sort -u | tr '\n' ' ')
echo
echo "date: $START to $(date -u '+%H:%M') UTC  commit: $commit"
kern=
has "$WORKLOADS" unet && kern="UNet $ISA"
has "$WORKLOADS" text && kern="${kern:+$kern, }text encoder $TISA"
echo "cpu: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) CPUs; avx2 $(yn avx2), avx512f $(yn avx512f), avx512_bf16 $(yn avx512_bf16), amx $(yn amx_tile)${kern:+; sdunet kernels: $kern}"
echo "peers: $("$PY" -c 'import torch, diffusers, onnxruntime, openvino; print("torch %s, diffusers %s, onnxruntime %s, openvino %s" % (torch.__version__.split("+")[0], diffusers.__version__, onnxruntime.__version__, openvino.__version__.split("-")[0]))' 2>/dev/null || echo "$vers")"
echo "load average (1/5/15 min): before $LOAD0, after $LOAD1; per round: $(sed -n 's/^load=\([^ ]*\).*/\1/p' "$LOG" | tr '\n' ' ')"
[ -z "$prec" ] || echo "OpenVINO inference precision (read back from the compiled models): $prec"
pset=
has "$WORKLOADS" pipeline && pset=" PIPE_THREADS=\"$PIPE_THREADS\" PIPE_ROUNDS=$PIPE_ROUNDS PIPE_SIZE=$PIPE_SIZE PIPE_STEPS=$PIPE_STEPS"
echo "settings: THREADS=\"$THREADS\" ROUNDS=$ROUNDS RUNS=$RUNS WARMUP=$WARMUP VAE_RUNS=$VAE_RUNS VAE_WARMUP=$VAE_WARMUP TEXT_RUNS=$TEXT_RUNS$pset"
echo
ours=sdunet
[ "$FAST" = 1 ] && ours="sdunet sdunet_fast"
grep '^row:' "$LOG" | awk -v engines="$ours $ENGINES" -v psize="$PIPE_SIZE" -v psteps="$PIPE_STEPS" '
function kv(line, key,   n, i, a, p) {
    n = split(line, a, " ")
    for (i = 1; i <= n; i++) { split(a[i], p, "="); if (p[1] == key) return p[2] }
    return ""
}
function median(list,   n, v, i, j, x) {
    n = split(list, v, " ")
    for (i = 2; i <= n; i++) { x = v[i] + 0; for (j = i - 1; j >= 1 && v[j] + 0 > x; j--) v[j + 1] = v[j]; v[j + 1] = x }
    return n == 0 ? "" : (n % 2 ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2)
}
BEGIN { ne = split(engines, E, " "); name["sdunet"] = "sdunet"; name["sdunet_fast"] = "sdunet --fast"; name["torch"] = "PyTorch"; name["ort"] = "ORT"; name["openvino"] = "OpenVINO" }
{
    g = kv($0, "workload") " b" kv($0, "batch") " t" kv($0, "threads"); e = kv($0, "engine")
    if (!(g in seen)) { seen[g] = 1; order[++ng] = g; wl[g] = kv($0, "workload"); bt[g] = kv($0, "batch"); th[g] = kv($0, "threads") }
    m = kv($0, "median_s")
    pr = kv($0, "probe"); probes[g, e] = probes[g, e] (probes[g, e] == "" ? "" : " ") (pr == "" ? "?" : pr)
    if (m != "" && m != "failed") { secs[g, e] = secs[g, e] " " m; rounds[g, e] = rounds[g, e] sprintf("%s%.2f", rounds[g, e] == "" ? "" : " / ", m) }
    else failed[g, e] = 1
    r = kv($0, "peak_rss_mb"); if (r != "" && (!((g, e) in rss) || r + 0 > rss[g, e] + 0)) rss[g, e] = r
    l = kv($0, "rel_l2"); if (l != "" && l != "-") rl[g, e] = l
    has[g, e] = 1
}
END {
    printf "| workload | threads |"
    for (i = 1; i <= ne; i++) printf " %s s |", name[E[i]]
    fast = 0; for (i = 1; i <= ne; i++) if (E[i] == "sdunet_fast") fast = 1
    printf " fastest peer / sdunet |%s\n|---|---|", fast ? " fastest peer / sdunet --fast |" : ""
    for (i = 1; i <= ne; i++) printf "---|"
    printf "---|%s\n", fast ? "---|" : ""
    for (k = 1; k <= ng; k++) {
        g = order[k]; best = ""; bname = ""
        label = wl[g] == "unet" ? "UNet 64x64, batch " bt[g] : wl[g] == "vae" ? "VAE decode 64x64 -> 512x512" : wl[g] == "pipeline" ? "txt2img " psize "x" psize ", " psteps " steps (no load)" : "text encoder, 1 prompt"
        printf "| %s | %s |", label, th[g]
        for (i = 1; i <= ne; i++) {
            e = E[i]
            if (!has[g, e]) { printf " |"; continue }
            mdg[g, e] = median(secs[g, e])
            if (mdg[g, e] == "") { printf " failed |"; continue }
            printf " %.3f |", mdg[g, e]
            if (e !~ /^sdunet/ && (best == "" || mdg[g, e] + 0 < best + 0)) { best = mdg[g, e]; bname = name[e] }
        }
        if (best != "" && mdg[g, "sdunet"] != "") printf " **%.2f** (%s) |", best / mdg[g, "sdunet"], bname
        else printf " - |"
        if (fast && best != "" && has[g, "sdunet_fast"] && mdg[g, "sdunet_fast"] != "") printf " **%.2f** |", best / mdg[g, "sdunet_fast"]
        else if (fast) printf " - |"
        printf "\n"
    }
    for (k = 1; k <= ng; k++) {
        g = order[k]; g1 = "unet b1 t" th[g]
        if (wl[g] != "unet" || bt[g] != 2 || !(g1 in seen)) continue
        printf "\nUNet batch 2 / batch 1, %s thread%s (rounds side by side):", th[g], th[g] == 1 ? "" : "s"
        for (i = 1; i <= ne; i++) {
            e = E[i]
            if (mdg[g, e] != "" && mdg[g1, e] + 0 > 0) printf " %s %.2f", name[e], mdg[g, e] / mdg[g1, e]
        }
        printf "\n"
    }
    printf "\n| workload | threads | engine | seconds per round | peak RSS MiB | rel L2 vs float64 | probe per round, FMA/AMX GFLOP/s, read GB/s |\n|---|---|---|---|---|---|---|\n"
    for (k = 1; k <= ng; k++) {
        g = order[k]
        label = wl[g] == "unet" ? "UNet b" bt[g] : wl[g] == "vae" ? "VAE decode" : wl[g] == "pipeline" ? "txt2img" : "text"
        for (i = 1; i <= ne; i++) {
            e = E[i]
            if (!has[g, e]) continue
            printf "| %s | %s | %s | %s | %s | %s | %s |\n", label, th[g], name[e], rounds[g, e] == "" ? "failed" : rounds[g, e] ((g, e) in failed ? " (a round failed)" : ""), (g, e) in rss ? rss[g, e] : "-", (g, e) in rl ? rl[g, e] : "-", probes[g, e]
        }
    }
}'
echo
echo "(seconds: the median over rounds of each engine's median of its timed runs; rel L2 on the golden"
echo " inputs: UNet tests/data/sd15-64, VAE tests/data/vae/vae-sd-32 (32x32 latent), text clip-sd15-full;"
echo " probe: bench/host_probe just before the engine's turn, one thread: FMA and AMX loops on registers, reads of 32 MiB)"
[ -z "$TILED_LINE" ] || echo "$TILED_LINE"
