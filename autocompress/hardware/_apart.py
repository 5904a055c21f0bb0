"""Measure models in a fresh Python process: ``python -m autocompress.hardware._apart --serve``.

A process that has built and freed many tensors (exported a model zoo with torch) runs ONNX
Runtime's small kernels slower than a fresh one. On this project's 2-core development VM
(2026-12-07, nothing else running), after a process had filled and half freed its heap,
pruned densenet169, efficientnet_b1 and convnext_tiny ran 24%, 23% and 14% slower than in
the same process before, and unpruned efficientnet_b4 as fast; with glibc's mmap threshold
fixed (``MALLOC_MMAP_THRESHOLD_``), 2%, 12% and 1% slower. The fidelity benchmark's 174
models, measured in the process that had built them and then in a fresh one, ran 3% faster
at the median in the fresh one (pruned efficientnet_b4 17%), and its two passes agreed within
10% for 98% of the families and 99% of the zoo, against 93% and 83%.

A profile is measured in a fresh process (``autocompress profile``) and a deployed model runs
in its own, so a measurement meant to compare with an estimate is taken apart: an
:class:`ApartBackend` measures in a worker process of its own, started at its first
measurement, and :func:`measure_apart` measures a batch of models in a worker started for it
and ended after it. The graphs go to the worker through a pipe one by one, so neither process
holds a second copy of them (a model zoo's graphs can take gigabytes).
"""

from __future__ import annotations

import atexit
import pickle
import struct
import subprocess
import sys
import threading
import weakref
from collections.abc import Sequence
from typing import Any, BinaryIO, cast

from autocompress.exceptions import AutocompressError
from autocompress.hardware.backends import (
    Backend,
    LatencyMeasurement,
    MeasureSettings,
    backend_for,
)

__all__ = ["ApartBackend", "apart", "measure_apart"]


def measure_apart(onnx_models: Sequence[bytes], backend: Backend,
                  settings: MeasureSettings | None = None, *, rounds: int = 1,
                  passes: int = 1) -> list[list[LatencyMeasurement]]:
    """``passes`` interleaved passes of :meth:`Backend.measure_many` over ``onnx_models``
    (``rounds`` rounds each), run in a fresh Python process on ``backend`` as configured
    (a worker of :class:`ApartBackend` started for them and ended after); one list of
    measurements per pass, in the models' order.

    Raises:
        AutocompressError: the worker process ended before it answered.
        Exception: what measuring raised in the worker, raised again here.
    """
    worker = ApartBackend(backend)
    try:
        return worker.measure_passes(onnx_models, settings, rounds=rounds, passes=passes)
    finally:
        worker.close()


