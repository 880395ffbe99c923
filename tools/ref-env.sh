#!/usr/bin/env bash
# Creates the reference Python environment (.venv-ref/ in the repo root) with
# the pinned upstream libraries that the golden test cases under tests/data/
# were generated with. Safe to rerun: an existing environment is reused and
# pip only installs what is missing or at another version.
#
#   bash tools/ref-env.sh            # create or update .venv-ref/
#   PYTHON=python3.11 bash tools/ref-env.sh   # the golden files were made with 3.11
#
# torch comes from PyPI's default wheel (with its CUDA libraries on x86-64
# Linux; only the CPU is used). TORCH_VERSION overrides the pin.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv-ref"
PYTHON="${PYTHON:-python3}"

TORCH_VERSION="${TORCH_VERSION:-2.1.2}"
# regex and Python's unicodedata decide the tokenizer's Unicode tables, so
# they are pinned too (the golden files record the Python version).
PINS=(
	"numpy==1.26.4"
	"diffusers==0.25.1"
	"huggingface_hub==0.25.2"
	"transformers==4.36.2"
	"tokenizers==0.15.2"
	"safetensors==0.8.0"
	"pillow==13.0.0"
	"regex==2026.12.2"
	"scipy==1.11.4"
)

if [ ! -x "$VENV/bin/python" ]; then
	"$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"

"$PY" -m pip install --disable-pip-version-check -q "torch==$TORCH_VERSION" "numpy==1.26.4"
"$PY" -m pip install --disable-pip-version-check -q "${PINS[@]}"

# The CLIP tokenizer must behave as it does without ftfy (the C tokenizer
# follows that path: whitespace cleanup and lowercasing only).
if "$PY" -c "import ftfy" 2>/dev/null; then
	echo "ref-env: ftfy is installed in $VENV; remove it (pip uninstall ftfy)" >&2
	exit 1
fi

"$PY" - <<'PYEOF'
import sys, unicodedata
import numpy, torch, transformers, diffusers, huggingface_hub, safetensors, tokenizers
for m in (numpy, torch, transformers, diffusers, huggingface_hub, safetensors, tokenizers):
    print(f"{m.__name__}=={m.__version__}")
print(f"python=={sys.version.split()[0]} unicodedata=={unicodedata.unidata_version}")
assert numpy.__version__.startswith("1."), "numpy must be < 2"
assert diffusers.__version__ == "0.25.1"
assert transformers.__version__.startswith("4.36.")
if unicodedata.unidata_version != "14.0.0":
    print("ref-env: warning: the tokenizer cases were made with Python 3.11 "
          "(Unicode 14.0.0); this Python has Unicode " + unicodedata.unidata_version
          + ", so ids of newly assigned characters may differ", file=sys.stderr)
PYEOF
echo "ref-env: ready at $VENV"
