"""Non-finite optimizer steps, decided on the device: a step whose loss or gradients are NaN / inf (on any rank)
leaves every weight and optimizer state as it was, is counted without a host sync, and is read at logging steps;
more than `--max_nonfinite_steps` stop the run (`NonFiniteStepsError`)."""

from __future__ import annotations

import logging

import torch
from transformers import TrainerCallback

logger = logging.getLogger("bridgetower_gaudi")


class NonFiniteStepsError(RuntimeError):
    """More optimizer steps had a non-finite loss or gradient than `--max_nonfinite_steps` allows."""


def gradients_are_finite(parameters) -> torch.Tensor:
    """One boolean on the device, without a host sync: every gradient is finite (a NaN or inf anywhere makes the sum
    of the per-tensor norms non-finite; `_foreach_norm` is the fused kernel clip_grad_norm_ uses)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.tensor(True)
    norms = torch._foreach_norm(grads)
    if len({norm.dtype for norm in norms}) > 1:  # weights of several dtypes: stack needs one
        norms = [norm.float() for norm in norms]
    return torch.isfinite(torch.stack(norms).sum())


class SkipOnDevice:
    """Makes the next `optimizer.step()` leave every weight and optimizer state as they were where `bad` (a boolean
    on the device) is true, without reading it on the host. torch's fused Adam / AdamW take it as `found_inf`, as
    GradScaler passes it (the kernel skips the update and the step count is undone). Any other optimizer (foreach
    AdamW, Habana's FusedAdamW) steps, then each weight and state tensor is selected back on the device from a copy
    taken before the step: a second copy of the weights and moments for the length of the step."""

    def __init__(self):
        self._hooked, self._bad, self._saved, self._fresh = None, None, [], []

    def arm(self, optimizer, bad: torch.Tensor) -> None:
        optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps it
        if self._hooked is not optimizer:
            optimizer.register_step_pre_hook(self._before_step)
            optimizer.register_step_post_hook(self._after_step)
            self._hooked = optimizer
        self._bad = bad

    @staticmethod
    def takes_found_inf(optimizer) -> bool:
        return isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW) and all(
            group.get("fused") for group in optimizer.param_groups
        )

    def _before_step(self, optimizer, args, kwargs):
        if self._bad is None:
            return
        if self.takes_found_inf(optimizer):
            optimizer.found_inf = self._bad.float()
            return
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        self._fresh = [p for p in params if not optimizer.state.get(p)]  # state created by this step
        tensors = params + [
            v for p in params for v in optimizer.state.get(p, {}).values() if isinstance(v, torch.Tensor)
        ]
        self._saved = [(t, t.detach().clone()) for t in tensors]

    @torch.no_grad()
    def _after_step(self, optimizer, args, kwargs):
        bad, self._bad = self._bad, None
        if bad is None:
            return
        if hasattr(optimizer, "found_inf"):
            del optimizer.found_inf
            return
        for tensor, before in self._saved:
            tensor.copy_(torch.where(bad, before, tensor))
        for p in self._fresh:  # a skipped first step: the state as AdamW creates it (zeros) before stepping
            for value in optimizer.state[p].values():
                if isinstance(value, torch.Tensor):
                    value.copy_(torch.where(bad, torch.zeros_like(value), value))
        self._saved, self._fresh = [], []


class NonFiniteStepGuard(TrainerCallback):
    """Runs the trainer's non-finite check after the gradients of an optimizer step are complete (accumulated, and
    reduced across ranks) and before the optimizer uses them."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.trainer.skip_nonfinite_step()


