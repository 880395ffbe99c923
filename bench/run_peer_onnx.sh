#!/bin/sh
# sdunet vs ONNX Runtime (the onnxruntime-node npm package, CPU execution
# provider, prebuilt MLAS kernels) on the full SD1.5 UNet, batch 1, 64x64
# latent, 77 context tokens, float32, in one run: the compact PyTorch model of
# bench/peer_torch.py is exported to ONNX (bench/peer_onnx_export.py) from the
# same synthetic weights that `sdunet bench --model` reads, then for each thread
# count `sdunet bench` and bench/peer_onnx.js run interleaved, so that load
# from other work on the machine hits both. Prints the raw `bench:` lines, a
# table of ratios (ORT seconds / sdunet seconds) and load averages.
#
#   sh bench/run_peer_onnx.sh
#
# Needs: apt-get install -y python3-torch python3-numpy python3-onnx (for the
# export, system /usr/bin/python3), node 20, and onnxruntime-node installed
# outside the repo:
#   mkdir -p /tmp/ort && cd /tmp/ort && ONNXRUNTIME_NODE_INSTALL=skip npm install onnxruntime-node
# Environment (defaults):
#   THREADS="1 2"   thread counts          RUNS=3 WARMUP=1   timed / warm-up forwards
#   ROUNDS=1        sdunet-then-ORT rounds per thread count; with several, the
#                   table gives each round's ratio and their median (one
#                   round moves by +-10% on a shared machine)
#   BUILD=/tmp/onnx-build                  sdunet build folder (make BUILD=...)
#   WEIGHTS=/tmp/sd15.safetensors          synthetic weights (3.4 GB), written if missing
#   ORT=/tmp/ort/node_modules/onnxruntime-node
#   ONNX=/tmp/ort/model/unet.onnx          the export (+ its external data files, one per tensor), written if missing
#   KEEP=1                                 keep WEIGHTS and the export afterwards (default: delete what this run wrote)
#   PY=/usr/bin/python3  NODE=node
set -eu
cd "$(dirname "$0")/.."
THREADS=${THREADS:-"1 2"}
RUNS=${RUNS:-3}
ROUNDS=${ROUNDS:-1}
WARMUP=${WARMUP:-1}
BUILD=${BUILD:-/tmp/onnx-build}
WEIGHTS=${WEIGHTS:-/tmp/sd15.safetensors}
ORT=${ORT:-/tmp/ort/node_modules/onnxruntime-node}
ONNX=${ONNX:-/tmp/ort/model/unet.onnx}
KEEP=${KEEP:-0}
PY=${PY:-/usr/bin/python3}
NODE=${NODE:-node}
unset OPENBLAS_CORETYPE OPENBLAS_L2_SIZE OMP_NUM_THREADS MKL_NUM_THREADS OPENBLAS_NUM_THREADS || true

[ -f "$ORT/package.json" ] || {
    echo "run_peer_onnx: no onnxruntime-node at $ORT (see the header of this script)" >&2
    exit 1
}
make -s BUILD="$BUILD" all >&2
SDUNET="$BUILD/sdunet"
wrote_w=0
wrote_o=0
ONNX_DIR=
cleanup() {
    if [ "$KEEP" != 1 ]; then
        if [ "$wrote_w" = 1 ]; then rm -f "$WEIGHTS"; fi
        if [ "$wrote_o" = 1 ]; then rm -rf "$ONNX_DIR"; fi
    fi
}
trap cleanup EXIT
trap "exit 1" INT TERM HUP
if [ ! -f "$WEIGHTS" ]; then
    "$SDUNET" synth --config sd15 --out "$WEIGHTS" >&2
    wrote_w=1
fi
if [ ! -f "$ONNX" ]; then
    "$PY" -c "import torch, numpy, onnx" 2>/dev/null || {
        echo "run_peer_onnx: $PY lacks torch/numpy/onnx: apt-get install -y python3-torch python3-numpy python3-onnx" >&2
        exit 1
    }
    # the export writes one external-data file per tensor beside the .onnx, so
    # it gets a folder of its own, created here (and deleted afterwards only
    # if created here)
    ONNX_DIR=$(dirname "$ONNX")
    if [ ! -e "$ONNX_DIR" ]; then mkdir -p "$ONNX_DIR"; wrote_o=1; fi
    "$PY" bench/peer_onnx_export.py --weights "$WEIGHTS" --out "$ONNX" >&2
