"""``cnnzoo serve``: any model behind an HTTP API (FastAPI + uvicorn).

:func:`create_app` builds the ASGI app. It leaves ``/`` free, and a router added to it finds:

- ``app.state.models`` (:class:`ServedModels`): ``models.get(name)`` (a 404 listing the served
  ones), ``models[name]``, ``name in models``, iteration, ``models.list()``, ``models.names()``;
  each :class:`ServedModel` has ``.loaded`` (its :class:`~cnnzoo.inference.InferenceModel`),
  ``.info()`` (what ``/v1/models`` says) and ``await served.call(fn, *args)``, which runs ``fn``
  on the model's own worker thread between its inference batches (torch work on the model goes
  through there, never beside a batch); ``await models.add(source, name=None)`` loads another
  model while the server runs (it warms up, then appears in ``/v1/models``);
- ``app.state.options`` (:class:`ServeOptions`), ``app.state.limits`` (:class:`UploadLimits`),
  ``app.state.metrics``, and ``app.state.public_paths``: paths the API key does not guard
  (add a page's paths there to open them);
- the shared pieces: :class:`ApiError` / :func:`error_response` (the one error format, with
  handlers installed by :func:`install_error_handlers`), :func:`read_images` (uploads in the
  three forms, with their limits: 413, 415, 400), :func:`require_api_key` (a dependency).
"""

from cnnzoo.serve.app import create_app
from cnnzoo.serve.errors import ApiError, error_response, install_error_handlers
from cnnzoo.serve.models import ModelSource, ServedModel, ServedModels, parse_source
from cnnzoo.serve.options import ServeOptions
from cnnzoo.serve.security import check_api_key, require_api_key
from cnnzoo.serve.uploads import UploadLimits, decode_upload, read_body, read_images, read_json
from cnnzoo.serve.worker import ModelWorker

__all__ = [
    "ApiError",
    "ModelSource",
    "ModelWorker",
    "ServeOptions",
    "ServedModel",
    "ServedModels",
    "UploadLimits",
    "check_api_key",
    "create_app",
    "decode_upload",
    "error_response",
    "install_error_handlers",
    "parse_source",
    "read_body",
    "read_images",
    "read_json",
    "require_api_key",
]
