#!/usr/bin/env bash
# Every loss preset kdrun ships on one CPU task, teacher and scratch included, 3 seeds (README.md here).
#   bash results/methods/run.sh [OUT_DIR]        from the repository root
# Fashion-MNIST: a resnet20 teacher trained on the whole training split (60,000 images, 3 epochs) stands for
# a model trained on more data than the student sees; each student (resnet8) trains on the
# first 3,000 images of that split for 4 epochs. Every setting is fixed in advance (the presets' published weights, one
# recipe for all); nothing is chosen on the test split, or on any split.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
BIN=${BIN:-$REPO/.venv/bin}
OUT=$(mkdir -p "${1:-outputs/methods}" && cd "${1:-outputs/methods}" && pwd)
ROOT=${FASHION:-/usr/share/datasets/fashion-mnist}
SEEDS=${SEEDS:-0,1,2}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
cd "$OUT"
quiet() { "$@" > /dev/null 2>&1 || { echo "failed: $*"; exit 1; }; }
DATA="dataset=fashion_mnist dataset.root=$ROOT device=cpu device.precision=fp32 trainer.progress=false optim=adamw optim.lr=3e-3 batch_size=64"
# The teacher: resnet20 on the whole training split, trained once.
[ -f teacher/checkpoints/last.pt ] || quiet "$BIN/kdrun" $DATA strategy=scratch student=resnet20 epochs=3 seed=0 hydra.run.dir=teacher
S="$DATA dataset.limit_train=3000 student=resnet8 teacher=resnet20 teacher.checkpoint=$OUT/teacher/checkpoints/last.pt epochs=4 seed=$SEEDS"
[ -f scratch/summary.csv ] || quiet "$BIN/kdrun" -m $S strategy=scratch hydra.sweep.dir=scratch
# kd first (the time column is relative to it), then every other preset; a finished sweep is kept
for preset in kd $(ls "$REPO/conf/loss" | sed 's/\.yaml$//' | grep -vx ce | grep -vx kd); do
  # A term with an initialisation stage (fsp, ab, ft: RepDistiller's 30 epochs) gets 1 of the 4 here.
  stage=$(grep -q "init_epochs" "$REPO/conf/loss/$preset.yaml" && echo "loss.terms.$preset.init_epochs=1" || true)
  [ -f "$preset/summary.csv" ] || { rm -rf "$preset"; "$BIN/kdrun" -m $S loss=$preset $stage hydra.sweep.dir=$preset \
    > "$preset.log" 2>&1 || echo "failed: loss=$preset (see $OUT/$preset.log)"; }
done
"$BIN/python" "$HERE/collect.py" "$OUT" > "$HERE/table.md"
cat "$HERE/table.md"
