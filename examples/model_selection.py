"""Chapters 5 and 7: models measured side by side on this machine (parameters, multiply-adds,
weights and activation memory, the time of one image in interleaved turns), then the notes'
selection guide picked from those measurements.

    python examples/model_selection.py                   # the mobile nets against ResNet and VGG
    python examples/model_selection.py --models resnet50 preact_resnet50 resnext50_32x4d \\
        wide_resnet50_2 se_resnet50                      # chapter 5's variants
    python examples/model_selection.py --models mobilenet_v3_small resnet18 --size 96 --turns 1
"""

import argparse

import torch

import cnnzoo
from cnnzoo.optimize import interleaved_medians
from cnnzoo.train.hardware import default_threads

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--models", nargs="+", default=[
    "mobilenet_v3_small", "shufflenet_v2_x1_0", "mobilenet_v2", "mobilenet_v3_large",
    "efficientnet_b0", "resnet18", "resnet50", "vgg16"])
parser.add_argument("--size", type=int, default=224, help="image side in pixels")
parser.add_argument("--turns", type=int, default=5)
args = parser.parse_args()

# Threads on cores that other processes keep busy wait for each other at every layer.
torch.set_num_threads(default_threads())
image = torch.randn(1, 3, args.size, args.size)
models = {name: cnnzoo.create_model(name).eval() for name in args.models}
with torch.inference_mode():
    seconds = interleaved_medians({name: lambda m=m: m(image) for name, m in models.items()},
                                  warmup=1, rounds=args.turns, budget_s=0.0)

rows = []
for name, model in models.items():
    s = cnnzoo.summary(model, (3, args.size, args.size))
    rows.append({"name": name, "params": s.total_params / 1e6, "gmacs": s.total_macs / 1e9,
                 "memory_mb": s.param_mb + s.activation_mb, "ms": 1000 * seconds[name],
                 "top1": cnnzoo.model_info(name).imagenet_top1})

print(f"{'model':20} {'params':>8} {'mult-adds':>10} {'memory':>8} {'ms/image':>9} {'top-1':>6}")
for r in rows:
    top1 = f"{r['top1']:5.1f}%" if r["top1"] else "     -"
    print(f"{r['name']:20} {r['params']:6.1f} M {r['gmacs']:8.2f} G {r['memory_mb']:5.0f} MB "
          f"{r['ms']:9.1f} {top1}")

rated = [r for r in rows if r["top1"]]
print("\nfast inference:  ", min(rows, key=lambda r: r["ms"])["name"])
print("least memory:    ", min(rows, key=lambda r: r["memory_mb"])["name"])
if rated:
    print("most accurate:   ", max(rated, key=lambda r: r["top1"])["name"], "(published top-1)")
