"""Apache TVM backend: compile an ONNX model with TVM Relax and time it, on this machine or on
a remote device over TVM RPC.

The model is imported with ``tvm.relax.frontend.onnx.from_onnx`` for the static input shapes
of the ONNX file (dynamic dimensions become 1), with its weights as constants, so that weight
preprocessing is folded at compile time as ONNX Runtime does, and only the inputs cross the
RPC link. It is compiled with ``tvm.compile`` and run on ``relax.VirtualMachine``. Local
devices are timed with :func:`~autocompress.hardware.backends.time_callable`, the same loop as
ONNX Runtime's; a remote device with the VM's ``time_evaluator`` (one run per repeat), in
rounds until the median is stable as :class:`MeasureSettings` describes.

**Untuned code is not a deployment latency.** Without tuning TVM applies no schedules: on an
AVX2 CPU its code measured 7x (tiny CNN) to 40-90x (resnet) slower than ONNX Runtime, and it
runs on one thread whatever ``threads`` says. With ``tuning_trials > 0`` each of a model's
tasks (its fused operators: a convolution with its bias, residual add and activation) is tuned
with ``meta_schedule`` before the model is measured: ``tuning_trials`` schedules sampled at
random from the task's design space (``replay-trace``; a cost model cannot learn much from a
few dozen trials), each built and timed on ``threads`` threads, the fastest kept. Tuning
records are cached per target, TVM version, thread count and trial budget in a MetaSchedule
database under :func:`~autocompress._io.cache_dir` ``("tvm-tuning", ...)``: a task is tuned
once, whatever model it is met in (a profile's grid kernel, a candidate, the exported pick),
and a task that is already there costs nothing. Builds run in this process (MetaSchedule's
own builder starts new worker processes for every batch, about 40 s each on 2 cores), at
about 0.36 s per trial on a 2-core AMD EPYC: 16 trials take 6 s per task, after a first
build that spends about 25 s importing TVM's tensor intrinsics, once per process. Tuning
runs on this machine only (no RPC, no cross target).

Targets are TVM target dicts (or JSON), or an alias: ``llvm`` (this CPU), ``arm``/``aarch64``
(64-bit ARM with NEON; cross-compiled, measured over ``rpc``) or ``cuda`` (an NVIDIA GPU).
Over RPC the compiled model travels as a ``.tar`` of object files, which the device links
when it loads it: the device needs TVM's runtime (``python -m tvm.exec.rpc_server``) and a C
compiler.

Cost rules (:data:`TVM_RULES`): Relax's ``FuseOps`` (in ``tvm.compile``'s default pipeline)
fuses elementwise and broadcast operators into the convolution or matrix product they follow,
and chains of them into one another, as long as each intermediate tensor has one reader: a
residual Add and the ReLU after it cost nothing beside their convolution. TVM runs fp32 only
here, so the int8 rules do not apply; regressors are the neutral ones.

Threads: ``TVM_NUM_THREADS`` is set to the number of usable cores (unless set already) before
TVM's thread pool starts, since TVM otherwise caps itself at half the cores; every measurement
then configures the runtime for ``threads`` and checks that it took.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import importlib.util
import json
import logging
import os
import platform
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import onnx
from onnx import helper

from autocompress._io import cache_dir
from autocompress.exceptions import ExportError, MissingDependencyError, ProfileError
from autocompress.hardware._device import describe_device
from autocompress.hardware.backends._base import (
    Backend,
    LatencyMeasurement,
    MeasureSettings,
    run_in_batches,
    time_callable,
    time_rounds,
)
from autocompress.hardware.backends._registry import register_backend
from autocompress.hardware.rules import CostRules

__all__ = ["TARGET_ALIASES", "TUNING_STRATEGY", "TVM_RULES", "TvmBackend", "resolve_target"]

_logger = logging.getLogger(__name__)

_INSTALL = "pip install 'autocompress[tvm]'"
_ARM = '{"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]}'
#: Short target names and the TVM target (JSON) each stands for.
TARGET_ALIASES: Mapping[str, str] = MappingProxyType({
    "llvm": '{"kind": "llvm"}',
    "arm": _ARM,
    "aarch64": _ARM,
    "cuda": '{"kind": "cuda"}',
})
_DEVICE_OF_KIND = {"llvm": "cpu", "cuda": "cuda"}
_MACHINE_ALIASES = {"amd64": "x86_64", "arm64": "aarch64"}
# Mode argument of TVM's runtime.config_threadpool: pin workers to the fastest cores (default).
_BIG_CORES = 1
#: How tuning samples each task's schedules (see the module docstring).
TUNING_STRATEGY = "replay-trace"
# Operators Relax legalizes to elementwise or broadcast TIR, which FuseOps fuses.
_ELEMENTWISE = frozenset({"Relu", "Clip", "LeakyRelu", "HardSigmoid", "HardSwish", "Sigmoid",
                          "Tanh", "Add", "Sub", "Mul", "Div", "Neg", "Exp", "Max", "Min",
                          "Sqrt", "Erf", "BatchNormalization"})
#: What TVM (Relax, default pipeline) does to a graph that decides what its nodes cost.
TVM_RULES = CostRules(fused_ops=_ELEMENTWISE, fusing_ops=frozenset({"Conv", "Gemm", "MatMul"}),
                      fuse_chains=True)


def _require_tvm() -> None:
    if importlib.util.find_spec("tvm") is None:
        raise MissingDependencyError(f"the tvm backend needs Apache TVM: {_INSTALL}")


def _tvm() -> Any:
    """The ``tvm`` module with its ONNX frontend (about 5 s the first time)."""
    # TVM sizes a thread's pool when that thread first uses it, from this variable, or else
    # from half the cores; later configuration can only use fewer threads.
    os.environ.setdefault("TVM_NUM_THREADS", str(len(os.sched_getaffinity(0))))
    try:
        import tvm
        import tvm.relax.frontend.onnx  # noqa: F401  (registers relax.frontend.onnx)
    except ImportError as exc:
        raise MissingDependencyError(
            f"the tvm backend needs Apache TVM ({exc}): {_INSTALL}"
        ) from exc
    return tvm


def resolve_target(target: str | dict[str, Any] | None, threads: int = 1) -> dict[str, Any]:
    """The TVM target dict for an alias, a JSON string or a dict (``None``: this CPU).

    CPU (``llvm``) targets get ``num-cores = threads`` unless they say otherwise.
    """
    if target is None:
        resolved: Any = {"kind": "llvm"}
    elif isinstance(target, dict):
        resolved = copy.deepcopy(target)
    elif isinstance(target, str):
        text = TARGET_ALIASES.get(target.strip().lower(), target.strip())
        if not text.startswith("{"):
            raise ProfileError(
                f"unknown TVM target {target!r}; use one of {', '.join(TARGET_ALIASES)} or a "
                f'target JSON such as \'{{"kind": "llvm", "mcpu": "cortex-a72"}}\''
            )
        try:
            resolved = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ProfileError(f"TVM target {target!r} is not valid JSON: {exc}") from exc
    else:
        raise ProfileError(f"a TVM target is a name, JSON or dict, not {type(target).__name__}")
    if not isinstance(resolved, dict) or not isinstance(resolved.get("kind"), str):
        raise ProfileError(f"TVM target {target!r} needs a 'kind' such as \"llvm\" or \"cuda\"")
    try:
        resolved = json.loads(json.dumps(resolved))  # a plain, JSON-able copy
    except (TypeError, ValueError) as exc:
        raise ProfileError(f"TVM target {target!r} is not JSON-serializable: {exc}") from exc
    if resolved["kind"] == "llvm":
        resolved.setdefault("num-cores", threads)
    return resolved


def _parse_rpc(rpc: str | None) -> tuple[str, int] | None:
    if rpc is None:
        return None
    host, sep, port = rpc.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ProfileError(
            f"rpc must be HOST:PORT of a TVM RPC server (python -m tvm.exec.rpc_server), "
            f"not {rpc!r}"
        )
    return host.strip("[]"), int(port)


def _cpu_arch(target: dict[str, Any]) -> str:
    triple = str(target.get("mtriple", ""))
    machine = triple.split("-")[0] if triple else platform.machine().lower()
    return _MACHINE_ALIASES.get(machine, machine)


@dataclass(frozen=True)
class _Input:
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype


@dataclass
class _Program:
    """A compiled model loaded on its device (local or remote)."""

    vm: Any
    device: Any
    inputs: list[_Input]
    remote: bool


def _load_onnx(onnx_model: bytes) -> onnx.ModelProto:
    try:
        return onnx.load_from_string(onnx_model)
    except Exception as exc:
        raise ExportError(f"not a readable ONNX model: {exc}") from exc


def _reason(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[-1]}" if lines else type(exc).__name__


def _batch_is_dynamic(model: onnx.ModelProto) -> bool:
    initializers = {init.name for init in model.graph.initializer}
    first = next((v for v in model.graph.input if v.name not in initializers), None)
    if first is None:
        return False
    dims = first.type.tensor_type.shape.dim
    return bool(dims) and not (dims[0].HasField("dim_value") and dims[0].dim_value > 0)


def _graph_inputs(model: onnx.ModelProto, batch: int | None) -> list[_Input]:
    initializers = {init.name for init in model.graph.initializer}
    inputs = []
    for i, value in enumerate(v for v in model.graph.input if v.name not in initializers):
        tensor = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 0
                for d in tensor.shape.dim]
        if i == 0 and batch is not None and dims and dims[0] == 0:
            dims[0] = batch
        inputs.append(_Input(value.name, tuple(d or 1 for d in dims),
                             np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type))))
    return inputs


def _first_output(vm: Any, args: list[Any]) -> np.ndarray:
    """Run ``main`` and fetch its first output (the stateful calls work over RPC too, where
    a returned tuple cannot be indexed)."""
    vm.set_input("main", *args)
    vm.invoke_stateful("main")
    out = vm.get_outputs("main")
    while isinstance(out, tuple):  # a tuple of outputs, possibly nested
        out = out[0]
    return np.asarray(out.numpy())


def _target_for_device(target: str | dict[str, Any] | None, device: str | None
                       ) -> str | dict[str, Any] | None:
    """The target, given the ``device`` option (``cuda`` implies the cuda target)."""
    if device is None or device == "cpu":
        return target
    if device != "cuda":
        raise ProfileError(f"unknown device {device!r} for tvm; use cpu or cuda")
    if target is None:
        return "cuda"
    if resolve_target(target)["kind"] != "cuda":
        raise ProfileError(f"device 'cuda' does not fit TVM target {target!r}; drop one")
    return target


def _runner_threads(threads: int) -> None:
    """Initializer of MetaSchedule's runner worker: time candidates on ``threads`` threads,
    as the tuned model will run."""
    tvm = _tvm()
    tvm.get_global_func("runtime.config_threadpool")(_BIG_CORES, threads)


@functools.cache
def _in_process_builder() -> Any:
    """A MetaSchedule builder that builds candidates in this process, one by one.

    MetaSchedule's ``LocalBuilder`` starts a new pool of worker processes for every batch of
    candidates (against a memory leak of long-lived workers), and each worker spends about
    40 s importing TVM on a 2-core machine, once per task: more than the trials themselves.
    """
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
    from tvm.s_tir.meta_schedule.builder.local_builder import default_build, default_export

    @derived_object
    class InProcessBuilder(PyBuilder):
        def build(self, build_inputs: list[Any]) -> list[Any]:
            results = []
            for given in build_inputs:
                try:
                    built = default_build(given.mod, given.target, None)
                    results.append(BuilderResult(default_export(built), None))
                except Exception as exc:  # a schedule that does not build is a failed trial
                    results.append(BuilderResult(None, f"{type(exc).__name__}: {exc}"))
            return results

    return InProcessBuilder


@register_backend("tvm")
class TvmBackend(Backend):
    """Apache TVM (Relax) on one target: this CPU, a GPU, or a device behind TVM RPC.

    ``device`` (``cpu`` or ``cuda``) is a shorthand: ``cuda`` means the ``cuda`` target.
    """

    cost_rules = TVM_RULES
    summary = "compiles with Apache TVM for a target, here or on a device behind rpc"

    def __init__(
        self,
        target: str | dict[str, Any] | None = None,
        threads: int = 1,
        rpc: str | None = None,
        tuning_trials: int = 0,
        device: str | None = None,
    ) -> None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be at least 1, not {threads!r}")
        if tuning_trials < 0:
            raise ValueError("tuning_trials must be 0 (no tuning) or more")
        self.threads = threads
        self.target = resolve_target(_target_for_device(target, device), threads)
        if device == "cpu" and self.target["kind"] != "llvm":
            raise ProfileError(f"device 'cpu' does not fit TVM target {target!r}; drop one")
        self.rpc_address = _parse_rpc(rpc)
        self.tuning_trials = tuning_trials
        kind = self.target["kind"]
        if kind not in _DEVICE_OF_KIND:
            raise ProfileError(
                f"the tvm backend measures llvm (CPU) and cuda targets, not {kind!r}"
            )
        _require_tvm()
        if tuning_trials and not self.runs_here:
            raise ProfileError(
                "tuning runs on this machine only: drop rpc and cross targets, or set "
                "tuning_trials=0"
            )
        if kind == "cuda" and self.rpc_address is None and not _tvm().cuda().exist:
            raise ProfileError(
                "TVM finds no CUDA GPU on this machine: use target 'llvm', or measure a GPU "
                "device with rpc=HOST:PORT"
            )
        # compiled models by (sha256, batch): tuning takes minutes, compiling ~0.3 s
        self._executables: dict[tuple[str, int | None], tuple[Any, list[_Input]]] = {}
        self._session: Any = None
        self._database: Any = None
        self._runner: Any = None

    # ------------------------------------------------------------------------ description

    @property
    def runs_here(self) -> bool:
        """Whether the target is this machine (rather than a device behind RPC)."""
        if self.rpc_address is not None:
            return False
        if self.target["kind"] == "cuda":
            return True
        return _cpu_arch(self.target) == _cpu_arch({})

    def version(self) -> str:
        return str(_tvm().__version__)

    def describe_device(self) -> dict[str, Any]:
        """This machine's CPU (with a GPU target, its kind), or, over RPC, the target and
        the server's address: the profile then describes the remote device."""
        if self.rpc_address is None and self.runs_here:
            here = describe_device()
            return here if self.target["kind"] == "llvm" else {**here, "accelerator": "cuda"}
        target = self.target
        name = target.get("mcpu") or target.get("mtriple") or target["kind"]
        rpc = None if self.rpc_address is None else "{}:{}".format(*self.rpc_address)
        return {"cpu": f"TVM target {name}", "target": copy.deepcopy(target), "rpc": rpc}

    @property
    def precisions(self) -> tuple[str, ...]:
        """fp32 only. TVM's Relax ONNX frontend imports a QDQ graph as quantize/dequantize
        operators around fp32 convolutions (it has no QLinearConv and this backend runs no
        quantization pass), so an int8 graph would be measured as fake quantization slower
        than fp32, not as int8 kernels; fp16 on CUDA targets is not verified here."""
        return ("fp32",)

    def settings(self) -> dict[str, Any]:
        rpc = None if self.rpc_address is None else "{}:{}".format(*self.rpc_address)
        return {
            "target": copy.deepcopy(self.target),
            "threads": self.threads,
            "device": _DEVICE_OF_KIND[self.target["kind"]],
            "rpc": rpc,
            "tuned": self.tuning_trials > 0,
            "tuning_trials": self.tuning_trials,
            "tuning_strategy": TUNING_STRATEGY if self.tuning_trials else None,
            "frontend": "relax.frontend.onnx, weights as constants",
        }

    # ------------------------------------------------------------------------ compiling

    def _import(self, model: onnx.ModelProto, inputs: list[_Input]) -> Any:
        tvm = _tvm()
        try:
            return tvm.relax.frontend.onnx.from_onnx(
                model, shape_dict={i.name: list(i.shape) for i in inputs},
                keep_params_in_input=False)
        except Exception as exc:
            raise ExportError(
                f"TVM cannot import the ONNX model ({_reason(exc)}); measure it with the "
                "onnxruntime backend instead"
            ) from exc

    def compile(self, onnx_model: bytes, batch: int | None = None) -> tuple[Any, list[_Input]]:
        """The TVM executable of ``onnx_model`` for this target (tuned if so configured) and
        its inputs, cached per model; ``batch`` fixes a dynamic first dimension."""
        key = (hashlib.sha256(onnx_model).hexdigest(), batch)
        if key in self._executables:
            return self._executables[key]
        tvm = _tvm()
        model = _load_onnx(onnx_model)
        inputs = _graph_inputs(model, batch)
        mod = self._import(model, inputs)
        target = tvm.target.Target(self.target)
        start = time.perf_counter()
        try:
            if self.tuning_trials:
                mod = self._tune(mod, target)
            executable = tvm.compile(mod, target)
        except Exception as exc:
            raise ExportError(
                f"TVM cannot compile the model for {json.dumps(self.target)} ({_reason(exc)})"
            ) from exc
        _logger.debug("TVM compiled a model in %.2f s", time.perf_counter() - start)
        self._executables[key] = (executable, inputs)
        return executable, inputs

    @functools.cached_property
    def tuning_dir(self) -> Path:
        """Where this configuration's tuning records are cached (see the module docstring);
        the options are fixed at construction, so it is worked out once."""
        key = json.dumps({"target": self.target, "tvm": self.version(), "threads": self.threads,
                          "trials": self.tuning_trials, "strategy": TUNING_STRATEGY},
                         sort_keys=True)
        kind = self.target["kind"]
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        return cache_dir("tvm-tuning", f"{kind}-t{self.threads}-n{self.tuning_trials}-{digest}")

    def _tuning_database(self) -> Any:
        from tvm.s_tir import meta_schedule as ms

        if self._database is None:
            directory = self.tuning_dir
            self._database = ms.database.JSONDatabase(
                path_workload=str(directory / "database_workload.json"),
                path_tuning_record=str(directory / "database_tuning_record.json"))
        return self._database

    def _tuning_runner(self) -> Any:
        from tvm.s_tir import meta_schedule as ms

        if self._runner is None:  # one runner worker for the backend's life
            self._runner = ms.runner.LocalRunner(
                initializer=functools.partial(_runner_threads, self.threads))
        return self._runner

    def _tune(self, mod: Any, target: Any) -> Any:
        """``mod`` with every task's best schedule of the tuning database applied, after
        tuning the tasks the database does not hold yet."""
        tvm = _tvm()
        from tvm import relax
        from tvm.s_tir import meta_schedule as ms

        with target:
            mod = tvm.transform.Sequential([
                relax.transform.DecomposeOpsForInference(),
                relax.transform.CanonicalizeBindings(),
                relax.pipeline.zero_pipeline(),
            ])(mod)
        database = self._tuning_database()
        tasks = ms.relax_integration.extract_tasks(mod, target)
        todo = [task for task in tasks if database.query_tuning_record(
            task.dispatched[0], target, task.task_name) is None]
        _logger.debug("TVM: %d tasks, %d to tune with %d trials each (%s)", len(tasks),
                      len(todo), self.tuning_trials, self.tuning_dir)
        if todo:
            contexts = [ms.TuneContext(mod=task.dispatched[0], target=target,
                                       space_generator="post-order-apply",
                                       search_strategy=TUNING_STRATEGY,
                                       task_name=task.task_name, rand_state=0)
                        for task in todo]
            with tempfile.TemporaryDirectory(prefix="autocompress-tvm-tune-") as work_dir:
                ms.tune_tasks(
                    tasks=contexts, task_weights=[1.0] * len(contexts), work_dir=work_dir,
                    max_trials_global=self.tuning_trials * len(contexts),
                    max_trials_per_task=self.tuning_trials,
                    num_trials_per_iter=min(64, self.tuning_trials),
                    builder=_in_process_builder()(),
                    runner=self._tuning_runner(),
                    database=database,
                    cost_model="random",  # replay-trace ranks nothing; xgb would need xgboost
                    task_scheduler="round-robin",
                )
            untuned = [task.task_name for task in todo if database.query_tuning_record(
                task.dispatched[0], target, task.task_name) is None]
            if untuned:
                _logger.warning("TVM: no schedule of %s built and ran; they stay untuned",
                                ", ".join(untuned))
        with target, database:
            return relax.transform.MetaScheduleApplyDatabase()(mod)

    def export_library(self, onnx_model: bytes, path: str | Path) -> Path:
        """Compile ``onnx_model`` for the target and write it to ``path`` (a ``.tar`` of
        object files needs no linker here, so this works for cross targets)."""
        executable, _ = self.compile(onnx_model)
        path = Path(path)
        try:
            executable.export_library(str(path))
        except Exception as exc:
            raise ExportError(
                f"cannot write the TVM library {path}: {exc}; a .tar needs no linker, a .so "
                "for another architecture needs a cross compiler"
            ) from exc
        return path

    # ------------------------------------------------------------------------ loading

    def _remote(self) -> Any:
        if self._session is None:
            from tvm import rpc

            host, port = self.rpc_address  # type: ignore[misc]
            try:
                self._session = rpc.connect(host, port)
            except Exception as exc:
                raise ProfileError(
                    f"cannot connect to the TVM RPC server at {host}:{port} ({exc}); start one "
                    f"on the device with: python -m tvm.exec.rpc_server --host 0.0.0.0 "
                    f"--port {port}"
                ) from exc
        return self._session

    def close(self) -> None:
        """Drop the RPC session (a later measurement reconnects)."""
        self._session = None

    def _configure_threads(self, session: Any | None) -> None:
        tvm = _tvm()
        get = session.get_function if session is not None else tvm.get_global_func
        get("runtime.config_threadpool")(_BIG_CORES, self.threads)
        effective = int(get("runtime.NumThreads")())
        if effective != self.threads:
            where = "the RPC server" if session is not None else "this process"
            raise ProfileError(
                f"TVM's runtime in {where} can run only {effective} thread(s), not "
                f"{self.threads}: set TVM_NUM_THREADS={self.threads} before it starts, or "
                f"use threads={effective}"
            )

    def load(self, onnx_model: bytes, batch: int | None = None) -> _Program:
        """Compile ``onnx_model`` and load it on the target device (local or remote)."""
        tvm = _tvm()
        from tvm import relax

        executable, inputs = self.compile(onnx_model, batch)
        device_name = _DEVICE_OF_KIND[self.target["kind"]]
        if self.rpc_address is None:
            if not self.runs_here:
                raise ProfileError(
                    f"target {json.dumps(self.target)} is not this machine "
                    f"({platform.machine()}): give rpc=HOST:PORT of a TVM RPC server on the "
                    "device, or only export_library() the model"
                )
            device = tvm.device(device_name, 0)
            if not device.exist:
                raise ProfileError(f"TVM finds no {device_name} device on this machine")
            self._configure_threads(None)
            return _Program(relax.VirtualMachine(executable, device), device, inputs, False)
        session = self._remote()
        digest = hashlib.sha256(onnx_model).hexdigest()[:16]
        name = f"autocompress_{digest}_{batch or 0}.tar"
        try:
            with tempfile.TemporaryDirectory(prefix="autocompress-tvm-") as tmp:
                executable.export_library(os.path.join(tmp, name))
                session.upload(os.path.join(tmp, name))
            library = session.load_module(name)
            device = session.device(device_name, 0)
            self._configure_threads(session)
            vm = relax.VirtualMachine(library, device)
        except ProfileError:
            raise
        except Exception as exc:
            self.close()
            raise ProfileError(
                f"cannot load the model on the TVM RPC server at {self.settings()['rpc']} "
                f"({_reason(exc)}); the device needs a C compiler to link the uploaded .tar"
            ) from exc
        return _Program(vm, device, inputs, True)

    # ------------------------------------------------------------------------ running

    def measure(
        self, onnx_model: bytes, settings: MeasureSettings | None = None
    ) -> LatencyMeasurement:
        tvm = _tvm()
        settings = settings or MeasureSettings()
        program = self.load(onnx_model)
        rng = np.random.default_rng(0)
        args = [tvm.runtime.tensor(rng.standard_normal(i.shape).astype(i.dtype), program.device)
                for i in program.inputs]
        if program.remote:
            return _time_remote(program, args, settings)
        main = program.vm["main"]
        if program.device.dlpack_device_type() == tvm.cpu().dlpack_device_type():
            return time_callable(lambda: main(*args), settings, threads=self.threads)
        sync = program.device.sync

        def run_and_wait() -> None:
            main(*args)
            sync()

        return time_callable(run_and_wait, settings)

    def run(self, onnx_model: bytes, inputs: np.ndarray, batch_size: int = 256) -> np.ndarray:
        tvm = _tvm()
        if _batch_is_dynamic(_load_onnx(onnx_model)):
            step = max(1, min(batch_size, len(inputs)))
            program = self.load(onnx_model, batch=step)
        else:
            program = self.load(onnx_model)
            step = program.inputs[0].shape[0]
        first = program.inputs[0]
        rest = [tvm.runtime.tensor(np.zeros(i.shape, i.dtype), program.device)
                for i in program.inputs[1:]]

        def run_batch(chunk: np.ndarray) -> np.ndarray:
            return _first_output(program.vm, [tvm.runtime.tensor(chunk, program.device), *rest])

        # static shapes: the last batch is padded, then its padding dropped
        return run_in_batches(run_batch, np.asarray(inputs, dtype=first.dtype), step)


def _time_remote(program: _Program, args: list[Any], settings: MeasureSettings
                 ) -> LatencyMeasurement:
    """:func:`time_callable`'s loop with the VM's ``time_evaluator``, which times on the
    device itself (one run per repeat), so the network is not in the numbers."""
    vm = program.vm
    vm.set_input("main", *args)
    warm = vm.time_evaluator("invoke_stateful", program.device, number=settings.warmup_runs,
                             repeat=1, min_repeat_ms=int(settings.warmup_s * 1000))
    warm("main")
    timer = vm.time_evaluator("invoke_stateful", program.device, number=1,
                              repeat=settings.round_runs)
    return time_rounds(lambda: [float(t) * 1e3 for t in timer("main").results], settings)
