#!/usr/bin/env bash
# The GPU checks in one go, on a machine with a CUDA device: the CUDA tests, then the
# extraction and encoding benchmarks, each writing its JSON beside a log.
# Usage: benchmarks/gpu.sh [tests] [extract] [encoding]   (default: all three)
#        OUT=dir (default results/benchmarks), PYTHON=python3
set -uo pipefail
out=${OUT:-results/benchmarks}
python=${PYTHON:-python3}
parts=${*:-tests extract encoding}
mkdir -p "$out"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
status=0

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
"$python" -c "import torch, timm, numpy; print('torch', torch.__version__, 'timm', timm.__version__, 'numpy', numpy.__version__)" \
  | tee -a "$out/gpu.txt"

for part in $parts; do
  case "$part" in
    tests)
      timeout 200 "$python" -m pytest -q -p no:cacheprovider tests/test_features_cuda.py tests/test_encoding.py tests/test_ridge_search.py \
        -k cuda 2>&1 | tee "$out/pytest_cuda.log" || status=1 ;;
    extract)
      timeout 240 "$python" benchmarks/extract.py --device cuda --threads 8 --pipeline 1024 \
        --out "$out/extract.json" > "$out/extract.log" 2>&1 || status=1
      tail -c 6000 "$out/extract.log" ;;
    encoding)
      timeout 240 "$python" benchmarks/encoding.py --gpu 2>&1 | tee "$out/encoding_gpu.log" || status=1
      cp results/benchmarks/encoding_gpu.json "$out/" 2>/dev/null || true ;;
    *) echo "unknown part $part (tests, extract, encoding)"; exit 2 ;;
  esac
done
exit $status
