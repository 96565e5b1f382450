#!/usr/bin/env bash
# The GPU checks of continued pre-training, as one prepared script for a lent GPU machine (about 10 minutes):
#   1. benchmarks/pretrain_throughput.py: plain HF vs KLTrainer, CE and CE+KL, 1.1B Mistral shape, MFU;
#   2. tests/gpu: the pretrain stage under the ddp / fsdp / zero2 / zero3 launchers (one process each), and the
#      packed log-likelihood scorer of `vikhr eval` on CUDA (fp32 and bf16) against one row per choice;
#   3. a smoke run of the paper's config (mistral-7b-ru.yaml: FSDP launcher, Table 3 / Table 5 presets) on
#      SmolLM2-135M with a few steps per training stage, through `vikhr run` (the launcher comes from the config).
# Results: benchmarks/results/pretrain_throughput_<card>.json and, when $OUT is set (the device tool), copies there.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || exit 2
timeout 420 "$PY" benchmarks/pretrain_throughput.py --steps 15 --warmup 3; rc_bench=$?
timeout 240 "$PY" -m pytest -q -m gpu tests/gpu -x -p no:cacheprovider; rc_tests=$?
SMOKE=(source_model=smollm2-135m-instruct run_dir=runs/mistral-smoke "data.target=[bundled:ru]" "data.extra=[bundled:en]"
       tokenizer.vocab_sizes=[] pretrain.num_processes=1 pretrain.max_steps=4
       sft.num_processes=1 sft.max_steps=4 reward.pairs=[] instruct.reward_model=
       compute.pretrain_tokens=0 evaluate.tasks=[] evaluate.models=[pretrain,sft])
timeout 900 .venv/bin/vikhr run -c mistral-7b-ru "${SMOKE[@]}"; rc_smoke=$?
if [ -n "${OUT:-}" ]; then cp -r runs/mistral-smoke/report "$OUT"/mistral-smoke-report 2>/dev/null; fi
if [ -n "${OUT:-}" ]; then cp benchmarks/results/pretrain_throughput_*.json "$OUT"/ 2>/dev/null; fi
echo "throughput bench exit $rc_bench, gpu tests exit $rc_tests, mistral-7b-ru smoke exit $rc_smoke"
