"""cnnzoo: classic image-classification CNNs, faithful to their papers and verified."""

from cnnzoo.analysis.flops import count_macs
from cnnzoo.analysis.receptive_field import receptive_field
from cnnzoo.analysis.summary import summary
from cnnzoo.optimize import optimize
from cnnzoo.registry import create_model, list_models, model_info
from cnnzoo.train import TrainConfig, Trainer, fit
from cnnzoo.weights import load_weights, save_weights

__version__ = "0.1.0"

__all__ = [
    "TrainConfig",
    "Trainer",
    "__version__",
    "count_macs",
    "create_model",
    "fit",
    "list_models",
    "load_weights",
    "model_info",
    "optimize",
    "receptive_field",
    "save_weights",
    "summary",
]
