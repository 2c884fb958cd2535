"""cnnzoo: classic image-classification CNNs, faithful to their papers and verified."""

from cnnzoo.analysis.flops import count_macs
from cnnzoo.analysis.receptive_field import receptive_field
from cnnzoo.analysis.summary import summary
from cnnzoo.optimize import optimize
from cnnzoo.pretrained import get_weight_spec, list_weights
from cnnzoo.registry import create_model, list_models, model_info
from cnnzoo.train import History, TrainConfig, Trainer, callbacks, evaluate, fit, predict
from cnnzoo.weights import load_weights, save_weights

__version__ = "0.1.0"

__all__ = [
    "History",
    "TrainConfig",
    "Trainer",
    "__version__",
    "callbacks",
    "count_macs",
    "create_model",
    "evaluate",
    "fit",
    "get_weight_spec",
    "list_models",
    "list_weights",
    "load_weights",
    "model_info",
    "optimize",
    "predict",
    "receptive_field",
    "save_weights",
    "summary",
]
