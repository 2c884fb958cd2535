"""`cnnzoo serve`: models behind an HTTP API, on uvicorn."""

from __future__ import annotations

import argparse
import gc
import os
import signal
import socket
import sys
import threading
import time
from typing import Any

from cnnzoo.cli.options import (
    add_onnx_arguments,
    add_source_arguments,
    onnx_options,
    positive_float,
    positive_int,
)
from cnnzoo.errors import CnnzooError, UsageError

API_KEY_ENV = "CNNZOO_API_KEY"


def register(subparsers: Any) -> None:
    serve = subparsers.add_parser(
        "serve",
        help="serve models over HTTP (predict, explain, Open Inference Protocol v2, metrics)",
        description=(
            "Serve one or more models over HTTP: `cnnzoo serve runs/r20 resnet20:fashion_mnist "
            "lenet5:digits r20.int8.onnx`. Each is served under its model name, its run "
            "directory's name or its .onnx file's name (NAME=SOURCE chooses). An .onnx file "
            "cnnzoo wrote (export, quantize) is served by ONNX Runtime for predict and v2 infer; "
            "--int8 quantizes the PyTorch sources at start-up (explain keeps float32). "
            "Requests are batched per model on one inference thread; "
            "uploads are checked before they are decoded. Endpoints: /v1/models, "
            "/v1/models/NAME/predict, /v1/models/NAME/explain, /v2/... (KServe, Triton), "
            "/metrics, /healthz, /readyz, /docs."
        ),
    )
    add_source_arguments(serve, many=True)
    net = serve.add_argument_group("network and access")
    net.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    net.add_argument("--port", type=int, default=8000, help="0 picks a free port (default 8000)")
    net.add_argument(
        "--api-key",
        help="require Authorization: Bearer KEY on all but the health endpoints (default: "
        f"${API_KEY_ENV}, when set)",
    )
    net.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="let pages from ORIGIN call the API (repeatable; * for any); CORS is off by default",
    )
    net.add_argument("--access-log", action="store_true", help="log every request (uvicorn's)")
    speed = serve.add_argument_group("batching and compute")
    speed.add_argument("--max-batch", type=positive_int, default=8, help="images per forward pass")
    speed.add_argument(
        "--max-wait-ms",
        type=float,
        default=5.0,
        help="how long a batch may wait to fill while more requests are arriving (default 5)",
    )
    speed.add_argument(
        "--queue-size", type=positive_int, default=128, help="images waiting per model (then 503)"
    )
    speed.add_argument(
        "--optimize", action="store_true", help="serve cnnzoo.optimize's checked fast copy"
    )
    speed.add_argument(
        "--int8",
        action="store_true",
        help="quantize each PyTorch source to int8 at start-up, as `cnnzoo quantize` does "
        "(calibrated on its own training data, checked against float32), and serve that for "
        "predict and v2 infer; explain keeps the float32 model",
    )
    speed.add_argument(
        "--threads",
        type=positive_int,
        help="threads of each model's inference (torch, ONNX Runtime, OpenVINO; default: the "
        "cores left free)",
    )
    speed.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    from cnnzoo.cli.quantize_cmd import add_int8_arguments

    add_int8_arguments(serve)
    add_onnx_arguments(serve)
    limits = serve.add_argument_group("limits")
    limits.add_argument(
        "--timeout", type=positive_float, default=30.0, help="seconds per request (then 504)"
    )
    limits.add_argument(
        "--max-upload-mb", type=positive_float, default=10.0, help="request body (then 413)"
    )
    limits.add_argument(
        "--max-pixels",
        type=positive_int,
        default=40_000_000,
        help="pixels in one image, read from its header before decoding (then 413)",
    )
    limits.add_argument(
        "--max-images", type=positive_int, default=64, help="images in one request (then 413)"
    )
    serve.set_defaults(run=run_serve)


def _sources(args: argparse.Namespace) -> list[Any]:
    from cnnzoo.serve.models import parse_source

    if args.weights is not None:
        if len(args.sources) != 1:
            raise UsageError("--weights goes with one model; for several use MODEL:WEIGHTS each")
        specs = [parse_source(args.sources[0], args.weights)]
    else:
        specs = [parse_source(source) for source in args.sources]
    described = {key: value for key, value in onnx_options(args).items() if value is not None}
    if described:
        flag = "--" + next(iter(described)).replace("_", "-")
        foreign = [spec for spec in specs if _is_foreign_onnx(spec.source)]
        if len(foreign) != 1:
            raise UsageError(
                f"{flag} describes one .onnx file cnnzoo did not write; "
                + ("none of the sources is one" if not foreign else
                   f"{len(foreign)} are: serve them from separate commands")
            )  # fmt: skip
        foreign[0].options = described
    return specs


