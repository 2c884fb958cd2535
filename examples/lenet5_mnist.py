"""LeNet-5 on MNIST: the course notes' Keras script, line for line, with cnnzoo.

    python examples/lenet5_mnist.py                     # MNIST (its IDX files in $CNNZOO_DATA)
    python examples/lenet5_mnist.py fashion_mnist 5     # another dataset, another epoch budget
"""

import sys

import cnnzoo
from cnnzoo.callbacks import EarlyStopping, TensorBoard
from cnnzoo.data import load_data

# Load the data and scale it to [0, 1]
(x_train, y_train), (x_test, y_test) = load_data(sys.argv[1] if len(sys.argv) > 1 else "mnist")
x_train, x_test = x_train / 255.0, x_test / 255.0

# Hyperparameters
num_classes = 10
epochs = int(sys.argv[2]) if len(sys.argv) > 2 else 100
batch_size = 32

# The model (cnnzoo's LeNet-5) and the callbacks
model = cnnzoo.create_model("lenet5", num_classes=num_classes, in_chans=1)
callbacks = [EarlyStopping(patience=3, monitor="val_loss"),
             TensorBoard(log_dir="./logs", histogram_freq=1)]  # fmt: skip

# Train as the notes do: Keras' plain SGD (lr 0.01 throughout, no momentum, no weight decay),
# without the extras cnnzoo's default recipe would add (augmentation, label smoothing, an EMA
# of the weights); the loss is cross-entropy and the metric accuracy, as compiled in Keras
history = cnnzoo.fit(model, x_train, y_train,
                     batch_size=batch_size,
                     epochs=epochs,
                     validation_data=(x_test, y_test),
                     callbacks=callbacks,
                     optimizer="sgd", lr=0.01, momentum=0.0, weight_decay=0.0, schedule="none",
                     augment="none", label_smoothing=0.0, ema_decay=0.0)  # fmt: skip

score = cnnzoo.evaluate(model, x_test, y_test)
print("\nTest Score: ", score["loss"])
print("\nTest Accuracy: ", score["accuracy"])
