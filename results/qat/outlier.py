"""Rewrite a cnn_student checkpoint so one activation channel is FACTOR times wider, same function.

    python outlier.py IN.pt OUT.pt FACTOR

conv1's channel 0 (weights and bias) is multiplied by FACTOR and conv2 reads that channel divided by
FACTOR; LeakyReLU and max-pooling commute with a positive scale, so the logits do not change. One
per-tensor uint8 range must then span values FACTOR times wider than the others: the textbook case in
which post-training int8 loses accuracy. tests/test_qat.py uses it too.
"""

import sys

import torch


def with_an_outlier_channel(source: str, target: str, factor: float) -> None:
    payload = torch.load(source, weights_only=True)
    state = payload["state_dict"]
    state["conv1.weight"][0] *= factor
    state["conv1.bias"][0] *= factor
    state["conv2.weight"][:, 0] /= factor
    torch.save(payload, target)


if __name__ == "__main__":
    with_an_outlier_channel(sys.argv[1], sys.argv[2], float(sys.argv[3]))
