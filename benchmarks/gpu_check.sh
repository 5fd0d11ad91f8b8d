#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py) on a bare CUDA machine: one with torch and transformers
# but no TRL, no network, and room for a few small wheels. Two steps:
#
#   benchmarks/gpu_check.sh fetch     # here, with the network: the wheels into benchmarks/.gpu-wheels
#   benchmarks/gpu_check.sh           # there: installs what is missing from them, then runs the check
#
# LAYERS (default 2) and STEPS (default 2) size the run; the report goes to ${OUT:-.}/gpu_check.json
# and docs/benchmarks.md says what it measured. The wheels are the GPU lock's versions, for
# CPython 3.12 on Linux x86_64 (the device's Python); .gpu-wheels is ignored by git, carry it.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=benchmarks/.gpu-wheels
LOCK=locks/gpu-linux-x86_64-py311.txt
# What benchmarks/gpu_check.py imports beyond torch and transformers (module=distribution).
NEEDED="trl=trl peft=peft accelerate=accelerate datasets=datasets pyarrow=pyarrow dill=dill
multiprocess=multiprocess xxhash=xxhash fsspec=fsspec pandas=pandas pydantic=pydantic
pydantic_core=pydantic-core annotated_types=annotated-types typing_inspection=typing-inspection
yaml=pyyaml"

pin() {  # the lock's version of a distribution
  grep -i "^$1==" "$LOCK" | head -1
}

if [ "${1:-}" = fetch ]; then
  PY=${PYTHON:-.venv/bin/python}
  specs=()
  for pair in $NEEDED; do
    case " ${SKIP:-} " in *" ${pair#*=} "*) continue ;; esac  # SKIP="pyarrow pandas": the device has them
    specs+=("$(pin "${pair#*=}")")
  done
  "$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    -d "$WHEELS" "${specs[@]}"
  du -sh "$WHEELS"
  exit 0
fi

PY=${PYTHON:-python}
missing=()
for pair in $NEEDED; do
  "$PY" -c "import ${pair%%=*}" 2>/dev/null || missing+=("${pair#*=}")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "gpu_check: installing from $WHEELS: ${missing[*]}"
  "$PY" -m pip install --quiet --no-index --no-deps --find-links "$WHEELS" "${missing[@]}"
fi
"$PY" -c "import torch, transformers, trl; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'transformers', transformers.__version__, 'trl', trl.__version__, torch.cuda.get_device_name(0))"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
"$PY" benchmarks/gpu_check.py --layers "${LAYERS:-2}" --steps "${STEPS:-2}" --out "${OUT:-.}/gpu_check.json"
