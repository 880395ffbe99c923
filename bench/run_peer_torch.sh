#!/bin/sh
# sdunet vs a PyTorch peer (bench/peer_torch.py, Debian's PyTorch 1.13) on the
# full SD1.5 UNet, batch 1, 64x64 latent, 77 context tokens, float32, in one
# run: for each thread count, `sdunet bench` then the torch peer in each
# memory format, interleaved so that load from other work on the machine
# hits both. Prints the raw `bench:` lines and a table of ratios.
#
#   sh bench/run_peer_torch.sh
#
# Needs: apt-get install -y python3-torch python3-numpy (system /usr/bin/python3).
# Environment (defaults):
#   THREADS="1 2"   thread counts          RUNS=3 WARMUP=1   timed / warm-up forwards
#   FORMATS="contiguous channels_last"     torch memory formats tried (the table takes the faster)
#   BUILD=/tmp/bench-build                 sdunet build folder (make BUILD=...)
#   WEIGHTS=/tmp/sd15.safetensors          synthetic weights (3.4 GB), written if missing
#   KEEP=1                                 keep WEIGHTS afterwards (default: delete it if this run wrote it)
#   PY=/usr/bin/python3
#   PEER_ARGS=--profile                    extra peer_torch.py arguments (--profile: time by op, to stderr)
set -eu
cd "$(dirname "$0")/.."
THREADS=${THREADS:-"1 2"}
RUNS=${RUNS:-3}
WARMUP=${WARMUP:-1}
FORMATS=${FORMATS:-"contiguous channels_last"}
BUILD=${BUILD:-/tmp/bench-build}
WEIGHTS=${WEIGHTS:-/tmp/sd15.safetensors}
KEEP=${KEEP:-0}
PY=${PY:-/usr/bin/python3}
# Same BLAS conditions for every process (some machines force an OpenBLAS core type).
unset OPENBLAS_CORETYPE OPENBLAS_L2_SIZE OMP_NUM_THREADS MKL_NUM_THREADS OPENBLAS_NUM_THREADS || true

"$PY" -c "import torch, numpy" 2>/dev/null || {
    echo "run_peer_torch: $PY lacks torch/numpy: apt-get install -y python3-torch python3-numpy" >&2
    exit 1
}
make -s BUILD="$BUILD" all >&2
SDUNET="$BUILD/sdunet"
wrote=0
if [ ! -f "$WEIGHTS" ]; then
    "$SDUNET" synth --config sd15 --out "$WEIGHTS" >&2
    wrote=1
fi
cleanup() { if [ "$wrote" = 1 ] && [ "$KEEP" != 1 ]; then rm -f "$WEIGHTS"; fi; }
trap cleanup EXIT
trap "exit 1" INT TERM HUP

LOG=$(mktemp)
echo "# $(date -u '+%Y-%m-%d %H:%M UTC'); $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //'); $(nproc) CPUs"
echo "# load before: $(cut -d' ' -f1-3 /proc/loadavg)"
for t in $THREADS; do
    echo "## threads=$t: sdunet bench --model $WEIGHTS --threads $t --runs $RUNS --warmup $WARMUP" >&2
    # its full report (time by op kind) goes to stderr, the bench: line to stdout
    "$SDUNET" bench --model "$WEIGHTS" --threads "$t" --runs "$RUNS" --warmup "$WARMUP" >"$LOG.sd"
    cat "$LOG.sd" >&2
    grep '^bench:' "$LOG.sd" | sed 's/$/ peer=sdunet/' | tee -a "$LOG"
    for f in $FORMATS; do
        echo "## threads=$t: peer_torch.py --threads $t --memory-format $f" >&2
        OPENBLAS_NUM_THREADS=$t OMP_NUM_THREADS=$t "$PY" bench/peer_torch.py --weights "$WEIGHTS" \
            --threads "$t" --runs "$RUNS" --warmup "$WARMUP" --memory-format "$f" ${PEER_ARGS:-} |
            grep '^bench:' | tee -a "$LOG"
    done
done
echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)"

# The table: per thread count, sdunet vs the faster torch memory format.
awk -v formats="$FORMATS" '
function kv(line, key,   n, i, a, p) {
    n = split(line, a, " ")
    for (i = 1; i <= n; i++) { split(a[i], p, "="); if (p[1] == key) return p[2] }
    return ""
}
{
    t = kv($0, "threads"); peer = kv($0, "peer")
    if (peer == "sdunet") { sd[t] = kv($0, "median_s"); sdg[t] = kv($0, "gflops"); sdr[t] = kv($0, "peak_rss_mb"); order[++nt] = t }
    else {
        f = kv($0, "memory_format"); m = kv($0, "median_s")
        tf[t, f] = m; rel[t, f] = kv($0, "rel_l2")
        if (!(t in tb) || m + 0 < tb[t] + 0) { tb[t] = m; tg[t] = kv($0, "gflops"); tr[t] = kv($0, "peak_rss_mb"); tfmt[t] = f }
    }
}
END {
    nf = split(formats, F, " ")
    printf "\n%-7s %10s %10s %14s %9s %9s %9s %12s %12s\n", "threads", "sdunet s", "torch s", "torch/sdunet", "sd GF/s", "torch GF/s", "sd RSS MB", "torch RSS MB", "torch format"
    for (i = 1; i <= nt; i++) {
        t = order[i]
        printf "%-7s %10.2f %10.2f %14.2f %9.1f %10.1f %9d %12d %12s\n", t, sd[t], tb[t], tb[t] / sd[t], sdg[t], tg[t], sdr[t], tr[t], tfmt[t]
    }
    printf "\ntorch by memory format (median s, ratio to sdunet, rel. L2 vs expected_f64):\n"
    for (i = 1; i <= nt; i++) {
        t = order[i]
        for (j = 1; j <= nf; j++) if ((t, F[j]) in tf)
            printf "  threads=%s %-14s %8.2f s  x%.2f  rel_l2=%s\n", t, F[j], tf[t, F[j]], tf[t, F[j]] / sd[t], rel[t, F[j]]
    }
}' "$LOG"
rm -f "$LOG" "$LOG.sd"
