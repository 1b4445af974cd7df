"""Counting device-to-host reads (host syncs) and aten ops: on Gaudi's lazy mode every read flushes the graph and
stalls the card, and an HPU graph freezes the branch it saw at capture; on CUDA a read stalls the stream. The counter
works on any device, CPU included (the tests assert zero syncs on CPU; the same ops are syncs elsewhere).

    from bridgetower_gaudi.device.host_syncs import HostSyncCounter

    with HostSyncCounter(record_stacks=True) as counter:
        loss = model(**batch).loss
        loss.backward()
    assert counter.syncs == 0, counter.report()
"""

from __future__ import annotations

import traceback
from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_aten = torch.ops.aten
# The ops that read a tensor's value on the host. `.item()`, `bool(t)`, `int(t)`, `if t:` reach the dispatcher as
# `_local_scalar_dense`; `nonzero`, `masked_select`, boolean-mask indexing, `unique`, `repeat_interleave`
# without output_size must read values to know their output size.
SYNC_OPS = {
    _aten._local_scalar_dense.default: "_local_scalar_dense",
    _aten.nonzero.default: "nonzero",
    _aten.is_nonzero.default: "is_nonzero",
    _aten.item.default: "item",
    _aten.equal.default: "equal",
    # Ops whose output size depends on values: the host must read the count before allocating.
    _aten.masked_select.default: "masked_select",
    _aten._unique2.default: "unique",
    _aten.unique_consecutive.default: "unique",
    _aten.unique_dim.default: "unique",
}


def _sync_name(func, args, kwargs) -> str | None:
    name = SYNC_OPS.get(func)
    if name is not None:
        return name
    if func is _aten.index.Tensor:  # boolean-mask indexing, `x[mask]`: a nonzero inside the kernel
        indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
        if any(i is not None and i.dtype in (torch.bool, torch.uint8) for i in indices):
            return "boolean_index"
    if func is _aten.repeat_interleave.Tensor and (kwargs or {}).get("output_size") is None:
        return "repeat_interleave"
    return None


# Frames left out of recorded stacks: the dispatch mode's and torch's wrappers, not where a sync comes from.
_PLUMBING = ("torch/utils/_python_dispatch", "torch/_compile.py", "torch/_dynamo/", "torch/nn/modules/module.py")


class HostSyncCounter(TorchDispatchMode):
    """Counts, while active, the host syncs (`SYNC_OPS`) by op name and every aten op dispatched (`total_ops`).

    `record_stacks=True` keeps the Python stack of each sync (`report()` prints where they come from). Ops run inside
    other dispatch modes entered later, or in other processes (loader workers), are not seen."""

    def __init__(self, record_stacks: bool = False):
        super().__init__()
        self.record_stacks = record_stacks
        self.sync_counts: Counter[str] = Counter()
        self.total_ops = 0
        self.stacks: list[str] = []
        self._previous = None  # the op before a sync (in C++ code, e.g. backward, the stack ends at the call)

    @property
    def syncs(self) -> int:
        return sum(self.sync_counts.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.total_ops += 1
        name = _sync_name(func, args, kwargs or {})
        if name is not None:
            self.sync_counts[name] += 1
            if self.record_stacks:
                frames = [f for f in traceback.extract_stack()[:-1] if not any(p in f.filename for p in _PLUMBING)]
                where = "".join(traceback.format_list(frames[-6:]))
                self.stacks.append(f"{name} (after {self._previous}):\n{where}")
        self._previous = func
        return func(*args, **(kwargs or {}))

    def report(self) -> str:
        """The counts, and the stacks of the syncs when recorded: what a failing assertion shows."""
        lines = [f"{self.syncs} host syncs {dict(self.sync_counts)} in {self.total_ops} aten ops"]
        return "\n".join(lines + self.stacks)


def count_host_syncs(step, record_stacks: bool = False) -> HostSyncCounter:
    """The counter after one call of `step()`."""
    with HostSyncCounter(record_stacks=record_stacks) as counter:
        step()
    return counter
