"""The trainer: transformers' Trainer (or optimum-habana's GaudiTrainer, see `device.gaudi`) with BridgeTower's
AdamW groups, a separate evaluation collator, the skipped-record report, atomic checkpoints and skipped non-finite
steps. Model, collator and optimizer code are the same on every device."""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import time
from functools import partial

import torch
from transformers import Trainer, TrainerCallback, TrainerState
from transformers.trainer import OPTIMIZER_NAME, SCHEDULER_NAME, TRAINER_STATE_NAME
from transformers.trainer_pt_utils import nested_truncate
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, TrainOutput, seed_worker
from transformers.utils.import_utils import is_torch_greater_or_equal

from ..data import SkipLog
from ..data.dataset import EpochSampler, ImageTextDataset, KeepStreamState, StreamingLoader
from ..device import is_gaudi_arguments
from ..modeling import checkpoint_conversion
from .arguments import RecipeArguments
from .kill_points import kill_point, wanted_kill
from .optimization import parameter_groups, torch_param_groups

logger = logging.getLogger("bridgetower_gaudi")
DELETING_PREFIX = ".deleting-"  # an old checkpoint being deleted by --save_total_limit (see _rotate_checkpoints)


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


class ResumeRandomState(TrainerCallback):
    """Restores the checkpoint's random state once more right before the first step of a resumed run. When Trainer
    skips batches (map-style data) it does this itself; when it does not (a stream resumes from its saved position,
    `ignore_data_skip`), it restores the state at the start of the epoch, and creating the data iterator then draws
    from it (the loader's base seed), which the uninterrupted run did at another time: the model's own draws (ITC
    hard negatives, dropout) would differ. The data draws do not depend on it (see data.dataset.draw_seed). Not when a
    stream resumes at an epoch's end: the uninterrupted run drew the next epoch's seed after the checkpoint too
    (StreamingLoader.resumed_at_epoch_end)."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_step_begin(self, args, state, control, **kwargs):
        checkpoint, self.trainer._resuming_from = self.trainer._resuming_from, None
        if checkpoint is not None and not getattr(self.trainer._train_stream, "resumed_at_epoch_end", False):
            self.trainer._load_rng_state(checkpoint)


class MidStepKillPoint(TrainerCallback):
    """`BRIDGETOWER_KILL_AT=mid_step[:N]` (see kill_points): the kill lands once step N's gradients are complete,
    before the optimizer uses them."""

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        kill_point("mid_step", state.global_step + 1)


def padded_to_whole_batches(dataset, batch_size: int):
    """(dataset, None) when its length is a multiple of `batch_size` (the global evaluation batch), else (the dataset
    followed by its first examples again up to a whole last batch, the number of real examples): static shapes keep
    every example instead of dropping the remainder. The padding rows are real examples, so in-batch pairings (ITM
    negatives, ITC) stay well formed; `EvalRows` takes them out of every figure."""
    count = len(dataset)
    extra = -count % batch_size
    if count == 0 or extra == 0:
        return dataset, None
    return torch.utils.data.Subset(dataset, list(range(count)) + [i % count for i in range(extra)]), count


class EvalRows:
    """Which rows of each evaluation batch are real examples, for a set padded by `padded_to_whole_batches`.
    Evaluation batches go to the ranks in turn (rank r takes rows [r * per_device, (r + 1) * per_device) of each
    global batch) and are gathered back in that order."""

    def __init__(self, examples: int, per_device: int, world_size: int, rank: int):
        self.examples, self.per_device, self.rank = examples, per_device, rank
        self.global_batch = per_device * world_size
        self.batch = -1  # the batch being evaluated

    def next_batch(self, inputs: dict, label_names: list[str]) -> dict:
        """The next batch of this rank with its padding rows' integer labels set to -100 (ignored by the losses)."""
        self.batch += 1
        start = self.batch * self.global_batch + self.rank * self.per_device
        real = min(max(self.examples - start, 0), self.per_device)
        if real == self.per_device:
            return inputs
        inputs = dict(inputs)
        for name in label_names:
            labels = inputs.get(name)
            if isinstance(labels, torch.Tensor) and not labels.is_floating_point():
                labels = labels.clone()
                labels[real:] = -100
                inputs[name] = labels
        return inputs

    def keep_real(self, gathered):
        """The gathered rows (losses, predictions, labels: tensors or nested tuples) of the current batch without its
        padding rows."""
        keep = min(max(self.examples - self.batch * self.global_batch, 0), self.global_batch)
        return gathered if keep == self.global_batch else nested_truncate(gathered, keep)


