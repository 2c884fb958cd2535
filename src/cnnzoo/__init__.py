"""cnnzoo: classic image-classification CNNs, faithful to their papers and verified.

The names below load on first use (PEP 562), so ``import cnnzoo`` and the ``cnnzoo`` command
start without importing torch until they need it; a Ctrl-C while torch loads then reaches the
command line's handler (one line, exit 130) instead of a traceback from the import.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "History": "cnnzoo.train",
    "TrainConfig": "cnnzoo.train",
    "Trainer": "cnnzoo.train",
    "evaluate": "cnnzoo.train",
    "fit": "cnnzoo.train",
    "predict": "cnnzoo.train",
    "count_macs": "cnnzoo.analysis.flops",
    "receptive_field": "cnnzoo.analysis.receptive_field",
    "summary": "cnnzoo.analysis.summary",
    "optimize": "cnnzoo.optimize",
    "quantize": "cnnzoo.quantize",
    "get_weight_spec": "cnnzoo.pretrained",
    "list_weights": "cnnzoo.pretrained",
    "create_model": "cnnzoo.registry",
    "list_models": "cnnzoo.registry",
    "model_info": "cnnzoo.registry",
    "load_weights": "cnnzoo.weights",
    "save_weights": "cnnzoo.weights",
}

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
    "quantize",
    "receptive_field",
    "save_weights",
    "summary",
]


# public submodules, loaded on first use like the names above
_SUBMODULES = ("callbacks",)


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"cnnzoo.{name}")  # the import binds it here
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'cnnzoo' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS, *_SUBMODULES})


class _Package(types.ModuleType):
    """``cnnzoo.optimize`` and ``cnnzoo.quantize`` are functions named like the modules that
    define them. Loading such a module makes the import system set it as an attribute of the
    package, which would hide the function (``cnnzoo.optimize(...)`` calling a module) whenever
    the module was imported first: those attributes keep the function."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and _EXPORTS.get(name) == f"{__name__}.{name}":
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


if TYPE_CHECKING:
    from cnnzoo import callbacks
    from cnnzoo.analysis.flops import count_macs
    from cnnzoo.analysis.receptive_field import receptive_field
    from cnnzoo.analysis.summary import summary
    from cnnzoo.optimize import optimize
    from cnnzoo.pretrained import get_weight_spec, list_weights
    from cnnzoo.quantize import quantize
    from cnnzoo.registry import create_model, list_models, model_info
    from cnnzoo.train import History, TrainConfig, Trainer, evaluate, fit, predict
    from cnnzoo.weights import load_weights, save_weights
