"""Chapter 9: what a trained network looks at: Grad-CAM over a grid of test images, the most
active feature maps of each stage, and the first layer's filters, as PNGs in OUT.

    python examples/seeing_inside.py                           # cnnzoo's ResNet-20 (Fashion-MNIST)
    python examples/seeing_inside.py --model plain20 --count 5 --out seen
"""

import argparse
from pathlib import Path

import torch
from PIL import Image

import cnnzoo
from cnnzoo.analysis.explain import gradcam_maps
from cnnzoo.analysis.featuremaps import (
    filters_figure,
    first_conv_weight,
    stage_maps,
    stage_maps_figure,
)
from cnnzoo.analysis.plots import plot_prediction_grid, save_figure
from cnnzoo.data import load_data

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--model", default="resnet20", help="a model with fashion_mnist weights")
parser.add_argument("--count", type=int, default=10, help="test images in the Grad-CAM grid")
parser.add_argument("--out", default="seeing_inside")
args = parser.parse_args()

out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)
model = cnnzoo.create_model(args.model, weights="fashion_mnist").eval()
preprocess = cnnzoo.get_weight_spec(args.model, "fashion_mnist").transforms()
names = model.pretrained_cfg["categories"]

_, (x_test, y_test) = load_data("fashion_mnist")
images, labels = x_test[: args.count], y_test[: args.count]
batch = torch.stack([preprocess(Image.fromarray(image)) for image in images])
with torch.no_grad():
    predicted = model(batch).argmax(1)
print(f"{int((predicted == torch.as_tensor(labels)).sum())}/{len(labels)} right")

plot_prediction_grid(images, predicted, labels, names, out / "gradcam.png",
                     heats=gradcam_maps(model, batch, predicted))  # fmt: skip
save_figure(stage_maps_figure(stage_maps(model, batch[:1]), model.feature_info,
                              image=batch[0]), out / "feature_maps.png")  # fmt: skip
layer, weight = first_conv_weight(model)
save_figure(filters_figure(weight, title=layer), out / "filters.png")
print(f"wrote {', '.join(sorted(p.name for p in out.glob('*.png')))} in {out}/")