fi

LOG=$(mktemp)
echo "# $(date -u '+%Y-%m-%d %H:%M UTC'); $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //'); $(nproc) CPUs"
echo "# load before: $(uptime | sed 's/.*load average: //')"
for t in $THREADS; do
    for round in $(seq "$ROUNDS"); do
        echo "## threads=$t round $round: sdunet bench --model $WEIGHTS --threads $t --runs $RUNS --warmup $WARMUP" >&2
        "$SDUNET" bench --model "$WEIGHTS" --threads "$t" --runs "$RUNS" --warmup "$WARMUP" >"$LOG.sd"
        cat "$LOG.sd" >&2
        grep '^bench:' "$LOG.sd" | sed 's/$/ peer=sdunet/' | tee -a "$LOG"
        echo "## threads=$t round $round: peer_onnx.js --threads $t   (load now: $(cut -d' ' -f1-3 /proc/loadavg))" >&2
        "$NODE" bench/peer_onnx.js --model "$ONNX" --ort "$ORT" --threads "$t" --runs "$RUNS" --warmup "$WARMUP" |
            grep '^bench:' | tee -a "$LOG"
    done
done
echo "# load after: $(uptime | sed 's/.*load average: //')"

awk '
function kv(line, key,   n, i, a, p) {
    n = split(line, a, " ")
    for (i = 1; i <= n; i++) { split(a[i], p, "="); if (p[1] == key) return p[2] }
    return ""
}
# rows come in (sdunet, ORT) pairs, one pair per round
{
    t = kv($0, "threads"); peer = kv($0, "peer")
    if (peer == "sdunet") {
        if (!(t in nr)) order[++nt] = t
        r = ++nr[t]
        sd[t, r] = kv($0, "median_s"); sdg[t, r] = kv($0, "gflops"); sdr[t, r] = kv($0, "peak_rss_mb")
    } else {
        r = nr[t]
        o[t, r] = kv($0, "median_s"); og[t, r] = kv($0, "gflops"); orr[t, r] = kv($0, "peak_rss_mb")
        rel[t] = kv($0, "rel_l2"); name = peer
    }
}
END {
    printf "\n%-7s %5s %10s %8s %11s %9s %9s %9s %10s %10s\n", "threads", "round", "sdunet s", "ORT s", "ORT/sdunet", "sd GF/s", "ORT GF/s", "sd RSS MB", "ORT RSS MB", "ORT rel_l2"
    for (i = 1; i <= nt; i++) {
        t = order[i]; n = 0
        for (r = 1; r <= nr[t]; r++) {
            if (!((t, r) in o)) continue
            q = o[t, r] / sd[t, r]; ratio[++n] = q
            printf "%-7s %5d %10.2f %8.2f %11.2f %9.1f %9.1f %9d %10d %10s\n", t, r, sd[t, r], o[t, r], q, sdg[t, r], og[t, r], sdr[t, r], orr[t, r], rel[t]
        }
        if (n > 1) { # median of the rounds ratios (insertion sort: n is small)
            for (a = 2; a <= n; a++) { v = ratio[a]; for (b = a - 1; b >= 1 && ratio[b] > v; b--) ratio[b + 1] = ratio[b]; ratio[b + 1] = v }
            med = n % 2 ? ratio[(n + 1) / 2] : (ratio[n / 2] + ratio[n / 2 + 1]) / 2
            printf "%-7s %5s %10s %8s %11.2f   (median of %d rounds)\n", t, "all", "", "", med, n
        }
    }
    printf "(ORT = %s; rel_l2 = relative L2 of its output vs tests/data/sd15-64/expected_f64.npy)\n", name
}' "$LOG"
rm -f "$LOG" "$LOG.sd"
