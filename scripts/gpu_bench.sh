#!/bin/bash
# Run by the device tool with .gpu carried (see scripts/gpu_check_found_rho.sh for what .gpu holds); the 2026-12-04
# H200 output is assets/bench/cuda-h200-run{1,2}.json, summarised in the README (Performance).
# finemix bench --device cuda on a lent GPU (sibling zoo built there from θ_PT carried as fp16)
set -o pipefail
R=$PWD
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu/whl/*.whl || exit 3
export PYTHONPATH=/tmp/site:$R/.gpu/pkgs:$R/.gpu/wt FINEMIX_HOME=/tmp/fmh PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
cd $R/.gpu/wt
nvidia-smi -L; nproc; python3 -c "import torch; print(torch.__version__, torch.get_num_threads())"
s=$(date +%s); python3 -m finemix_core.cli zoo build --only clean,word-cf,ep-cf 2>&1 | tail -7; echo "zoo built in $(( $(date +%s) - s )) s"
for i in 1 2; do
  s=$(date +%s); python3 -m finemix_core.cli bench --device cuda --json > $OUT/bench-cuda-$i.json 2> $OUT/bench-cuda-$i.err; echo "bench run $i rc $? in $(( $(date +%s) - s )) s"
  cat $OUT/bench-cuda-$i.json | head -c 4000; echo
done
