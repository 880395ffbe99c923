#!/bin/sh
# The whole txt2img, 512x512, 20 steps of Euler a, guidance 7.5, full-size
# synthetic SD1.5: sdunet txt2img vs diffusers' StableDiffusionPipeline on
# PyTorch (float32, same synthetic weights, bench/peer_pipeline_torch.py),
# interleaved, with each phase's time and peak RSS. Needs `make` and the
# reference environment (tools/ref-env.sh). One round takes ~15 minutes on 2
# cores.
#
#   THREADS=2 STEPS=20 SIZE=512 ROUNDS=1 sh bench/run_peer_pipeline.sh
set -eu
cd "$(dirname "$0")/.."
THREADS=${THREADS:-2}
STEPS=${STEPS:-20}
SIZE=${SIZE:-512}
ROUNDS=${ROUNDS:-1}
PY=${PY:-.venv-ref/bin/python}
[ -x "$PY" ] || { echo "run tools/ref-env.sh first (no $PY)" >&2; exit 1; }
[ -x build/sdunet ] || make -s
echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')  cpu: $(lscpu | sed -n 's/^Model name: *//p')  commit: $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
out=$(mktemp -d)
r=1
while [ "$r" -le "$ROUNDS" ]; do
    echo "round $r, load average: $(cut -d' ' -f1-3 /proc/loadavg)"
    /usr/bin/time -v ./build/sdunet txt2img --synthetic sd15 --prompt "a photo of an astronaut riding a horse on mars" \
        --width "$SIZE" --height "$SIZE" --steps "$STEPS" --scheduler euler_a --seed 1 \
        --threads "$THREADS" --verbose --out "$out/x.png" 2>"$out/err.txt" >/dev/null
    grep -E ': [0-9.]+ s$' "$out/err.txt" | sed 's/^/  sdunet /'
    echo "  sdunet peak RSS MiB: $(awk '/Maximum resident/ { printf "%.0f", $6 / 1024 }' "$out/err.txt")"
    "$PY" bench/peer_pipeline_torch.py --threads "$THREADS" --steps "$STEPS" --size "$SIZE" | sed 's/^/  /'
    r=$((r + 1))
done
rm -rf "$out"
