"""``cnnzoo serve``: any model behind an HTTP API (FastAPI + uvicorn).

:func:`create_app` builds the ASGI app; :class:`ServedModels` (``app.state.models``) holds the
models, each with its :class:`ModelWorker`. The pieces a router added to the app reuses:
:class:`ApiError` and :func:`error_response` (the one error format), :func:`read_images`
(uploads with their limits), :func:`require_api_key`.
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
