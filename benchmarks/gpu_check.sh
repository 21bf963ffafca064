#!/usr/bin/env bash
# Every check that needs a GPU, in one call of about 5 minutes:
#   1. tests/gpu (CUDA runs equal CPU runs in float64, products, synchronisations CUDA reports);
#   2. benchmarks/step_overhead.py on CUDA (the foundation issue's overhead targets);
#   3. benchmarks/curvature_products.py on CUDA (the curvature issue's block-product target);
#   4. benchmarks/pair_load.py on CUDA (sampled refreshes: batched load vs one update per pair).
# Each part has its own time limit; a part that fails or times out does not stop the others.
#
# Usage (repository root, a Python with torch + lightning + pytest; the package need not be installed):
#   bash benchmarks/gpu_check.sh [OUT_DIR]      # default OUT_DIR: $OUT if set, else ./gpu_check_out
# Exit status: 0 if every part passed, 1 otherwise, 2 without CUDA.
set -uo pipefail

out="${1:-${OUT:-gpu_check_out}}"
mkdir -p "$out"
python="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

nvidia-smi >"$out/nvidia-smi.txt" 2>&1 || true
"$python" - <<'EOF' | tee "$out/versions.txt" || exit 2
import sys, torch
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda)
assert torch.cuda.is_available(), "CUDA is not available: nothing to check"
print("device", torch.cuda.get_device_name(0))
EOF

status=0
part() {  # part NAME SECONDS COMMAND...
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit}s): $*" | tee "$out/$name.txt"
    timeout "$limit" "$@" 2>&1 | tee -a "$out/$name.txt"
    local rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc" | tee -a "$out/$name.txt"
    [ "$rc" -eq 0 ] || status=1
}

# -W default: the GPU machine's torch may warn where the pinned CPU one does not; report, don't fail.
part pytest_gpu 180 "$python" -m pytest -q -p no:cacheprovider -W default tests/gpu
part step_overhead_cuda 150 "$python" benchmarks/step_overhead.py --device cuda --steps 50 --warmup 10 --repeats 1 --markdown
part curvature_products_cuda 120 "$python" benchmarks/curvature_products.py --device cuda --repeats 20 --markdown
part pair_load_cuda 60 "$python" benchmarks/pair_load.py --device cuda
exit $status
