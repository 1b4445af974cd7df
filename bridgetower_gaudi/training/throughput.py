"""Throughput without the warm-up steps, off Gaudi (GaudiTrainer measures its own)."""

from __future__ import annotations

import time

from transformers import TrainerCallback


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
