#!/bin/bash
# The GPU checks of issue #20, as one short script for a lent GPU machine (see docs/benchmarks.md):
# the prefix cache on against off on the demo sequences, on CUDA in the family's default dtype (bfloat16),
# every score compared; item 4's stacked-projection timing on real shapes, in bfloat16; and the prefix cache's
# tests (item 2: scores identical, states within 1e-6 in float32) with their tiny families on CUDA.
#   bash bench/gpu_check.sh [OUTDIR] [tests]     (about 3-5 minutes on an H200; "tests": the tests only)
out=${1:-${OUT:-/tmp/gpu_check}}; mkdir -p "$out"
export HF_HUB_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $py -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())"; } 2>&1 | tee "$out/env.txt"
GPTAILOR_TEST_DEVICE=cuda timeout 300 $py -m pytest -q tests/test_prefix_cache.py 2>&1 \
  | tee "$out/prefix_cache_tests_cuda.txt"
[ "${2:-}" = tests ] && exit 0
for shape in smollm2-135m llama-3.2-1b llama-3-8b; do
  for tokens in 2048 16384; do
    timeout 120 $py -m bench.prefix_cache stack --shape $shape --device cuda --dtype bfloat16 --tokens $tokens \
      --plans 2,4,8,16 --repeats 20 2>&1 | tee -a "$out/stack.txt"
  done
done
timeout 400 $py -m bench.prefix_cache run --sequences demo-smac,demo-random 2>&1 | tee "$out/prefix_cache_run.txt"
echo "gpu_check exit $?"
