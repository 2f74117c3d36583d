#!/bin/bash
# Run on a lent GPU by the device tool with .gpu carried: .gpu/whl (datasets, dill, multiprocess, transformers wheels),
# .gpu/pkgs (stand-ins for the offline data and θ_PT packages: the rt CSV and all-MiniLM-L6-v2 as fp16), .gpu/wt (the
# finemix_core under test: cp -r finemix_core .gpu/wt/). Output of the 2026-12-04 call: docs/gpu-round17-cuda-check.txt
# (made with a branch where these settings were the default, so its defend lines had no --found-rho flag).
# CUDA-path check of the opt-in `--found-rho 1` (finalists check, min flip 0.95: Round 17) on a lent GPU.
# Sibling models (θ_PT carried as fp16): a path and timing check, no choice is made from these numbers.
set -o pipefail
R=$PWD
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu/whl/*.whl || exit 3
export PYTHONPATH=/tmp/site:$R/.gpu/pkgs:$R/.gpu/wt FINEMIX_HOME=/tmp/fmh PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
cd $R/.gpu/wt
nvidia-smi -L; nproc
python3 -c "import torch, transformers, datasets, finemix_core; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'transformers', transformers.__version__, finemix_core.__file__)"
s=$(date +%s)
python3 -m finemix_core.cli zoo build --only clean,word-cf,sentence 2>&1 | tail -8
echo "zoo built in $(( $(date +%s) - s )) s"
for m in word-cf sentence; do
  s=$(date +%s)
  python3 -m finemix_core.cli defend --model $m --found-rho 1 --out /tmp/def-$m 2>&1 | grep -v -i warn | tail -30
  echo "defend $m (scan + defense, default settings) in $(( $(date +%s) - s )) s"
done
