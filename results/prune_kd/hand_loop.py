"""An independent KD loop on digits, to check kdrun's KD (results/prune_kd/README.md).

    python hand_loop.py TEACHER.pt N EPOCHS [DENSE_STUDENT.pt AMOUNT]

Trains cnn_student on the first N training images from scratch and with KD (alpha 0.1, T 4) from a
kdrun teacher checkpoint, seeds 0-2; with DENSE_STUDENT.pt, starts from it channel-pruned by AMOUNT.
Only the architectures and the pruning come from kdrun; data, normalisation and the loop are written here.
"""

import sys

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from kdrun.compress.prune import prune_channels
from kdrun.sources.models import build_model

torch.set_num_threads(1)
ALPHA, BETA, T, LR, BATCH = 0.1, 0.9, 4.0, 3e-3, 64


def digits():
    data = load_digits()
    images = np.round(data.images * (255 / 16)).astype(np.uint8)[:, None]
    xtr, xte, ytr, yte = train_test_split(images, data.target.astype(np.int64), test_size=0.2, random_state=0,
                                          stratify=data.target)
    xtr, xte = torch.tensor(xtr).float() / 255, torch.tensor(xte).float() / 255
    mean, std = xtr.mean(), xtr.std()
    return (xtr - mean) / std, torch.tensor(ytr), (xte - mean) / std, torch.tensor(yte)


def accuracy(model, x, y) -> float:
    with torch.no_grad():
        return 100 * (model(x).argmax(1) == y).float().mean().item()


def train(kd: bool, seed: int, x, y, teacher_logits, epochs: int, dense: str | None, amount: float):
    torch.manual_seed(seed)
    student = build_model("cnn_student", 1, 8, 10)
    if dense:
        student.load_state_dict(torch.load(dense, weights_only=True)["state_dict"])
        prune_channels(student, amount)
    optimiser = torch.optim.AdamW(student.parameters(), lr=LR, weight_decay=1e-4)
    order = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=order)
        for i in range(0, len(x), BATCH):
            idx = perm[i:i + BATCH]
            out = student(x[idx])
            loss = F.cross_entropy(out, y[idx])
            if kd:
                kl = F.kl_div(F.log_softmax(out / T, 1), F.softmax(teacher_logits[idx] / T, 1), reduction="batchmean")
                loss = ALPHA * loss + BETA * T * T * kl
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    return student


def main(teacher_path: str, n: int, epochs: int, dense: str | None = None, amount: float = 0.0) -> None:
    xtr, ytr, xte, yte = digits()
    teacher = build_model("cnn_teacher", 1, 8, 10)
    teacher.load_state_dict(torch.load(teacher_path, weights_only=True)["state_dict"])
    teacher.eval()
    print(f"teacher test acc {accuracy(teacher, xte, yte):.2f}")
    x, y = xtr[:n], ytr[:n]
    with torch.no_grad():
        teacher_logits = teacher(x)
    for kd in (False, True):
        accs = [accuracy(train(kd, seed, x, y, teacher_logits, epochs, dense, amount), xte, yte) for seed in range(3)]
        print("kd" if kd else "scratch", f"{np.mean(accs):.2f}", [round(a, 2) for a in accs])


if __name__ == "__main__":
    args = sys.argv[1:]
    main(args[0], int(args[1]), int(args[2]), args[3] if len(args) > 3 else None,
         float(args[4]) if len(args) > 4 else 0.0)