class NonFiniteSteps:
    """Trainer mixin: watches each optimizer step's loss and gradients (`skip_nonfinite_step`, run by
    `NonFiniteStepGuard`) and skips the non-finite ones. Needs `recipe_args.max_nonfinite_steps`."""

    def __init__(self, *args, **kwargs):
        self._nonfinite_loss = None  # on the device: a micro-step of this optimizer step had a non-finite loss
        self.nonfinite_steps: list[int] = []  # the optimizer steps skipped in this train() call (read so far)
        self._pending_nonfinite: list[tuple[int, torch.Tensor]] = []  # (step, bad on the device), not read yet
        self._skip_on_device = SkipOnDevice()
        super().__init__(*args, **kwargs)

    def start_nonfinite_count(self) -> None:
        """At the start of train(): no step skipped yet."""
        self.nonfinite_steps, self._nonfinite_loss, self._pending_nonfinite = [], None, []

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if not (self.is_deepspeed_enabled and torch.is_grad_enabled()):
            return result
        # DeepSpeed applies the update inside backward, before any callback could skip it; its ZeRO optimizers skip
        # a step whose gradients are non-finite (their overflow check). A non-finite loss whose gradients happen to
        # be finite (e.g. a NaN constant added to it) would slip through: multiplied by NaN its gradients are NaN
        # too, so DeepSpeed skips that step as well. Multiplying by 1.0 otherwise changes nothing; no host sync.
        loss = result[0] if return_outputs else result
        poison = torch.where(torch.isfinite(loss.detach()), 1.0, float("nan")).to(loss.dtype)
        return (loss * poison, result[1]) if return_outputs else loss * poison

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        # Kept on the device (skip_nonfinite_step decides there), never read per micro-step.
        nonfinite = ~torch.isfinite(loss.detach())
        self._nonfinite_loss = nonfinite if self._nonfinite_loss is None else self._nonfinite_loss | nonfinite
        # What Trainer adds to the logged loss: a non-finite micro-step adds 0, selected on the device (transformers'
        # logging_nan_inf_filter, off here, substitutes the running mean but reads the loss on the host every time).
        return torch.where(nonfinite, torch.zeros_like(loss), loss)

    def skip_nonfinite_step(self) -> None:
        """Before the optimizer step: if any micro-step's loss or any gradient is non-finite (on any rank), the
        update is skipped: no weight and no AdamW moment or step count changes. Decided on the device, without a host
        sync (see `SkipOnDevice`); the step is counted on the device too, and the count is read at logging steps
        (`read_nonfinite_steps`): logged as `nonfinite_steps`, in the train metrics, and more than
        `--max_nonfinite_steps` stop the run at the first logging step (or the end of training) that sees them.

        Under --fp16 the loss scaler skips steps whose gradients overflow (that is how it calibrates), so only
        non-finite losses count there. Under DeepSpeed the engine has already stepped (inside backward): its ZeRO
        optimizer skipped the update when the gradients were non-finite (compute_loss makes a non-finite loss's
        gradients NaN), which `was_step_applied()` reports on the host; see deepspeed_step_was_bad."""
        bad = self._nonfinite_loss
        self._nonfinite_loss = None
        if bad is None:
            bad = torch.zeros((), dtype=torch.bool, device=self.args.device)
        skip_here = not (self.args.fp16 or self.is_deepspeed_enabled)
        if skip_here:
            bad = bad | gradients_are_finite(self.model.parameters()).to(bad.device).logical_not()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            bad = bad.float()
            torch.distributed.all_reduce(bad)  # every rank skips (or stops) alike; a device collective, not a read
            bad = bad > 0
        step = self.state.global_step + 1
        if self.is_deepspeed_enabled:  # DeepSpeed reports on the host whether it applied its step
            if self.deepspeed_step_was_bad(bool(bad.item())):
                self._record_nonfinite_steps([step])
            return
        if skip_here:
            self._skip_on_device.arm(self.optimizer, bad)
        self._pending_nonfinite.append((step, bad))

    def read_nonfinite_steps(self) -> None:
        """One host read of the steps decided since the last read (logging steps, the end of training)."""
        if not self._pending_nonfinite:
            return
        steps, flags = zip(*self._pending_nonfinite, strict=True)
        self._pending_nonfinite = []
        bad = torch.stack([flag.reshape(()) for flag in flags]).tolist()
        self._record_nonfinite_steps([step for step, is_bad in zip(steps, bad, strict=True) if is_bad])

    def _record_nonfinite_steps(self, steps: list[int]) -> None:
        for step in steps:
            self.nonfinite_steps.append(step)
            logger.warning(
                "step %d: non-finite loss or gradient, update %s (%d such steps so far)",
                step, "not skipped (fp16 loss scaler)" if self.args.fp16 and not self.is_deepspeed_enabled
                else "skipped", len(self.nonfinite_steps),
            )  # fmt: skip
        limit = self.recipe_args.max_nonfinite_steps
        if steps and limit is not None and len(self.nonfinite_steps) > limit:
            listed = ", ".join(map(str, self.nonfinite_steps[:10])) + (" ..." if len(self.nonfinite_steps) > 10 else "")
            raise NonFiniteStepsError(
                f"training stopped at step {self.state.global_step}: {len(self.nonfinite_steps)} optimizer steps had "
                f"a non-finite loss or gradient (steps {listed}), more than --max_nonfinite_steps {limit} (checked at "
                "logging steps). Lower --learning_rate, clip gradients (--max_grad_norm 1.0), train in bf16 rather "
                "than fp16, or look at the data of those steps; then resume from the last checkpoint "
                "(--resume_from_checkpoint)."
            )

    def deepspeed_step_was_bad(self, nonfinite_loss: bool) -> bool:
        """Whether DeepSpeed's step (already taken) was a non-finite one. A step it did not apply had non-finite
        gradients (bf16 / fp32; under fp16 its loss scaler also skips overflows while calibrating, which are not
        counted). A non-finite step it applied anyway cannot be undone: the weights may now hold NaN, so the run
        stops at once, naming the configurations whose optimizer checks gradients (DeepSpeed 0.19's ZeRO stages 1-3
        in bf16 or fp32, and fp16 always; ZeRO stage 0 in fp32 does not)."""
        applied = self.model_wrapped.was_step_applied()
        if self.args.fp16:
            bad = nonfinite_loss
        else:
            bad = nonfinite_loss or not applied
        if bad and applied:
            import deepspeed

            raise NonFiniteStepsError(
                f"step {self.state.global_step + 1}: the loss or gradients were non-finite and DeepSpeed "
                f"{deepspeed.__version__} applied the update anyway (its optimizer does not check gradients in this "
                "configuration or version, e.g. ZeRO stage 0 in fp32), so the weights may now be NaN. Use a ZeRO "
                'stage (1, 2 or 3) in the DeepSpeed JSON (with bf16 keep "check_grad_overflow": true, the default) '
                "or DeepSpeed 0.19, and resume from the last checkpoint."
            )
        return bad

    def log(self, logs: dict, *args, **kwargs) -> None:
        self.read_nonfinite_steps()  # logging steps may read the host
        if "loss" in logs and self.nonfinite_steps:  # the training logs: how many steps were skipped so far
            logs["nonfinite_steps"] = len(self.nonfinite_steps)
        super().log(logs, *args, **kwargs)
