"""One batching thread per served model, and the one thread where all their torch code runs.

Request handlers put decoded images (or ready input tensors) into the worker's bounded queue
and await the answers; the worker takes what is waiting, up to ``max_batch`` images, runs one
forward pass and hands every request its rows. It waits up to ``max_wait_ms`` for a batch to
fill, but only while a request for this model is being read or decoded (counted by
:meth:`ModelWorker.incoming`): a lone client never pays the wait, and under load the batch
fills while the previous one computes.

The torch work itself (warming up, preprocessing and the forward pass, Grad-CAM, feature maps,
loading another model) runs on one thread for the whole process, :data:`TORCH_THREAD`: the
workers fill batches and hand them over. One batch at a time then has all of torch's threads,
and only one OpenMP thread team exists. OpenMP keeps a team per thread that starts parallel work;
with two teams on the cores (one per worker thread, or the main thread's from loading the model)
libgomp stops its workers spinning between parallel regions and every layer waits for its
threads to wake up: resnet18 at batch 1 with 2 threads took 31 ms on a second thread against
20 ms on the first (measured on this project's 2-core machine).

What a batch runs on (``runner``) is settled while warming up: the PyTorch model itself,
``cnnzoo.optimize``'s checked fast copy (``optimize``), :func:`cnnzoo.quantize`'s int8 graph
(``int8``: the same slot, a callable module with a ``.report``), or the ONNX graph an ``.onnx``
source is. An ONNX Runtime or OpenVINO graph gets the worker's threads, not the runtime's
default of every core on top of torch's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from cnnzoo.serve.errors import ApiError

if TYPE_CHECKING:
    import torch

    from cnnzoo.calibration import CalibrationData
    from cnnzoo.inference import InferenceModel
    from cnnzoo.serve.metrics import ServeMetrics

__all__ = ["TORCH_THREAD", "ImageResult", "ModelWorker", "TorchThread"]

log = logging.getLogger("cnnzoo.serve")

_STOP = object()


class TorchThread:
    """One daemon thread that runs the functions handed to it, one at a time, in order.

    :meth:`run` waits for the answer (a call made on the thread itself runs at once);
    :meth:`submit` returns a ``concurrent.futures.Future``. Exceptions reach the caller.
    """

    def __init__(self, name: str = "cnnzoo-torch") -> None:
        self.name = name
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def on_thread(self) -> bool:
        return self._thread is not None and threading.current_thread() is self._thread

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name=self.name, daemon=True)
                self._thread.start()
        self._jobs.put((future, fn, args, kwargs))
        return future

    def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self.on_thread():
            return fn(*args, **kwargs)
        return self.submit(fn, *args, **kwargs).result()

    def _serve(self) -> None:
        while True:
            future, fn, args, kwargs = self._jobs.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:  # noqa: BLE001 - handed to whoever waits for it
                future.set_exception(exc)
            else:
                future.set_result(result)
            del future, fn, args, kwargs  # nothing of a finished job lives on in this frame


# Every serving worker's torch work, whichever model: one batch at a time gets every core.
TORCH_THREAD = TorchThread()


@dataclass
class ImageResult:
    """What the worker found for one image."""

    top: list[tuple[int, float]]  # (class index, probability), best first
    logits: list[float] | None  # when asked for (the v2 protocol)
    probabilities: list[float] | None
    queue_ms: float  # from entering the queue to its batch's start
    inference_ms: float  # its batch's preprocessing and forward pass
    batch_size: int


@dataclass
class _Job:
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    image: np.ndarray | None = None  # decoded uint8 (H, W[, C]): preprocessed by the worker
    tensor: np.ndarray | None = None  # an input already preprocessed, float32 (C, H, W)
    topk: int = 5
    outputs: bool = False  # return the logits and probabilities too
    call: Callable[[], Any] | None = None
    queued: float = field(default_factory=time.perf_counter)

    @property
    def images(self) -> int:
        return 0 if self.call is not None else 1


def _settle(future: asyncio.Future, value: Any, failed: bool) -> None:
    if future.done():  # the request timed out or its client left
        return
    if failed:
        future.set_exception(value)
    else:
        future.set_result(value)


class ModelWorker:
    """The thread that owns one model's torch work, and its queue."""

    def __init__(
        self,
        name: str,
        loaded: InferenceModel,
        *,
        max_batch: int = 8,
        max_wait_ms: float = 5.0,
        queue_size: int = 128,
        threads: int | None = None,
        device: str | torch.device = "cpu",
        optimize: bool = False,
        int8: dict[str, Any] | None = None,
        calibration: CalibrationData | None = None,
        metrics: ServeMetrics | None = None,
    ) -> None:
        self.name, self.loaded = name, loaded
        self.max_batch, self.max_wait = max(1, max_batch), max(0.0, max_wait_ms) / 1e3
        self.queue_size, self.threads, self.device = queue_size, threads, device
        self.optimize_requested = optimize
        # cnnzoo.quantize's options; an .onnx file that is int8 already is served as it is.
        self.int8 = int8 if loaded.config.get("precision") != "int8" else None
        self.calibration = calibration  # dropped once quantized
        self.metrics = metrics
        # Replaced while warming up by the optimized copy, the int8 graph or the graph's session
        # with the worker's threads.
        self.runner: Callable[[Any], Any] = loaded.model
        self.optimize_report: Any = None  # OptimizeReport or QuantizeReport
        self.ready = threading.Event()  # warmed up (or failed: see .error)
        self.error: BaseException | None = None
        self.warmup_s: float | None = None
        self._queue: queue.Queue[Any] = queue.Queue()
        self._held: Any = None  # a job taken while filling a batch that must run on its own
        self._lock = threading.Lock()
        self._waiting = 0  # images in the queue
        self._incoming = 0  # requests being read or decoded for this model
        self._thread: threading.Thread | None = None
        self.batches = 0
        self.images_done = 0

    # ------------------------------------------------------------------ the request side

    @property
    def depth(self) -> int:
        """Images queued or in the batch being computed (what --queue-size bounds)."""
        return self._waiting

    @contextlib.contextmanager
    def incoming(self) -> Iterator[None]:
        """Around reading and decoding a request for this model: the worker may wait for it."""
        with self._lock:
            self._incoming += 1
        try:
            yield
        finally:
            with self._lock:
                self._incoming -= 1

    def start(self) -> None:
        """Start the thread (once); it warms up, then serves the queue."""
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(
                target=self._run, name=f"cnnzoo-serve-{self.name}", daemon=True
            )
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Finish what is queued, then end the thread."""
        if self._thread is None:
            return
        self._queue.put(_STOP)
        self._thread.join(timeout)

    def _check_usable(self) -> None:
        if self.error is not None:
            raise ApiError(503, f"model {self.name} failed to start: {self.error}")

    def _enqueue(self, jobs: list[_Job]) -> None:
        self._check_usable()
        self.start()
        images = sum(job.images for job in jobs)
        with self._lock:
            # An empty queue takes any one request, however many images it has.
            if self._waiting and self._waiting + images > self.queue_size:
                raise ApiError(
                    503,
                    f"model {self.name} is busy: {self._waiting} images queued (limit "
                    f"{self.queue_size}); retry shortly",
                    {"Retry-After": "1"},
                )
            self._waiting += images
        for job in jobs:
            self._queue.put(job)

    async def infer(
        self,
        images: list[np.ndarray] | None = None,
        *,
        tensors: list[np.ndarray] | None = None,
        topk: int = 5,
        outputs: bool = False,
        timeout: float | None = None,
    ) -> list[ImageResult]:
        """Classify decoded ``images`` (uint8 arrays; the model's preprocessing is applied) or
        ready float32 ``tensors`` (C, H, W); 503 when the queue is full, 504 past ``timeout``."""
        loop = asyncio.get_running_loop()
        jobs = [
            _Job(loop, loop.create_future(), image=image, topk=topk, outputs=outputs)
            for image in images or []
        ] + [
            _Job(loop, loop.create_future(), tensor=tensor, topk=topk, outputs=outputs)
            for tensor in tensors or []
        ]
        self._enqueue(jobs)
        futures = [job.future for job in jobs]
        try:
            return list(await asyncio.wait_for(asyncio.gather(*futures), timeout))
        except asyncio.TimeoutError:
            raise ApiError(
                504, f"no answer from model {self.name} within the {timeout:g} s timeout"
            ) from None
        finally:
            for future in futures:  # the worker skips what nobody waits for any more
                future.cancel()

    async def call(
        self, fn: Callable[..., Any], *args: Any, timeout: float | None = None, **kwargs: Any
    ) -> Any:
        """Run ``fn(*args, **kwargs)`` on the torch thread, between this model's batches; return
        its result (or raise its exception); 504 past ``timeout`` seconds. Torch work on the
        model goes through here, so that it never runs beside a batch."""
        loop = asyncio.get_running_loop()
        job = _Job(loop, loop.create_future(), call=lambda: fn(*args, **kwargs))
        self._enqueue([job])
        try:
            return await asyncio.wait_for(job.future, timeout)
        except asyncio.TimeoutError:
            raise ApiError(
                504, f"no answer from model {self.name} within the {timeout:g} s timeout"
            ) from None
        finally:
            job.future.cancel()

    # ------------------------------------------------------------------ the worker thread

    def _run(self) -> None:
        try:
            TORCH_THREAD.run(self._warm_up)
        except BaseException as exc:  # noqa: BLE001 - reported by /readyz and every request
            self.error = exc
            log.error("model %s failed to warm up: %s", self.name, exc)
        finally:
            self.ready.set()
        while True:
            job = self._next()
            if job is _STOP:
                break
            if self.error is not None:
                self._fail([job], ApiError(503, f"model {self.name} failed to start"))
            elif job.call is not None:
                self._run_call(job)
            else:
                self._run_batch(self._fill(job))

    def _next(self) -> Any:
        if self._held is not None:
            job, self._held = self._held, None
            return job
        return self._queue.get()

    def _fill(self, first: _Job) -> list[_Job]:
        batch = [first]
        deadline = time.perf_counter() + self.max_wait
        while len(batch) < self.max_batch:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                remaining = deadline - time.perf_counter()
                if self._incoming <= 0 or remaining <= 0:
                    break
                try:
                    job = self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
            if job is _STOP or job.call is not None:
                self._held = job
                break
            batch.append(job)
        return batch

    def _finish(self, jobs: list[_Job], values: list[Any]) -> None:
        self._deliver(jobs, values, failed=False)

    def _fail(self, jobs: list[_Job], exc: BaseException) -> None:
        self._deliver(jobs, [exc] * len(jobs), failed=True)

    def _deliver(self, jobs: list[_Job], values: list[Any], failed: bool) -> None:
        with self._lock:
            self._waiting -= sum(job.images for job in jobs)
        for job, value in zip(jobs, values, strict=True):
            job.loop.call_soon_threadsafe(_settle, job.future, value, failed)

    def _run_call(self, job: _Job) -> None:
        if job.future.done():
            return
        assert job.call is not None
        try:
            result = TORCH_THREAD.run(job.call)
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting request
            self._fail([job], exc)
        else:
            self._finish([job], [result])

    def _run_batch(self, batch: list[_Job]) -> None:
        live = [job for job in batch if not job.future.done()]
        gone = [job for job in batch if job.future.done()]
        if gone:
            self._finish(gone, [None] * len(gone))
        if live:
            TORCH_THREAD.run(self._compute, live)

    def _compute(self, live: list[_Job]) -> None:
        """Preprocess, forward and answer one batch (on the torch thread)."""
        import torch
        import torch.nn.functional as F

        from cnnzoo.data.folder import image_tensor

        start = time.perf_counter()
        inputs, ready = [], []
        for job in live:
            try:
                if job.tensor is not None:
                    inputs.append(torch.from_numpy(job.tensor))
                else:
                    inputs.append(self.loaded.preprocess(image_tensor(job.image)))
                ready.append(job)
            except Exception as exc:  # this image only: a 400 for its request
                self._fail([job], ApiError(400, f"cannot prepare the image: {exc}"))
        if not ready:
            return
        try:
            with torch.inference_mode():
                x = torch.stack(inputs).to(self.device)
                output = self.runner(x)
                while isinstance(output, (tuple, list)):
                    output = output[0]
                logits = output.float().cpu()
                probs = F.softmax(logits, dim=1)
                k = min(max(job.topk for job in ready), probs.shape[1])
                top_p, top_i = probs.topk(k, dim=1)
        except Exception as exc:  # noqa: BLE001 - the model failed: every request in it hears
            log.exception("model %s failed on a batch of %d", self.name, len(ready))
            self._fail(ready, exc)
            return
        done = time.perf_counter()
        inference_ms = (done - start) * 1e3
        top_p, top_i = top_p.tolist(), top_i.tolist()
        results = []
        for row, job in enumerate(ready):
            keep = min(job.topk, k)
            results.append(
                ImageResult(
                    top=list(zip(top_i[row][:keep], top_p[row][:keep], strict=True)),
                    logits=logits[row].tolist() if job.outputs else None,
                    probabilities=probs[row].tolist() if job.outputs else None,
                    queue_ms=(start - job.queued) * 1e3,
                    inference_ms=inference_ms,
                    batch_size=len(ready),
                )
            )
        self.batches += 1
        self.images_done += len(ready)
        if self.metrics is not None:
            self.metrics.batch(
                self.name, len(ready), done - start, [start - j.queued for j in ready]
            )
        self._finish(ready, results)

    @property
    def precision(self) -> str:
        """``int8`` or ``fp32``: what the batches are computed in."""
        from cnnzoo.quantize import QuantizeReport

        asked = self.int8 is not None or isinstance(self.optimize_report, QuantizeReport)
        return "int8" if asked or self.loaded.config.get("precision") == "int8" else "fp32"

    @property
    def runtime(self) -> str | None:
        """What runs the batches: ``pytorch``, ``onnxruntime`` or ``openvino`` (None while an
        int8 model is still being made: its check chooses)."""
        from cnnzoo.runtime import RUNTIMES

        report = self.optimize_report
        if report is not None and report.backend in RUNTIMES:
            return str(report.backend)
        if self.int8 is not None:
            return None
        return str(getattr(self.runner, "runtime", "pytorch"))  # an OnnxModel has one

    def _warm_up(self) -> None:
        """Threads, the runner (the model, its optimized copy, its int8 graph, or the graph's
        own session) and one pass at every batch size (the first at a new shape is the slow
        one)."""
        import torch

        from cnnzoo.train.hardware import default_threads

        start = time.perf_counter()
        threads = self.threads or default_threads()
        torch.set_num_threads(threads)
        loaded = self.loaded
        if loaded.is_graph or self.int8 is not None:
            self.device = "cpu"  # ONNX Runtime and OpenVINO run here on the CPU
        if loaded.is_graph:
            from cnnzoo.runtime import OnnxModel

            # load_model's session took the loading thread's thread count; this worker's
            # batches get its own threads.
            graph = loaded.model
            loaded.model = OnnxModel(
                loaded.files[0],
                graph.runtime,
                threads=threads,
                name=graph.name,
                exact_float=graph.exact_float,
            )
            self.runner = loaded.model
        model = loaded.model.to(self.device).eval()
        example = torch.zeros(
            self.max_batch, loaded.channels, *loaded.input_size, device=self.device
        )
        fast: Any = None
        if self.int8 is not None:
            fast = self._quantized(model, example)
        elif self.optimize_requested and not loaded.is_graph:
            from cnnzoo.optimize import optimize

            fast = optimize(model, example)
        if fast is not None:
            self.runner, self.optimize_report = fast, fast.report
        with torch.inference_mode():
            for size in range(1, self.max_batch + 1):
                self.runner(example[:size])
        self.warmup_s = time.perf_counter() - start

    def _quantized(self, model: Any, example: Any) -> Any:
        """The int8 graph of the float32 model (or float32 .onnx), calibrated and checked as
        ``cnnzoo quantize`` does: what ``optimize(model, example, precision="int8")`` returns,
        in the slot ``optimize``'s fast copy takes. Its runtime sessions are made here, on this
        thread, after its thread count is set."""
        from cnnzoo.quantize import quantize

        data, self.calibration = self.calibration, None
        assert self.int8 is not None and data is not None
        source = self.loaded.files[0] if self.loaded.is_graph else model
        calibration = data.images if data.labels is None else (data.images, data.labels)
        return quantize(
            source, calibration, example=example, validation=data.validation, **self.int8
        )
