"""The explorer: a web page, served by ``cnnzoo serve`` at ``/``, that shows what any served
network does with an image — its answer, Grad-CAM, its layer graph, every layer's activation
maps, a unit's receptive field and arithmetic — and the zoo catalogue.

``service.py`` computes (on each model's own worker thread, cached per image and model),
``router.py`` puts it behind HTTP, ``static/`` is the page (plain HTML, CSS and JavaScript
modules; no build step, nothing loaded from the network).
"""

from __future__ import annotations

from pathlib import Path

STATIC_DIR = Path(__file__).parent / "static"

__all__ = ["STATIC_DIR"]