class ApartBackend:
    """``backend`` with its measurements taken in a worker process of its own: a fresh
    interpreter started at the first measurement and kept for the next ones (its heap holds
    nothing but the graphs it measures), ended by :meth:`close` or when this process exits.
    Everything else (settings, rules, :meth:`~Backend.run` for accuracy) is ``backend``'s,
    here. Built by :func:`apart`."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._worker: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._registered = False

    def __getattr__(self, name: str) -> Any:
        if name in ("backend", "_worker", "_lock", "_registered"):  # a copy being made
            raise AttributeError(name)
        return getattr(self.backend, name)

    def measure(self, onnx_model: bytes, settings: MeasureSettings | None = None
                ) -> LatencyMeasurement:
        return self.measure_many([onnx_model], settings)[0]

    def measure_many(self, onnx_models: Sequence[bytes], settings: MeasureSettings | None = None,
                     rounds: int = 1) -> list[LatencyMeasurement]:
        return self.measure_passes(onnx_models, settings, rounds=rounds)[0]

    def measure_passes(self, onnx_models: Sequence[bytes],
                       settings: MeasureSettings | None = None, *, rounds: int = 1,
                       passes: int = 1) -> list[list[LatencyMeasurement]]:
        """``passes`` interleaved passes of :meth:`Backend.measure_many` over the models in
        the worker, which receives them once; one list of measurements per pass."""
        with self._lock:
            worker = self._start()
            assert worker.stdin is not None and worker.stdout is not None
            try:
                _send(worker.stdin, (len(onnx_models), settings, rounds, passes))
                for model in onnx_models:
                    _send_bytes(worker.stdin, model)
                worker.stdin.flush()
                ok, reply = _receive(worker.stdout)
            except (OSError, EOFError, struct.error) as exc:
                self._stop()
                raise AutocompressError(
                    f"the worker process measuring on {self.backend.name} ended (exit status "
                    f"{worker.poll()}): {type(exc).__name__}: {exc}") from exc
            except BaseException:  # interrupted mid-exchange: its reply would come to the next
                self._stop()
                raise
        if not ok:
            raise reply
        return cast(list[list[LatencyMeasurement]], reply)

    def close(self) -> None:
        """End the worker process (a later measurement starts another)."""
        with self._lock:
            self._stop()

    def __del__(self) -> None:
        if getattr(self, "_worker", None) is not None:
            self._stop()

    def _start(self) -> subprocess.Popen[bytes]:
        if self._worker is None or self._worker.poll() is not None:
            self._worker = subprocess.Popen(
                [sys.executable, "-m", "autocompress.hardware._apart", "--serve"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            assert self._worker.stdin is not None
            _send(self._worker.stdin, (self.backend.name, self.backend.settings()))
            if not self._registered:  # by a weak reference: a worker no one measures
                # with any more ends with its backend (__del__), not at exit
                atexit.register(_close_if_alive, weakref.ref(self))
                self._registered = True
        return self._worker

    def _stop(self) -> None:
        worker, self._worker = self._worker, None
        if worker is None:
            return
        for stream in (worker.stdin, worker.stdout):
            if stream is not None:
                stream.close()
        try:
            worker.wait(timeout=10)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


def _close_if_alive(ref: weakref.ref[ApartBackend]) -> None:
    backend = ref()
    if backend is not None:
        backend.close()


def apart(backend: Backend) -> Backend:
    """``backend`` measuring in a worker process of its own (:class:`ApartBackend`) where it
    runs ONNX Runtime on this machine's CPU, whose kernels a busy heap slows (see the module
    doc); ``backend`` itself otherwise (other backends, a device behind RPC, a GPU)."""
    if (getattr(backend, "name", None) != "onnxruntime" or not backend.runs_here
            or backend.settings().get("device", "cpu") != "cpu"):
        return backend
    return cast(Backend, ApartBackend(backend))


def _send(stream: BinaryIO, message: Any) -> None:
    _send_bytes(stream, pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))
    stream.flush()


def _send_bytes(stream: BinaryIO, data: bytes) -> None:
    stream.write(struct.pack("<Q", len(data)))
    stream.write(data)


def _receive_bytes(stream: BinaryIO) -> bytes:
    head = stream.read(8)
    if len(head) < 8:
        raise EOFError("no reply")
    (size,) = struct.unpack("<Q", head)
    data = stream.read(size)
    if len(data) < size:
        raise EOFError("a message cut short")
    return data


def _receive(stream: BinaryIO) -> Any:
    return pickle.loads(_receive_bytes(stream))


def _serve() -> None:
    """The worker of :class:`ApartBackend`: the backend's name and settings, then requests on
    stdin (a header of (model count, settings, rounds, passes) and the graphs one by one),
    each answered on stdout with (True, one list of measurements per pass) or (False, the
    exception), until stdin closes."""
    requests, replies = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing but replies on the pipe
    name, settings = _receive(requests)
    backend = backend_for(name, settings)
    while True:
        try:
            count, measure, rounds, passes = _receive(requests)
            models = [_receive_bytes(requests) for _ in range(count)]
        except EOFError:  # the asking process closed the pipe: it is done, or was
            return  # interrupted while it sent a request
        try:
            reply: tuple[bool, Any] = (True, [backend.measure_many(models, measure,
                                                                   rounds=rounds)
                                              for _ in range(passes)])
        except Exception as exc:  # noqa: BLE001 - raised again in the process that asked
            reply = (False, exc)
        del models
        try:
            _send(replies, reply)
        except (pickle.PicklingError, TypeError, AttributeError):  # an exception that
            # does not pickle
            _send(replies, (False, AutocompressError(f"{type(reply[1]).__name__}: "
                                                     f"{reply[1]}")))


if __name__ == "__main__":
    _serve()
