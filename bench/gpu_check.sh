#!/usr/bin/env bash
# The checks to run the day a CUDA GPU is lent (issue 24): CUDA-only tests, a KD epoch of resnet56->resnet20
# in fp32/bf16/fp16 with and without channels_last and device.compile, make bench's figures on the device,
# a CIFAR-100-shaped reproduction smoke run, and a world-size-1 NCCL run through torchrun, in under
# 8 minutes; writes bench/results/gpu.json (bench/gpu_check.py says what each step does).
set -euo pipefail
cd "$(dirname "$0")/.."
exec timeout 470 "${VENV:-.venv}/bin/python" bench/gpu_check.py "$@"
