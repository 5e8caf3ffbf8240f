#!/usr/bin/env bash
# The device checks of one GPU session, in one call: CUDA numerics, the throughput table with the
# default settings and with each torch.compile mode, and both regimes end to end on 50,000
# CIFAR-format images. Usage on the GPU machine: OUT=/some/dir bash bench/gpu_check.sh [quick]
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu_check}; mkdir -p "$OUT"; W=/tmp/gpu_work; mkdir -p $W
PY=${PY:-python3}
export TORCHINDUCTOR_CACHE_DIR=$W/inductor_cache  # the compile cache, shared by the runs below
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"

echo "== fp32 CUDA vs CPU logits (TF32 off), bf16 relative error"
$PY - <<'PY'
import torch
from torch_resnet import ResidualNetwork
torch.backends.cudnn.allow_tf32 = False; torch.backends.cuda.matmul.allow_tf32 = False
torch.manual_seed(0); m = ResidualNetwork(100).eval(); x = torch.rand(64, 3, 32, 32) * 2 - 1
with torch.no_grad():
    cpu = m(x); gpu = m.cuda()(x.cuda()).cpu()
    gcl = m.to(memory_format=torch.channels_last)(x.cuda().contiguous(memory_format=torch.channels_last)).cpu()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        bf = m(x.cuda().contiguous(memory_format=torch.channels_last)).float().cpu()
rel = lambda a: ((a - cpu).norm() / cpu.norm()).item()
print(f"max|d| fp32 {(gpu - cpu).abs().max():.2e}, channels_last {(gcl - cpu).abs().max():.2e}; rel bf16 {rel(bf):.2e}")
PY

echo "== data and weights"
$PY - <<PY
import torch
from torch_resnet import ResidualNetwork
from torch_resnet.data.cifar import CIFAR10
from torch_resnet.data.synthetic import write_cifar
write_cifar("$W/data", CIFAR10, train_size=50000, test_size=10000, seed=0)
torch.manual_seed(0); torch.save(ResidualNetwork(100).state_dict(), "$W/w.pt")
PY

B="$PY bench/throughput.py --device cuda --data-dir $W/data --images 50000"
echo "== throughput, default settings (50,000 images per epoch, batch 256), peer: DataLoader baseline"
timeout 170 $B --regimes freeze full infer --peer baseline --json $OUT/bench_default.json 2>&1 | tee $OUT/bench_default.log
for mode in default reduce-overhead; do
  echo "== throughput, torch.compile mode=$mode (first: cold cache)"
  ( time timeout 170 $B --regimes freeze full --peer --compile $mode --json $OUT/bench_compile_$mode.json ) 2>&1 | tee $OUT/bench_compile_$mode.log
done
[ "${1:-}" = quick ] && { echo "== done (quick)"; exit 0; }

echo "== end to end, 45,000 train / 5,000 val / 10,000 test, default settings"
timeout 100 $PY train/finetune.py --freeze --weights $W/w.pt --data-dir $W/data --out $W/freeze --epochs 3 --no-download 2>&1 | tee $OUT/freeze.log
timeout 100 $PY train/finetune.py --weights $W/w.pt --data-dir $W/data --out $W/full --epochs 3 --no-download 2>&1 | tee $OUT/full.log
cp $W/freeze/metrics.json $OUT/freeze_metrics.json; cp $W/full/metrics.json $OUT/full_metrics.json
echo "== done"
