#!/usr/bin/env bash
# fp32 against bf16 autocast on the CPU, 3 seeds, 15 epochs, from scratch and distilled (README.md here).
#   bash results/precision/run.sh [OUT_DIR]        from the repository root
# Fashion-MNIST, scaled to fit 2 shared CPU cores: a resnet20 teacher (fp32, trained once on the first
# 6,000 training images for 4 epochs) is fixed for every distilled run; each student (resnet8) trains on the
# first 1,000 training images for 15 epochs and is tested on the first 1,000 test images (sizes set by a
# machine whose 2 cores ran 4 other jobs: see README.md). One recipe for all,
# fixed in advance; nothing is chosen on the test split. Runs alternate fp32/bf16 back to back, so a change in
# the machine's load weighs on both precisions alike.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
BIN=${BIN:-$REPO/.venv/bin}
OUT=$(mkdir -p "${1:-outputs/precision}" && cd "${1:-outputs/precision}" && pwd)
ROOT=${FASHION:-/usr/share/datasets/fashion-mnist}
SEEDS=${SEEDS:-0 1 2}
EPOCHS=${EPOCHS:-15}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
cd "$OUT"
quiet() { "$@" > /dev/null 2>&1 || { echo "failed: $*"; exit 1; }; }
DATA="dataset=fashion_mnist dataset.root=$ROOT trainer.progress=false optim=adamw optim.lr=3e-3 batch_size=64 device=cpu"
[ -f teacher/metrics.json ] || quiet "$BIN/kdrun" $DATA dataset.limit_train=6000 strategy=scratch \
  student=resnet20 epochs=4 seed=0 device.precision=fp32 hydra.run.dir=teacher
S="$DATA dataset.limit_train=${TRAIN:-1000} dataset.limit_test=${TEST:-1000} student=resnet8 teacher=resnet20 epochs=$EPOCHS"
S="$S teacher.checkpoint=$OUT/teacher/checkpoints/last.pt paths.teacher_outputs=$OUT/teacher_outputs"
for seed in $SEEDS; do
  for strategy in scratch kd; do
    for precision in fp32 bf16; do
      dir=${strategy}_${precision}_seed$seed
      [ -f "$dir/metrics.json" ] || { rm -rf "$dir"; uptime > "$dir.load"
        quiet "$BIN/kdrun" $S strategy=$strategy seed=$seed device.precision=$precision hydra.run.dir=$dir
        uptime >> "$dir.load"; }
    done
  done
done
"$BIN/python" "$HERE/collect.py" "$OUT" > "$HERE/table.md"
cat "$HERE/table.md"
