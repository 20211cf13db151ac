#!/usr/bin/env bash
# QAT against post-training int8, on a digits student built to lose points to int8 (README.md here).
#   bash results/qat/run.sh [OUT_DIR]      from the repository root; about 4 minutes on 2 cores
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
BIN=${BIN:-$(pwd)/.venv/bin}
OUT=${1:-outputs/qat}
export OMP_NUM_THREADS=1
mkdir -p "$OUT" && cd "$OUT"
R="experiment=quickstart dataset.augment.crop_padding=0 optim.schedule=constant trainer.progress=false"
quiet() { "$@" > /dev/null 2>&1 || { echo "failed: $*"; exit 1; }; }

quiet "$BIN/kdrun" $R strategy=scratch hydra.run.dir=dense               # the dense student, 20 epochs
quiet "$BIN/kdrun" $R strategy=kd epochs=1 hydra.run.dir=teacher_once    # trains and caches cnn_teacher
TEACHER=$(ls -d "$PWD"/outputs/teachers/digits/cnn_teacher/*/)teacher.pt
cp -r dense outlier && rm -rf outlier/export                             # the same run, one weight file changed
"$BIN/python" "$HERE/outlier.py" dense/checkpoints/last.pt outlier/checkpoints/last.pt 100
quiet "$BIN/kdrun-export" dense --int8
quiet "$BIN/kdrun-export" outlier --int8

F="$R student.weights=$PWD/outlier/checkpoints/last.pt student.qat=false,true data_seed=0,1,2"
quiet "$BIN/kdrun" -m $F strategy=scratch epochs=2 hydra.sweep.dir=ce
quiet "$BIN/kdrun" -m $F strategy=kd teacher.checkpoint="$TEACHER" epochs=3 hydra.sweep.dir=kd_teacher
quiet "$BIN/kdrun" -m $F strategy=kd teacher=cnn_student teacher.checkpoint="$PWD/dense/checkpoints/last.pt" \
  epochs=2 hydra.sweep.dir=kd_dense_self
for sweep in ce kd_teacher kd_dense_self; do quiet "$BIN/kdrun-export" $sweep --int8; done
"$BIN/python" "$HERE/collect.py" dense outlier ce kd_teacher kd_dense_self
