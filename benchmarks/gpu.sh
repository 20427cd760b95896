#!/usr/bin/env bash
# The GPU checks in one script, sized for under 8 minutes on one H100/H200 (no network needed):
#   1. training img/s and MFU of the cifar10 and celeba64 networks against diffusers' UNet2DModel
#      (bf16 autocast for all; ours also torch.compile + channels_last, and ours eager beside it);
#   2. 1000-step sampling against diffusers' DDPMScheduler loop, same network and batch;
#   3. a celeba64 run of 300 steps on a generated 64x64 stand-in, through ddpm.train.train as a user
#      runs it: img/s, peak memory and a falling loss;
#   4. the GPU-only training paths as checks (benchmarks/gpu_checks.py): compile + channels_last, a resume
#      that switches channels_last, bf16 autocast, fused Adam's state moved to the CPU. Exits non-zero
#      if one fails.
# Results go to $OUT (default benchmarks/gpu-run/): results.json, the training run, and gpu.log.
#
#   bash benchmarks/gpu.sh              # on a machine with a CUDA GPU
#   bash benchmarks/gpu.sh --dry-run    # every step on the CPU at toy sizes
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3 )}
OUT=${OUT:-benchmarks/gpu-run}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu.log") 2>&1

if [[ ${1:-} == --dry-run ]]; then
    DEVICE=cpu BENCH=(--quick --no-memory) RUN=(tiny 6 2)
else
    DEVICE=cuda BENCH=(--repeats 3) RUN=(celeba64 300 64)
    "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: use --dry-run')"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
echo "== $(date -Is) device=$DEVICE"

echo "== 1-2. training and sampling against diffusers"
"$PY" benchmarks/bench.py --device "$DEVICE" "${BENCH[@]}" --json "$OUT/results.json"

echo "== 3. a short run on a generated 64x64 CelebA stand-in"
rm -rf "$OUT/celeba" "$OUT/run"
"$PY" - "$OUT" "$DEVICE" "${RUN[@]}" <<'PYTHON'
import sys
import time

import torch

import ddpm
from ddpm.train import TrainConfig, train

out, device, model, steps, batch = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
ddpm.fake_celeba(f"{out}/celeba", n=256)
config = TrainConfig(data="celeba", data_dir=f"{out}/celeba", out_dir=f"{out}/run", device=device,
                     model=model, steps=steps, batch_size=batch, sample_every=0, checkpoint_every=steps,
                     log_every=max(1, steps // 12))
tick = time.perf_counter()
result = train(config, progress=False)
seconds = time.perf_counter() - tick
k = max(1, len(result.losses) // 5)
first, last = sum(result.losses[:k]) / k, sum(result.losses[-k:]) / k
print(f"{steps} steps of batch {batch} ({model}, bf16={result.config.bf16}, "
      f"compile={result.config.compile}) in {seconds:.1f} s: {steps * batch / seconds:.0f} img/s "
      "including compilation")
if device == "cuda":
    print(f"peak memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
print(f"loss: mean of the first {k} logged steps {first:.4f}, of the last {k} {last:.4f} "
      f"({'falling' if last < first else 'NOT falling'})")
PYTHON
echo "== 4. the GPU-only training paths as checks"
"$PY" benchmarks/gpu_checks.py --device "$DEVICE" --json "$OUT/checks.json"
echo "== done $(date -Is)"
