"""Feature-term weights that keep their CIFAR meaning on smaller images.

Attention transfer compares unit-norm attention maps by the *mean* squared difference
over the H*W positions (RepDistiller's and mdistiller's AT), so the term grows as 1/(H*W):
the same stage of the same network gives a term 16x larger on 8x8 digits than on 32x32
CIFAR. The published weight (1000) was tuned on 32x32 inputs, where every stage has the
area it was tuned at; on an image of side s each stage's map is (s/32)^2 as large, so
multiplying the weight by that ratio gives the term the size it had when tuned. Only
smaller images are scaled (ratio capped at 1): a larger image makes the term smaller,
which never destabilises training, and there no published weight needs protecting.
The hint term (an MSE of features, a mean over every element) does not depend on the
map's area and is left as given.
"""

CIFAR_SIDE = 32  # the image side the CIFAR feature-term weights were tuned at


def area_ratio(image_size: int) -> float:
    """(image_size / 32)^2, capped at 1: how much smaller each stage's map is than on CIFAR."""
    return min(1.0, (image_size / CIFAR_SIDE) ** 2)


def scaled_at_weight(at_weight: float, image_size: int) -> float:
    return float(at_weight) * area_ratio(image_size)
