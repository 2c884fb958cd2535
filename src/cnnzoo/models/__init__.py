"""The zoo: importing this package registers every model family."""

from cnnzoo.models import (  # noqa: F401  (each import registers its builders)
    alexnet,
    convnext,
    efficientnet,
    inception,
    lenet,
    mobilenet,
    resnet,
    resnet_cifar,
    shufflenet,
    vgg,
    vit,
)
from cnnzoo.models.base import ZooModel

__all__ = ["ZooModel"]
