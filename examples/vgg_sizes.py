"""Chapter 2: how big AlexNet and VGG are, where their parameters sit, how far their units see.

    python examples/vgg_sizes.py                       # alexnet, alexnet_v1, vgg11/16/19
    python examples/vgg_sizes.py vgg16_bn resnet18     # any zoo models
"""

import argparse

import torch
from torch import nn

import cnnzoo

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("models", nargs="*",
                    default=["alexnet", "alexnet_v1", "vgg11", "vgg16", "vgg19"])
args = parser.parse_args()

print(f"{'model':12} {'params':>9} {'in Linear':>11} {'mult-adds':>10} {'weights':>9} "
      f"{'activations':>11} {'field':>6}")
for name in args.models:
    with torch.device("meta"):  # counts without allocating a single weight
        model = cnnzoo.create_model(name)
    s = cnnzoo.summary(model)
    dense = sum(p.numel() for m in model.modules() if isinstance(m, nn.Linear)
                for p in m.parameters())  # fmt: skip
    total = s.receptive_field.total if s.receptive_field else None
    field = total.size[0] if total is not None else "-"
    print(f"{name:12} {s.total_params / 1e6:7.1f} M {dense / s.total_params:11.1%} "
          f"{s.total_macs / 1e9:8.2f} G {s.param_mb:6.0f} MB {s.activation_mb:8.1f} MB {field:>6}")