class BridgeTowerTrainerMixin:
    """Shared by BridgeTowerTrainer (transformers) and the Gaudi trainer (`gaudi_trainer_class`)."""

    def __init__(self, *args, recipe_args: RecipeArguments | None = None, skip_log=None, eval_skip_log=None,
                 eval_data_collator=None, **kwargs):  # fmt: skip
        self.recipe_args = recipe_args or RecipeArguments()
        self.eval_data_collator = eval_data_collator  # None: evaluate with the training collator
        self.skip_log, self.eval_skip_log = skip_log or SkipLog(), eval_skip_log or SkipLog()
        self._staging_dir = None  # set while a checkpoint is being written (see _save_checkpoint)
        self._nonfinite_loss = None  # on the device: a micro-step of this optimizer step had a non-finite loss
        self.nonfinite_steps: list[int] = []  # the optimizer steps skipped in this train() call (read so far)
        self._pending_nonfinite: list[tuple[int, torch.Tensor]] = []  # (step, bad on the device), not read yet
        self._skip_on_device = SkipOnDevice()
        self._train_stream: StreamingLoader | None = None  # the streaming training loader (its position is saved)
        self._resuming_from: str | None = None  # the checkpoint this train() resumes from
        super().__init__(*args, **kwargs)
        self.add_callback(NonFiniteStepGuard(self))
        self.add_callback(ResumeRandomState(self))
        if wanted_kill() is not None:  # a test of what a kill leaves behind (a malformed value is refused here)
            self.add_callback(MidStepKillPoint())

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        self.nonfinite_steps, self._nonfinite_loss, self._pending_nonfinite = [], None, []
        self._resuming_from = resume_from_checkpoint if isinstance(resume_from_checkpoint, str) else None
        self.remove_killed_leftovers()
        if isinstance(self.train_dataset, torch.utils.data.IterableDataset):
            # The stream continues from each reader's saved position (get_train_dataloader); Trainer's own resume
            # would replay the batches before the checkpoint through the readers.
            self.args.ignore_data_skip = True
        if self._resumes_a_finished_run(resume_from_checkpoint):
            result = self._load_finished_run(resume_from_checkpoint)
        else:
            result = super().train(resume_from_checkpoint, *args, **kwargs)
        self.read_nonfinite_steps()
        result.metrics["nonfinite_steps"] = len(self.nonfinite_steps)
        return result

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

    def optimizer_class(self):
        """(optimizer class, extra kwargs): AdamW, fused on CUDA, and on CPU from torch 2.4 (its CPU kernel; for
        BridgeTower-base's 327M parameters it steps in 0.16 s where foreach takes 1.20 s on 2 cores)."""
        device = self.args.device.type
        fused = device == "cuda" or (device == "cpu" and is_torch_greater_or_equal("2.4"))
        return torch.optim.AdamW, ({"fused": True} if fused else {})

    def create_optimizer(self):
        if self.optimizer is None:
            groups = parameter_groups(
                self.model,
                self.args.learning_rate,
                self.args.weight_decay,
                self.recipe_args.cross_modal_lr_multiplier,
                self.recipe_args.head_lr_multiplier,
            )
            groups = torch_param_groups(groups)
            optimizer_cls, extra = self.optimizer_class()
            self.optimizer = optimizer_cls(
                groups, betas=(self.args.adam_beta1, self.args.adam_beta2), eps=self.args.adam_epsilon, **extra
            )
        return self.optimizer

    def _get_train_sampler(self, *args, **kwargs):
        dataset = args[0] if args else kwargs.get("train_dataset", self.train_dataset)
        dataset = dataset if dataset is not None else self.train_dataset
        if isinstance(dataset, ImageTextDataset):  # each item knows its epoch: its draws are the same on resume
            seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
            return EpochSampler(len(dataset), seed, shuffle=self.recipe_args.shuffle_train_data)
        if not self.recipe_args.shuffle_train_data:
            return torch.utils.data.SequentialSampler(dataset)
        return super()._get_train_sampler(*args, **kwargs)

    def get_train_dataloader(self):
        # A streaming dataset splits itself across ranks and workers; accelerate's wrapper would split it again.
        if isinstance(self.train_dataset, torch.utils.data.IterableDataset):
            self._train_stream = StreamingLoader(
                self._streaming_loader(self.train_dataset, self._train_batch_size), self.train_dataset,
                self.args.device,
            )  # fmt: skip
            if self._resuming_from is not None:
                self._train_stream.resume(self._load_data_state(self._resuming_from))
            return self._train_stream
        return super().get_train_dataloader()

    def get_eval_dataloader(self, eval_dataset=None):
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if isinstance(dataset, str):  # Trainer.evaluate names one of several evaluation sets
            dataset = self.eval_dataset[dataset]
        collator = self.eval_data_collator or self.data_collator
        if isinstance(dataset, torch.utils.data.IterableDataset):
            loader = self._streaming_loader(dataset, self.args.eval_batch_size, collator)
            return StreamingLoader(loader, dataset, self.args.device, training=False)
        padding = None
        if self.args.dataloader_drop_last:  # static shapes: pad the last batch instead of dropping its examples
            dataset, padding = padded_to_whole_batches(dataset, self.args.eval_batch_size * self.args.world_size)
        training_collator, self.data_collator = self.data_collator, collator  # Trainer builds loaders from it
        try:
            loader = super().get_eval_dataloader(dataset)
        finally:
            self.data_collator = training_collator
        loader.eval_examples = padding  # read by evaluation_loop: how many of the rows are real examples
        return loader

    def get_test_dataloader(self, test_dataset):
        """Trainer.predict's loader, padded to whole batches like the evaluation one (every example predicted)."""
        padding = None
        if self.args.dataloader_drop_last and not isinstance(test_dataset, torch.utils.data.IterableDataset):
            batch = self.args.eval_batch_size * self.args.world_size
            test_dataset, padding = padded_to_whole_batches(test_dataset, batch)
        loader = super().get_test_dataloader(test_dataset)
        loader.eval_examples = padding
        return loader

    def evaluation_loop(self, dataloader, *args, **kwargs):
        """Over every example of a set padded to whole batches (`get_eval_dataloader`): each batch's padding rows get
        ignored labels (-100) before the forward, so the model's losses leave them out, and are cut from what is
        gathered (losses, predictions, labels), so every metric and the mean loss are over the real examples."""
        examples = getattr(dataloader, "eval_examples", None)
        if examples is None:
            return super().evaluation_loop(dataloader, *args, **kwargs)
        self._eval_rows = EvalRows(examples, self.args.eval_batch_size, self.args.world_size, self.args.process_index)
        gather = self.gather_function
        self.gather_function = lambda tensors: self._eval_rows.keep_real(gather(tensors))
        try:
            output = super().evaluation_loop(dataloader, *args, **kwargs)
        finally:
            self._eval_rows, self.gather_function = None, gather
        return output._replace(num_samples=examples)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        if getattr(self, "_eval_rows", None) is not None:
            inputs = self._eval_rows.next_batch(inputs, self.label_names)
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)

    def _streaming_loader(self, dataset, batch_size, collator=None):
        workers = self.args.dataloader_num_workers
        return torch.utils.data.DataLoader(
            dataset,
            batch_size=batch_size,
            collate_fn=KeepStreamState(collator or self.data_collator),
            num_workers=workers,
            drop_last=self.args.dataloader_drop_last,
            pin_memory=self.args.dataloader_pin_memory,
            # Never persistent: each pass sets the stream's epoch and resume position before its workers copy it.
            persistent_workers=False,
            prefetch_factor=self.args.dataloader_prefetch_factor if workers else None,
            # distinct random streams per rank and worker (masking, pairing, augmentation), as Trainer's loaders
            worker_init_fn=partial(seed_worker, num_workers=workers, rank=self.args.process_index) if workers else None,
        )

    def _save_checkpoint(self, model, trial):
        """Atomic checkpoints: Trainer writes checkpoint-N into a staging folder (`.tmp-checkpoint-N`, hidden: neither
        `get_last_checkpoint` nor `--save_total_limit`'s rotation sees it), renamed to checkpoint-N once every rank has
        written its files. A kill during a save leaves only the staging folder, which the next save of that step
        removes: a checkpoint-N folder is always complete."""
        run_dir = self._get_output_dir(trial=trial)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging, final = os.path.join(run_dir, f".tmp-{name}"), os.path.join(run_dir, name)
        staged = os.path.join(staging, name)
        # One process per node moves folders: each node's own files when the disk is not shared; on a shared disk the
        # first rename wins and the others find nothing left to move.
        mover = self.args.local_process_index == 0
        if mover:
            shutil.rmtree(staging, ignore_errors=True)  # left by a save that was killed
            shutil.rmtree(final, ignore_errors=True)  # this step's checkpoint of an earlier run: replaced whole
        self.accelerator.wait_for_everyone()
        self._staging_dir = staging
        try:
            super()._save_checkpoint(model, trial)  # writes staging/checkpoint-N (_get_output_dir below)
        finally:
            self._staging_dir = None
        self._save_data_state(staged)
        if self.state.best_model_checkpoint == staged:  # this step is the best: name it where it will be
            self.state.best_model_checkpoint = final
            if self.args.should_save:
                self.state.save_to_json(os.path.join(staged, TRAINER_STATE_NAME))
        kill_point("mid_save", self.state.global_step)
        self.accelerator.wait_for_everyone()  # every rank's files are in
        if mover:
            try:
                os.rename(staged, final)
            except FileNotFoundError:  # a shared disk: another node's process renamed it
                pass
            shutil.rmtree(staging, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        if self.args.should_save:  # Trainer's rotation ran inside the staging folder: --save_total_limit here
            self._rotate_checkpoints(use_mtime=False, output_dir=run_dir)

    def _rotate_checkpoints(self, use_mtime=False, output_dir=None) -> None:
        """`--save_total_limit`, atomically: each old checkpoint-K is first renamed out of the checkpoint-* namespace
        (to `.deleting-checkpoint-K`, which neither `get_last_checkpoint` nor a resume sees), then deleted; a kill
        during the deletion leaves no half-deleted checkpoint-K, and `remove_killed_leftovers` clears the rest. Which
        checkpoints go is Trainer's choice (oldest first, never the best one, the newest kept for resuming)."""
        limit = self.args.save_total_limit
        if limit is None or limit <= 0:
            return
        checkpoints = self._sorted_checkpoints(use_mtime=use_mtime, output_dir=output_dir)
        best = self.state.best_model_checkpoint
        if limit == 1 and best is not None and checkpoints and checkpoints[-1] != best:
            limit = 2  # as Trainer: keep the newest as well as the best, so that the run can resume
        for checkpoint in checkpoints[: max(0, len(checkpoints) - limit)]:
            logger.info("Deleting older checkpoint [%s] due to args.save_total_limit", checkpoint)
            doomed = os.path.join(os.path.dirname(checkpoint), DELETING_PREFIX + os.path.basename(checkpoint))
            shutil.rmtree(doomed, ignore_errors=True)  # an earlier rotation of the same name that was killed
            os.rename(checkpoint, doomed)
            kill_point("mid_rotation", self.state.global_step)
            shutil.rmtree(doomed)

    def remove_killed_leftovers(self) -> None:
        """Remove what a killed save or rotation left in the output folder (`.tmp-checkpoint-N` staging folders,
        `.deleting-checkpoint-K`, the final model's `.tmp-model`): hidden from resuming, but they take disk space."""
        output_dir = self.args.output_dir
        if self.args.should_save and os.path.isdir(output_dir):
            for name in os.listdir(output_dir):
                if name.startswith((f".tmp-{PREFIX_CHECKPOINT_DIR}-", DELETING_PREFIX, ".tmp-model")):
                    logger.info("removing %s, left by a save that was killed", os.path.join(output_dir, name))
                    shutil.rmtree(os.path.join(output_dir, name), ignore_errors=True)
        self.accelerator.wait_for_everyone()

    def _resumes_a_finished_run(self, checkpoint) -> bool:
        """Whether `checkpoint` already holds all --max_steps steps (a run killed during its final save, restarted
        with the same command): Trainer would train one step past the limit, as its loop checks it only after a step.
        Not under DeepSpeed, whose engine must be built to load a checkpoint."""
        if not isinstance(checkpoint, str) or self.args.max_steps <= 0 or self.is_deepspeed_enabled:
            return False
        state = TrainerState.load_from_json(os.path.join(checkpoint, TRAINER_STATE_NAME))
        return state.global_step >= self.args.max_steps

    def _load_finished_run(self, checkpoint: str) -> TrainOutput:
        """The model and trainer state of a finished run's last checkpoint, without a step."""
        logger.info("%s holds all --max_steps %d steps: loading it, nothing left to train", checkpoint,
                    self.args.max_steps)  # fmt: skip
        self._load_from_checkpoint(checkpoint)
        self.state = TrainerState.load_from_json(os.path.join(checkpoint, TRAINER_STATE_NAME))
        return TrainOutput(self.state.global_step, 0.0, {})

    def _data_state_path(self, checkpoint: str) -> str:
        return os.path.join(checkpoint, f"data_state.rank{self.args.process_index}.json")

    def _save_data_state(self, checkpoint: str) -> None:
        """Where this rank's streaming readers resume (map-style data needs nothing: the sampler's order is
        replayed by index, without reading)."""
        if self._train_stream is not None:
            with open(self._data_state_path(checkpoint), "w") as f:
                json.dump(self._train_stream.state(), f)

    def _load_data_state(self, checkpoint: str) -> dict:
        path = self._data_state_path(checkpoint)
        if not os.path.isfile(path):
            raise ValueError(
                f"{checkpoint} has no {os.path.basename(path)}: it was not saved by a streaming run on this many "
                "processes, so where the stream stood is unknown. Resume it with the data flags and number of "
                "processes it was trained with."
            )
        with open(path) as f:
            return json.load(f)

    def _get_output_dir(self, trial):
        # While a checkpoint is saved, Trainer's _save_checkpoint puts checkpoint-N under the staging folder.
        return self._staging_dir if self._staging_dir is not None else super()._get_output_dir(trial)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        """The final model, written atomically: into a hidden `.tmp-model` folder inside the target, then each file
        renamed into place (config.json last), so a kill during the save leaves every file either as it was or
        complete, never a truncated model.safetensors beside a config.json. (The target usually holds the run's
        checkpoints and logs too, so the folder itself cannot be renamed.) Checkpoints are staged whole by
        _save_checkpoint, which calls this for its own folder."""
        if _internal_call or self._staging_dir is not None:
            return super().save_model(output_dir, _internal_call)
        target = output_dir if output_dir is not None else self.args.output_dir
        staging = os.path.join(target, ".tmp-model")
        if self.args.should_save:
            shutil.rmtree(staging, ignore_errors=True)  # left by a save that was killed
        self.accelerator.wait_for_everyone()
        super().save_model(staging, _internal_call)  # every rank: DeepSpeed ZeRO-3 gathers the weights
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            for number, name in enumerate(sorted(os.listdir(staging), key=lambda name: name == "config.json")):
                os.replace(os.path.join(staging, name), os.path.join(target, name))
                if number == 0:
                    kill_point("mid_final_save", self.state.global_step)
            shutil.rmtree(staging)
        self.accelerator.wait_for_everyone()

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        # Checkpoints are written in transformers' BridgeTower layout; convert back before loading.
        state = checkpoint_conversion.load_transformers_layout_state_dict(resume_from_checkpoint)
        if state is None or self.is_deepspeed_enabled:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        model = model or self.model
        result = model.load_state_dict(state, strict=False)
        missing = set(result.missing_keys) - set(getattr(model, "_tied_weights_keys", None) or [])  # tied: not saved
        if missing or result.unexpected_keys:
            raise ValueError(
                f"checkpoint {resume_from_checkpoint} does not match the model: missing {sorted(missing)[:5]}, "
                f"unexpected {result.unexpected_keys[:5]}. Resume with the model flags the checkpoint was trained with."
            )
        model.tie_weights()

    def _load_optimizer_and_scheduler(self, checkpoint):
        # Several CPU processes (gloo): accelerate names each rank's device "cpu:<index>", which Trainer passes to
        # torch.load as map_location, and torch cannot restore to "cpu:0": load to plain "cpu".
        device = self.args.device
        states = ((self.optimizer, OPTIMIZER_NAME), (self.lr_scheduler, SCHEDULER_NAME))
        if (checkpoint is None or device.type != "cpu" or device.index is None or self.is_deepspeed_enabled
                or not all(os.path.isfile(os.path.join(checkpoint, name)) for _, name in states)):  # fmt: skip
            return super()._load_optimizer_and_scheduler(checkpoint)
        for state, name in states:
            state.load_state_dict(torch.load(os.path.join(checkpoint, name), map_location="cpu", weights_only=True))

    def _load_best_model(self):
        # transformers' version reads model.safetensors itself (non-strict): convert from the checkpoint layout instead.
        if self.is_deepspeed_enabled:
            return super()._load_best_model()
        self._load_from_checkpoint(self.state.best_model_checkpoint)

    def skipped_records(self, split: str = "train") -> dict:
        """Skip counts of one split summed over every rank's log (each rank's workers write their own file)."""
        log = self.skip_log if split == "train" else self.eval_skip_log
        self.accelerator.wait_for_everyone()
        return SkipLog.summary_of(log.rank_paths())


class WarmupExcludedThroughput(TrainerCallback):
    """`--throughput_warmup_steps` off Gaudi (GaudiTrainer does this itself): samples/s over the steps after the
    first N of this run, so compilation and allocator warm-up do not dilute the figure."""

    def __init__(self, warmup_steps: int):
        self.warmup_steps, self.first_step, self.start, self.samples_per_second = warmup_steps, 0, None, None

    def on_train_begin(self, args, state, control, **kwargs):
        self.first_step = state.global_step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.first_step + self.warmup_steps:
            self.start, self.start_step = time.perf_counter(), state.global_step

    def on_train_end(self, args, state, control, **kwargs):
        if self.start is not None and state.global_step > self.start_step:
            samples_per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
            steps = state.global_step - self.start_step
            self.samples_per_second = round(steps * samples_per_step / (time.perf_counter() - self.start), 3)


class BridgeTowerTrainer(BridgeTowerTrainerMixin, Trainer):
    """transformers' Trainer for CUDA and CPU."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.throughput = None
        if getattr(self.args, "throughput_warmup_steps", 0) > 0:
            self.throughput = WarmupExcludedThroughput(self.args.throughput_warmup_steps)
            self.add_callback(self.throughput)

    def train(self, *args, **kwargs):
        result = super().train(*args, **kwargs)
        if self.throughput is not None and self.throughput.samples_per_second is not None:
            result.metrics["train_samples_per_second"] = self.throughput.samples_per_second
        return result


@functools.cache
def gaudi_trainer_class():
    """BridgeTower's trainer on optimum-habana's GaudiTrainer (imports optimum.habana: `--use_habana` only)."""
    from ..device.gaudi import CorrectedGaudiTrainer

    class GaudiBridgeTowerTrainer(BridgeTowerTrainerMixin, CorrectedGaudiTrainer):
        """GaudiTrainer with BridgeTower's optimizer groups (Habana's fused AdamW when the GaudiConfig says so, also
        under DeepSpeed), evaluation collator and skipped-record report."""

        def optimizer_class(self):
            fused = self.hpu_optimizer()
            return fused if fused is not None else super().optimizer_class()

    return GaudiBridgeTowerTrainer


def trainer_class(args):
    """GaudiTrainer-based on HPU (or whenever `args` are GaudiTrainingArguments), transformers' Trainer elsewhere."""
    return gaudi_trainer_class() if is_gaudi_arguments(args) else BridgeTowerTrainer
