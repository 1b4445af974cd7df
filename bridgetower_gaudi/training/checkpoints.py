"""Atomic checkpoints: each checkpoint-N is written into a hidden staging folder and renamed once complete, old ones
are rotated out atomically, and the final model's files are replaced one by one; a kill at any point leaves only
complete checkpoints (kill points: training/kill_points.py). Also loading them back in our checkpoint layout."""

from __future__ import annotations

import logging
import os
import shutil

import torch
from transformers import TrainerCallback, TrainerState
from transformers.trainer import OPTIMIZER_NAME, SCHEDULER_NAME, TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, TrainOutput

from ..modeling import checkpoint_conversion
from .kill_points import kill_point

logger = logging.getLogger("bridgetower_gaudi")
DELETING_PREFIX = ".deleting-"  # an old checkpoint being deleted by --save_total_limit (see _rotate_checkpoints)


class MidStepKillPoint(TrainerCallback):
    """`BRIDGETOWER_KILL_AT=mid_step[:N]` (see kill_points): the kill lands once step N's gradients are complete,
    before the optimizer uses them."""

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        kill_point("mid_step", state.global_step + 1)


class AtomicCheckpoints:
    """Trainer mixin: saving (checkpoints, rotation, the final model) that a kill cannot leave half done, and loading
    (model in our layout, optimizer, best model, a run that already finished). Each checkpoint also gets the streamed
    data's position (`StreamedDataResume._save_data_state`)."""

    def __init__(self, *args, **kwargs):
        self._staging_dir = None  # set while a checkpoint is being written (see _save_checkpoint)
        super().__init__(*args, **kwargs)

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
