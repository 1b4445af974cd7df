"""The trainer: transformers' Trainer (or optimum-habana's GaudiTrainer, see `device.gaudi`) with BridgeTower's
concerns, one module each: skipped non-finite steps (nonfinite.py), atomic checkpoints (checkpoints.py), streamed-data
resume (streaming.py), evaluation over every example (padded_evaluation.py), AdamW groups (optimizer_creation.py) and
throughput (throughput.py). Model, collator and optimizer code are the same on every device. The private Trainer APIs
these rely on are listed in private_apis.py."""

from __future__ import annotations

import functools

from transformers import Trainer

from ..data import SkipLog
from ..device import is_gaudi_arguments
from .arguments import RecipeArguments
from .checkpoints import AtomicCheckpoints, MidStepKillPoint
from .kill_points import wanted_kill
from .nonfinite import NonFiniteStepGuard, NonFiniteSteps
from .optimizer_creation import BridgeTowerOptimizer
from .padded_evaluation import PaddedEvaluation
from .streaming import ResumeRandomState, StreamedDataResume
from .throughput import WarmupExcludedThroughput


class BridgeTowerTrainerMixin(NonFiniteSteps, AtomicCheckpoints, StreamedDataResume, PaddedEvaluation,
                              BridgeTowerOptimizer):  # fmt: skip
    """Shared by BridgeTowerTrainer (transformers) and the Gaudi trainer (`gaudi_trainer_class`): the concerns'
    mixins, their callbacks, and `train`, which runs each concern's start and end around Trainer's loop."""

    def __init__(self, *args, recipe_args: RecipeArguments | None = None, skip_log=None, eval_skip_log=None,
                 eval_data_collator=None, **kwargs):  # fmt: skip
        self.recipe_args = recipe_args or RecipeArguments()
        self.eval_data_collator = eval_data_collator  # None: evaluate with the training collator
        self.skip_log, self.eval_skip_log = skip_log or SkipLog(), eval_skip_log or SkipLog()
        super().__init__(*args, **kwargs)
        self.add_callback(NonFiniteStepGuard(self))
        self.add_callback(ResumeRandomState(self))
        if wanted_kill() is not None:  # a test of what a kill leaves behind (a malformed value is refused here)
            self.add_callback(MidStepKillPoint())

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        self.start_nonfinite_count()
        self.prepare_data_resume(resume_from_checkpoint)
        self.remove_killed_leftovers()
        if self._resumes_a_finished_run(resume_from_checkpoint):
            result = self._load_finished_run(resume_from_checkpoint)
        else:
            result = super().train(resume_from_checkpoint, *args, **kwargs)
        self.read_nonfinite_steps()
        result.metrics["nonfinite_steps"] = len(self.nonfinite_steps)
        return result

    def skipped_records(self, split: str = "train") -> dict:
        """Skip counts of one split summed over every rank's log (each rank's workers write their own file)."""
        log = self.skip_log if split == "train" else self.eval_skip_log
        self.accelerator.wait_for_everyone()
        return SkipLog.summary_of(log.rank_paths())


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
