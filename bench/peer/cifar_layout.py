"""torchvision's CIFAR10, reading the peer bench's files (bench/peer/fashion_cifar.py) in the peer's
environment. torchvision checks every file against the md5 of the original CIFAR-10; this class
checks them against the md5s the writer recorded in manifest.json instead, and is otherwise
torchvision's own: the same unpickling, PIL images and per-sample transforms a torchdistill user gets.
"""

import json
import os

from torchvision.datasets import CIFAR10


class FashionCifar10(CIFAR10):
    def __init__(self, root, *args, **kwargs):
        with open(os.path.join(os.path.expanduser(root), "manifest.json")) as f:
            md5 = json.load(f)["md5"]
        self.train_list = [[name, md5[name]] for name, _ in CIFAR10.train_list]
        self.test_list = [[name, md5[name]] for name, _ in CIFAR10.test_list]
        self.meta = {**CIFAR10.meta, "md5": md5[CIFAR10.meta["filename"]]}
        super().__init__(root, *args, **kwargs)
