"""Chapter 3: GoogLeNet evaluated with batch norm's running averages, then with statistics
recomputed from training batches ("precise BN"); the training is the same, only evaluation differs.

    python examples/inception_precise_bn.py                  # 3 epochs on scikit-learn's digits
    python examples/inception_precise_bn.py --epochs 1 --train-images 300
"""

import argparse

import cnnzoo
from cnnzoo.data import load_data

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--epochs", type=int, default=3)
parser.add_argument("--train-images", type=int, default=None, help="default: all 1,437")
parser.add_argument("--output-dir", default="runs/precise-bn")
args = parser.parse_args()

(x_train, y_train), (x_test, y_test) = load_data("digits")
x_train, y_train = x_train[: args.train_images], y_train[: args.train_images]
for precise_bn in (0, 20):
    history = cnnzoo.fit("googlenet", x_train, y_train, validation_split=0.1,
                         test_data=(x_test, y_test), epochs=args.epochs, seed=0,
                         precise_bn=precise_bn, output_dir=f"{args.output_dir}/{precise_bn}",
                         overwrite=True, quiet=True)  # fmt: skip
    print(f"precise_bn={precise_bn:2}: train {history.history['accuracy'][-1]:.1%}, "
          f"validation {history.history['val_accuracy'][-1]:.1%}, "
          f"test {history.metrics['test_top1']:.1%}")