def _is_foreign_onnx(source: Any) -> bool:
    from pathlib import Path

    from cnnzoo.runtime import read_metadata

    path = Path(str(source)).expanduser()
    return path.is_file() and path.suffix.lower() == ".onnx" and read_metadata(path) is None


def _int8_options(args: argparse.Namespace) -> dict[str, Any]:
    if not args.int8:
        flags = {"--calibration": args.calibration, "--sensitivity": args.sensitivity}
        given = [flag for flag, value in flags.items() if value]
        if given:
            raise UsageError(f"{' and '.join(given)}: for --int8")
        return {}
    return {
        "int8": True,
        "calibration": args.calibration,
        "samples": args.samples,
        "val_samples": args.val_samples,
        "method": args.method,
        "sensitivity": args.sensitivity,
        "max_drop": args.max_drop,
        "min_agreement": args.min_agreement,
        "int8_backend": args.backend,
        "quantizer": args.quantizer,
    }  # fmt: skip


def _listen(host: str, port: int) -> socket.socket:
    if not 0 <= port <= 65535:
        raise UsageError(f"--port must be 0..65535, got {port}")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        reason = (exc.strerror or str(exc)).lower()
        raise CnnzooError(f"cannot listen on {host}:{port}: {reason}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _say(message: str) -> None:
    print(f"cnnzoo serve: {message}", flush=True)


def _announce_ready(app: Any, started: float) -> None:
    models = app.state.models
    models.wait_ready()
    failed = [f"{s.name}: {s.worker.error}" for s in models if s.worker.error is not None]
    if failed:
        print(f"cnnzoo serve: error: failed to warm up: {'; '.join(failed)}", file=sys.stderr)
        return
    notes = [note for note in (s.ready_note() for s in models) if note]
    _say(f"ready in {time.perf_counter() - started:.1f} s" + "".join(f"; {n}" for n in notes))


def _answered(app: Any) -> int:
    metric = app.state.metrics.requests
    return int(
        sum(s.value for m in metric.collect() for s in m.samples if s.name.endswith("total"))
    )


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from cnnzoo.serve import create_app

    started = time.perf_counter()
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    app = create_app(
        _sources(args),
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        queue_size=args.queue_size,
        timeout=args.timeout,
        max_upload_mb=args.max_upload_mb,
        max_pixels=args.max_pixels,
        max_images=args.max_images,
        api_key=api_key,
        cors_origins=tuple(args.cors_origin),
        optimize=args.optimize,
        threads=args.threads,
        device=args.device,
        **_int8_options(args),
    )
    for served in app.state.models:
        _say(served.startup_line())
    sock = _listen(args.host, args.port)
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=args.access_log,
        lifespan="on",
        server_header=False,
        # In-flight requests end by their own --timeout; then the workers drain their queues.
        timeout_graceful_shutdown=int(args.timeout) + 5,
    )
    server = uvicorn.Server(config)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        print(
            f"cnnzoo serve: warning: listening on {args.host} without --api-key: anyone who can "
            "reach this machine can use the models",
            file=sys.stderr,
        )
    _say(f"{_url(sock)} (API docs at /docs; Ctrl-C to stop)")
    threading.Thread(target=_announce_ready, args=(app, started), daemon=True).start()
    # uvicorn catches SIGINT/SIGTERM, stops taking connections, lets the requests in flight
    # finish, then sends the signal again to the handler it found: a do-nothing one, so that a
    # clean stop ends with status 0 rather than as an interrupted command.
    stops: list[int] = []
    previous = {
        signum: signal.signal(signum, lambda n, _: stops.append(n))
        for signum in (signal.SIGINT, signal.SIGTERM)
    }
    # torch, FastAPI and the models leave ~400,000 objects that live as long as the server; a
    # full garbage collection walking them took 0.36 s here, a pause every request in flight
    # felt (p99 at 32 clients: 320-470 ms, 70-180 ms once frozen). Frozen, collections skip them.
    gc.collect()
    gc.freeze()
    try:
        server.run(sockets=[sock])
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        sock.close()
    if not server.started:
        raise CnnzooError("the server did not start (see the messages above)")
    why = f" on {signal.Signals(stops[0]).name}" if stops else ""
    _say(f"stopped{why} after {_answered(app)} requests")
    return 0
