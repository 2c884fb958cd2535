"""Chapter 4: the degradation experiment (He et al. 2015, Fig. 1): plain nets and ResNets of the
same depths trained with the paper's recipe; writes degradation.png/.md/.json into OUTPUT.

    python examples/resnet_degradation.py           # the committed run: about 48 min on 2 cores
    python examples/resnet_degradation.py --epochs 1 --subset 500 --depths 20
"""

import argparse

from cnnzoo.experiments.degradation import run_degradation

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--epochs", type=int, default=20)
parser.add_argument("--subset", type=int, default=10_000, help="training images (class-balanced)")
parser.add_argument("--depths", type=int, nargs="+", default=[20, 56])
parser.add_argument("--output-dir", default="runs/degradation")
args = parser.parse_args()

record = run_degradation(args.output_dir, dataset="fashion_mnist", epochs=args.epochs,
                         depths=args.depths, subset=args.subset, resume=True)  # fmt: skip
for row in record["rows"]:
    print(f"{row['model']:9} training error {row['final_train_error']:6.1%}   "
          f"test error {row['final_test_error']:6.1%}")
print(f"figure: {args.output_dir}/degradation.png")
