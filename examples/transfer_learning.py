"""Chapter 8: transfer learning on an image folder (one sub-folder per class, as the notes'
dogs-vs-cats): ResNet-20 from scratch against ResNet-20 with cnnzoo's Fashion-MNIST weights, its
backbone frozen and a new head; then fine-tuning with the backbone unfrozen from epoch 3.

    python examples/transfer_learning.py                       # makes shirts/ (T-shirts vs shirts)
    python examples/transfer_learning.py --folder my_images --split 400/92/10 --image-size 28
"""

import argparse
from pathlib import Path

from PIL import Image

import cnnzoo
from cnnzoo.data import load_data

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--folder", default="shirts", help="made from Fashion-MNIST if missing")
parser.add_argument("--per-class", type=int, default=500, help="images per class when making it")
parser.add_argument("--split", default="400/300/300", help="train/val/test counts or fractions")
parser.add_argument("--image-size", type=int, default=28)
parser.add_argument("--epochs", type=int, default=6)
parser.add_argument("--output-dir", default="runs/transfer")
args = parser.parse_args()

folder = Path(args.folder)
if not folder.exists():
    # Fashion-MNIST's test images: the pretrained weights were trained on the training set only.
    _, (x_test, y_test) = load_data("fashion_mnist")
    for label, name in [(0, "t-shirt"), (6, "shirt")]:
        (folder / name).mkdir(parents=True)
        for index in (y_test == label).nonzero()[0][: args.per_class]:
            Image.fromarray(x_test[index]).save(folder / name / f"{index:05d}.png")

split = [float(part) for part in args.split.split("/")]
common = dict(split=split, image_size=args.image_size, epochs=args.epochs, batch_size=32,
              seed=0, quiet=True, overwrite=True)  # fmt: skip
runs = {
    "from scratch": {},
    "pretrained, frozen": {"weights": "fashion_mnist", "freeze": "backbone"},
    "fine-tuned from epoch 3": {"weights": "fashion_mnist", "freeze": "backbone",
                                "unfreeze_at": min(3, args.epochs), "lr": 0.01},
}
for index, (label, transfer) in enumerate(runs.items()):
    history = cnnzoo.fit("resnet20", f"imagefolder:{folder}", **common, **transfer,
                         output_dir=f"{args.output_dir}/{index}")  # fmt: skip
    print(f"{label:24} test accuracy {history.metrics['test_top1']:.1%}   ({history.run_dir})")
