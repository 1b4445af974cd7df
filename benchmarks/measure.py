"""What every benchmark script measures with: step timing (one model, or several interleaved), FLOPs per step, peak
memory, the device's matmul peak and the input shapes a model saw. Scripts import it as `measure` (they run with
benchmarks/ on sys.path, as `python benchmarks/<script>.py`)."""

from __future__ import annotations

import functools
import statistics
import time
import weakref
from collections.abc import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count
from torch.utils.weak import WeakIdKeyDictionary


def synchronize(device: torch.device) -> None:
    """Wait for queued device work (a timer around asynchronous CUDA / HPU work measures only the launches)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "hpu":
        torch.hpu.synchronize()


def time_steps(step: Callable[[], object], steps: int, device: torch.device, warmup: int = 1) -> list[float]:
    """Seconds of each of `steps` calls of `step`, after `warmup` untimed calls (allocations, lazy init, compiles)."""
    for _ in range(warmup):
        step()
    synchronize(device)
    durations = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        synchronize(device)
        durations.append(time.perf_counter() - start)
    return durations


def time_interleaved(
    steps: dict[str, Callable[[], object]], repeats: int, device: torch.device, warmup: int = 1
) -> dict[str, list[float]]:
    """Seconds per call of each named step, the steps taking turns call by call (order reversed every other round),
    so that a machine whose speed drifts (other jobs, clocks) slows each alike and their ratios hold."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    synchronize(device)
    durations: dict[str, list[float]] = {name: [] for name in steps}
    names = list(steps)
    for round_index in range(repeats):
        for name in names if round_index % 2 == 0 else reversed(names):
            start = time.perf_counter()
            steps[name]()
            synchronize(device)
            durations[name].append(time.perf_counter() - start)
    return durations


def median(values: list[float]) -> float:
    return statistics.median(values)


# --- FLOPs ---------------------------------------------------------------------------------------------------------
def _cpu_sdpa_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _cpu_sdpa_backward_flops(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


def _flop_formulas() -> dict:
    """torch's counter knows the CUDA SDPA kernels but not the CPU one; counted like them (a model on SDPA would
    otherwise look cheaper than one with the same attention written as matmuls)."""
    aten = torch.ops.aten
    formulas = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        formulas[aten._scaled_dot_product_flash_attention_for_cpu] = _cpu_sdpa_flops
        formulas[aten._scaled_dot_product_flash_attention_for_cpu_backward] = _cpu_sdpa_backward_flops
    return formulas


def count_flops(step: Callable[[], object]) -> int:
    """FLOPs of one call of `step` (matmuls, convolutions, attention: torch.utils.flop_counter's definition)."""
    with FlopCounterMode(display=False, custom_mapping=_flop_formulas()) as counter:
        step()
    return counter.get_total_flops()


# --- memory --------------------------------------------------------------------------------------------------------
class _LiveTensorBytes(TorchDispatchMode):
    """Bytes of tensor storage alive while it is active (each storage counted once, views included), and the peak:
    the CPU allocator keeps no statistics, so every storage an op returns is followed until it is freed."""

    def __init__(self, existing: list[torch.Tensor]):
        super().__init__()
        self.sizes = WeakIdKeyDictionary()
        self.current = self.peak = 0
        for tensor in existing:
            self._track(tensor)

    def _freed(self, size: int, _ref) -> None:
        self.current -= size

    def _track(self, tensor) -> None:
        if not isinstance(tensor, torch.Tensor) or tensor.device.type == "meta":
            return
        storage = tensor.untyped_storage()
        if storage in self.sizes:
            return
        size = storage.nbytes()
        self.sizes[storage] = weakref.ref(storage, functools.partial(self._freed, size))
        self.current += size
        self.peak = max(self.peak, self.current)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in torch.utils._pytree.tree_leaves(out):
            self._track(tensor)
        return out


def peak_memory(step: Callable[[], object], device: torch.device, existing: list[torch.Tensor]) -> tuple[int, str]:
    """(peak bytes during one call of `step`, how it was measured). `existing`: the tensors alive before the step
    (weights, gradients, optimizer state), counted on CPU where no allocator statistics exist."""
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device), "torch.cuda.max_memory_allocated"
    if device.type == "hpu":
        torch.hpu.reset_peak_memory_stats()
        step()
        synchronize(device)
        return torch.hpu.max_memory_allocated(), "torch.hpu.max_memory_allocated"
    with _LiveTensorBytes(existing) as tracker:
        step()
    return tracker.peak, "live tensor storage (dispatch-mode count)"


def module_tensors(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> list[torch.Tensor]:
    """Weights, buffers, gradients and optimizer state of a model: what is alive between steps."""
    tensors = [*model.parameters(), *model.buffers()]
    tensors += [p.grad for p in model.parameters() if p.grad is not None]
    if optimizer is not None:
        tensors += [v for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor)]
    return tensors


# --- the device's matmul peak --------------------------------------------------------------------------------------
def matmul_peak(device: torch.device, dtype: torch.dtype, size: int, repeats: int = 5) -> float:
    """FLOP/s of the fastest of `repeats` square matmuls of `size` (the practical peak MFU is measured against)."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    seconds = min(time_steps(lambda: a @ b, repeats, device, warmup=2))
    return 2 * size**3 / seconds


# --- static shapes -------------------------------------------------------------------------------------------------
class ShapeLog:
    """The distinct shapes of every tensor argument the watched models' forwards received, per run (`context`, set
    before each step) and argument name: one each when the inputs are static (HPU graphs and compiled graphs are
    then built once, not once per new shape)."""

    def __init__(self):
        self.shapes: dict[str, set[tuple[int, ...]]] = {}
        self.context = ""

    def watch(self, model: torch.nn.Module):
        def record(module, args, kwargs):
            named = {**{f"arg{i}": a for i, a in enumerate(args)}, **kwargs}
            for name, value in named.items():
                if isinstance(value, torch.Tensor):
                    self.shapes.setdefault(f"{self.context}.{name}", set()).add(tuple(value.shape))

        return model.register_forward_pre_hook(record, with_kwargs=True)

    def in_context(self, context: str, step: Callable[[], object]) -> Callable[[], object]:
        """`step`, recording the shapes it passes under `context`."""

        def run():
            self.context = context
            return step()

        return run

    def counts(self) -> dict[str, int]:
        return {name: len(shapes) for name, shapes in sorted(self.shapes.items())}
