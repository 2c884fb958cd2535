"""Chapter 6: EfficientNet-B0 to B7 from the compound-scaling coefficients: the paper's formula
against the released coefficients, then each variant's stages, size, cost and published top-1.

    python examples/efficientnet_scaling.py
    python examples/efficientnet_scaling.py --variants 0 1 2
"""

import argparse

import torch

import cnnzoo
from cnnzoo.models.efficientnet import B0_STAGES, SCALING, scaled_stages

ALPHA, BETA, GAMMA = 1.2, 1.1, 1.15  # depth, width, resolution (Tan & Le 2019, section 3.3)

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--variants", type=int, nargs="+", default=list(range(8)), metavar="PHI")
args = parser.parse_args()

for phi in args.variants:
    width, depth, resolution, dropout = SCALING[f"b{phi}"]
    name = f"efficientnet_b{phi}"
    with torch.device("meta"):
        model = cnnzoo.create_model(name)
    params = sum(p.numel() for p in model.parameters())
    print(f"B{phi}: formula depth {ALPHA**phi:.2f} width {BETA**phi:.2f} {224 * GAMMA**phi:.0f} px"
          f" | released depth {depth} width {width} {resolution} px, dropout {dropout}")
    stages = scaled_stages(width, depth)
    channels, repeats = [s[4] for s in stages], [s[5] for s in stages]
    print(f"    stages: channels {channels}, blocks {repeats} (B0: "
          f"{[n for *_, n in B0_STAGES]})")
    print(f"    {params / 1e6:.1f} M parameters, {cnnzoo.count_macs(model) / 1e9:.2f} G "
          f"multiply-adds, ImageNet top-1 {cnnzoo.model_info(name).imagenet_top1} %")
