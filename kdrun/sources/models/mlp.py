"""A multilayer perceptron on flattened pixels: any number of hidden ReLU layers, optional dropout."""

import torch.nn.functional as F
from torch import Tensor, nn

from kdrun.sources.models.base import KDModel


class MLP(KDModel):
    """Linear -> ReLU (-> dropout) per hidden layer, then a linear classifier. Dropout on the inputs and on
    the hidden units is how Hinton et al. (2015) regularised their MNIST teacher (after Srivastava et al.)."""

    def __init__(self, arch: str, in_channels: int, image_size: int, num_classes: int, *,
                 hidden: tuple[int, ...] = (256, 256), dropout: float = 0.0, input_dropout: float = 0.0) -> None:
        super().__init__(arch, in_channels, image_size, num_classes, list(hidden))
        widths = [in_channels * image_size * image_size, *hidden]
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths, widths[1:]))
        self.classifier = nn.Linear(widths[-1], num_classes)
        self.dropout, self.input_dropout = dropout, input_dropout

    def forward_features(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        out = F.dropout(x.flatten(1), self.input_dropout, self.training)
        features = []
        for layer in self.hidden:
            out = F.relu(layer(out))
            features.append(out)
            out = F.dropout(out, self.dropout, self.training)
        return features, self.classifier(out)
