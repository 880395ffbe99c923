#!/bin/sh
# Text encoding of one prompt, sdunet vs PyTorch (transformers' CLIPTokenizer +
# CLIPTextModel, float32, same synthetic weights), interleaved round by round
# at each thread count; prints each round and the median ratio (PyTorch time /
# sdunet time). Needs `make` and the reference environment (tools/ref-env.sh).
#
#   PRESETS="sd15 sd21" THREADS="1 2" ROUNDS=3 RUNS=7 sh bench/run_peer_text.sh
set -eu
cd "$(dirname "$0")/.."
PRESETS=${PRESETS:-"sd15 sd21"}
THREADS=${THREADS:-"1 2"}
ROUNDS=${ROUNDS:-3}
RUNS=${RUNS:-7}
PY=${PY:-.venv-ref/bin/python}
[ -x "$PY" ] || { echo "run tools/ref-env.sh first (no $PY)" >&2; exit 1; }
[ -x build/sdunet ] || make -s
echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')  cpu: $(lscpu | sed -n 's/^Model name: *//p')  commit: $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
printf '%-6s %-7s %-5s %10s %10s %7s\n' preset threads round sdunet_s torch_s ratio
for preset in $PRESETS; do
    for t in $THREADS; do
        ratios=""
        r=1
        while [ "$r" -le "$ROUNDS" ]; do
            s=$(./build/sdunet bench --text "$preset" --threads "$t" --runs "$RUNS" 2>/dev/null |
                sed -n 's/.*median_s=\([0-9.]*\).*/\1/p')
            p=$("$PY" bench/peer_text_torch.py --preset "$preset" --threads "$t" --runs "$RUNS" 2>/dev/null |
                sed -n 's/.*median_s=\([0-9.]*\).*/\1/p')
            ratio=$(awk -v a="$p" -v b="$s" 'BEGIN { printf "%.2f", a / b }')
            printf '%-6s %-7s %-5s %10s %10s %7s\n' "$preset" "$t" "$r" "$s" "$p" "$ratio"
            ratios="$ratios $ratio"
            r=$((r + 1))
        done
        med=$(echo "$ratios" | tr ' ' '\n' | sed '/^$/d' | sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }')
        echo "summary: $preset threads=$t median ratio (torch / sdunet) = $med"
    done
done
