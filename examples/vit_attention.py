"""Chapter 10: a Vision Transformer's patches, tokens and receptive field beside a CNN's, and its
attention rollout and Grad-CAM maps for one image, as a PNG in OUT.

    python examples/vit_attention.py                           # an untrained vit_cifar_4, noise
    python examples/vit_attention.py --source runs/vit shoe.png   # a trained run, your image
"""

import argparse
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from torchvision.io import ImageReadMode, decode_image

import cnnzoo
from cnnzoo.analysis.explain import attention_rollout, gradcam_maps
from cnnzoo.inference import load_model

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--source", default="vit_cifar_4",
                    help="a ViT: a model name (untrained) or a run directory / checkpoint")
parser.add_argument("image", nargs="?", help="an image file (default: noise)")
parser.add_argument("--out", default="vit_attention")
args = parser.parse_args()

out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)
fresh = args.source == "vit_cifar_4"  # untrained: built for Fashion-MNIST's 1x28x28
loaded = load_model(args.source, in_chans=1 if fresh else None,
                    model_kwargs={"image_size": 28} if fresh else None)
vit = loaded.model.eval()
side = loaded.input_size

print("model         params      receptive field of the last stage")
for name in (loaded.name, "resnet20", "convnext_cifar"):
    model = vit if name == loaded.name else cnnzoo.create_model(name, in_chans=loaded.channels)
    fields = cnnzoo.receptive_field(model, (loaded.channels, *side))
    last = fields.layers[model.feature_info[-1].module]
    params = sum(p.numel() for p in model.parameters())
    print(f"{name:14} {params:9,}   {last.size[0]} px on a {side[0]}-px image")

if args.image:
    mode = ImageReadMode.GRAY if loaded.channels == 1 else ImageReadMode.RGB
    batch = loaded.prepare([decode_image(args.image, mode=mode)])
else:
    batch = torch.randn(1, loaded.channels, *side, generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    predicted = vit(batch).argmax(1)
rollout = attention_rollout(vit, batch)[0]
gradcam = gradcam_maps(vit, batch, predicted)[0]
label = loaded.class_names[int(predicted)] if loaded.trained else "untrained"
if not loaded.trained:  # a ViT's head starts at zero (torchvision's init): no class gradient
    print("untrained: the Grad-CAM map is empty until the head has learnt something")

fig, axes = plt.subplots(1, 3, figsize=(7.5, 2.8))
shown = loaded.shown(batch)[0].permute(1, 2, 0).squeeze(-1)
for ax, picture, title in zip(axes, [shown, rollout, gradcam],
                              ["input", "attention rollout", f"Grad-CAM ({label})"], strict=True):
    ax.imshow(picture, cmap="gray" if title == "input" else "inferno")
    ax.set_title(title, fontsize=9)
    ax.axis("off")
fig.tight_layout()
fig.savefig(out / "attention.png", dpi=120)
print(f"wrote {out / 'attention.png'}")
