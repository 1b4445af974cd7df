"""Zero host syncs in a training step (issue 19): forward, backward and optimizer step of every pre-training recipe
and fine-tuning task read nothing from the device, with and without gradient accumulation, on one and two (gloo)
ranks; the non-finite guard decides on the device; logging steps and evaluation read the host a bounded number of
times; the streamed reader's per-batch agreement across ranks stays on the host. Counted on CPU with
`HostSyncCounter` (a dispatch mode over the ops that read a tensor's value: syncs on Gaudi and CUDA)."""

from __future__ import annotations

import json
import os

import pytest
import torch

from bridgetower_gaudi.device.host_syncs import HostSyncCounter, count_host_syncs
from bridgetower_gaudi.tasks import FINETUNING_TASKS
from bridgetower_gaudi.training.nonfinite import SkipOnDevice
from tests.host_sync_run import count_step_syncs
from tests.processes import ROOT, run_checked, torchrun


def test_the_counter_sees_each_kind_of_host_read_and_nothing_else():
    x = torch.randn(6)
    counter = count_host_syncs(lambda: (x * 2 + 1).sum().exp())
    assert counter.syncs == 0 and counter.total_ops == 4
    reads = [
        lambda: x.sum().item(),
        lambda: bool(x.sum() > 0),
        lambda: torch.nonzero(x),
        lambda: torch.equal(x, x),
        lambda: x[x > 0],
        lambda: torch.masked_select(x, x > 0),
        lambda: torch.unique(x),
    ]
    for read in reads:
        counter = count_host_syncs(read, record_stacks=True)
        assert counter.syncs == 1, counter.report()
        assert "test_host_syncs.py" in counter.report()  # where it came from


PRETRAIN_RECIPES = {
    "default": [],
    "itc_hard": ["--itm_negatives", "itc_hard", "--objectives", "mlm,itm,itc"],
    "in_batch": ["--itm_negatives", "in_batch"],
}
RUNS = [("pretrain", name, flags) for name, flags in PRETRAIN_RECIPES.items()]
RUNS += [(task, task, ["--image_transform", "blip"]) for task in FINETUNING_TASKS]


@pytest.mark.parametrize("accumulation", [1, 2])
@pytest.mark.parametrize("task, name, flags", RUNS, ids=[name for _, name, _ in RUNS])
def test_a_training_step_reads_nothing_from_the_device(tmp_path, task, name, flags, accumulation):
    steps, _ = count_step_syncs(
        task, ["--max_steps", "2", "--gradient_accumulation_steps", str(accumulation), *flags], str(tmp_path)
    )
    assert len(steps) == 2
    for step in steps:
        assert step.syncs == 0, step.report()
        assert step.total_ops > 500  # the counter saw the step's forward, backward and optimizer


def test_two_gloo_ranks_step_without_host_syncs(tmp_path):
    """Every task on two ranks (DDP over gloo), with gradient accumulation: DDP's reducer reads nothing either
    (find_unused_parameters off: every model freezes what its losses never reach)."""
    out = str(tmp_path / "syncs.json")
    script = os.path.join(ROOT, "tests", "host_sync_run.py")
    tasks = ",".join(["pretrain", *FINETUNING_TASKS])
    run_checked(torchrun(2, script, out, tasks, "--max_steps", "2", "--gradient_accumulation_steps", "2"))
    for rank in (0, 1):
        counts = json.loads(open(f"{out}.rank{rank}").read())
        assert sorted(counts) == sorted(tasks.split(","))
        for task, result in counts.items():
            assert result["step_syncs"] == [0, 0], (task, result["reports"])


def _nan_loss_in_step(trainer, bad_step: int):
    compute_loss = trainer.compute_loss

    def compute_loss_with_nan(model, inputs, *args, **kwargs):
        loss = compute_loss(model, inputs, *args, **kwargs)
        return loss * float("nan") if trainer.state.global_step + 1 == bad_step else loss

    trainer.compute_loss = compute_loss_with_nan


def test_a_nonfinite_step_is_skipped_without_a_host_sync_and_read_at_the_next_logging_step(tmp_path, monkeypatch):
    from tests import host_sync_run

    built = {}
    build = host_sync_run.run_module.build_trainer

    def build_with_nan(*args, **kwargs):
        built["trainer"] = trainer = build(*args, **kwargs)
        _nan_loss_in_step(trainer, 2)
        return trainer

    monkeypatch.setattr(host_sync_run.run_module, "build_trainer", build_with_nan)
    steps, _ = count_step_syncs("pretrain", ["--max_steps", "4", "--logging_steps", "3"], str(tmp_path))
    trainer = built["trainer"]
    assert [step.syncs for step in steps] == [0, 0, 0, 0], [s.report() for s in steps if s.syncs]
    assert trainer.nonfinite_steps == [2]
    logged = [entry.get("nonfinite_steps", 0) for entry in trainer.state.log_history if "loss" in entry]
    assert logged == [1]  # the logging step 3 read it


@pytest.mark.parametrize("fused", [True, False])
def test_skip_on_device_leaves_weights_and_adamw_state_as_they_were(fused):
    """torch's fused AdamW skips through `found_inf`; foreach AdamW (and any other optimizer) through a device-side
    select; a good step is exactly the plain optimizer's."""
    torch.manual_seed(0)
    model, reference = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    reference.load_state_dict(model.state_dict())
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, fused=fused, foreach=not fused)
    plain = torch.optim.AdamW(reference.parameters(), lr=0.1, fused=fused, foreach=not fused)
    guard = SkipOnDevice()
    inputs = torch.randn(5, 4)

    def step(module, opt, bad: bool | None, poison: bool = False):
        module(inputs).sum().mul(float("nan") if poison else 1.0).backward()
        if bad is not None:
            guard.arm(opt, torch.tensor(bad))
        with HostSyncCounter() as counter:
            opt.step()
        opt.zero_grad()
        return counter

    for module, opt in ((model, optimizer), (reference, plain)):  # the first step: AdamW state created
        step(module, opt, False if opt is optimizer else None)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state_before = {id(p): {k: v.clone() for k, v in optimizer.state[p].items()} for p in model.parameters()}
    counter = step(model, optimizer, True, poison=True)  # NaN gradients, skipped
    # Foreach AdamW reads its step counts, kept in host memory (CPU tensors even for CUDA weights), by itself.
    unguarded = step(reference, plain, None, poison=False).syncs if not fused else 0
    assert counter.syncs == unguarded, counter.report()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    for p in model.parameters():
        assert all(torch.equal(state_before[id(p)][k], v) for k, v in optimizer.state[p].items())
    step(model, optimizer, False)
    step(reference, plain, None) if fused else None  # foreach: the reference took its step above already
    for (name, ours), theirs in zip(model.state_dict().items(), reference.state_dict().values(), strict=True):
        assert torch.equal(ours, theirs), name


def test_logging_steps_and_evaluation_read_the_host_a_bounded_number_of_times(tmp_path, monkeypatch):
    from tests import host_sync_run

    counts = {"log": [], "evaluate": []}
    build = host_sync_run.run_module.build_trainer

    def build_counting(*args, **kwargs):
        trainer = build(*args, **kwargs)
        for name in counts:
            method = getattr(trainer, "_maybe_log_save_evaluate" if name == "log" else name)

            def counted(*a, _method=method, _name=name, **k):
                with HostSyncCounter() as counter:
                    result = _method(*a, **k)
                counts[_name].append(counter.syncs)
                return result

            setattr(trainer, "_maybe_log_save_evaluate" if name == "log" else name, counted)
        return trainer

    monkeypatch.setattr(host_sync_run.run_module, "build_trainer", build_counting)
    flags = ["--max_steps", "4", "--logging_steps", "2", "--eval_strategy", "steps", "--eval_steps", "4",
             "--do_eval", "--dataloader_num_workers", "0"]  # fmt: skip
    count_step_syncs("pretrain", flags, str(tmp_path))
    # Steps 1 and 3 log nothing; 2 reads the loss (and the non-finite count); 4 logs and evaluates; then the
    # epoch's end, nothing to log.
    log, (evaluation,) = counts["log"], counts["evaluate"]
    assert len(log) == 5 and log[0] == log[2] == log[4] == 0, counts
    assert 1 <= log[1] <= 4 and 1 <= log[3] - evaluation <= 4, counts
    # 2 batches of 4 (collated in this process here, whose CPU reads count too): the metrics' reads, bounded.
    assert 0 < evaluation <= 40, counts


def test_the_streamed_readers_agreement_across_ranks_stays_on_the_host(tmp_path):
    """StreamingLoader asks every rank whether it has a batch: a gloo all-reduce of a host flag, read without a
    dispatched op (before: a device all-reduce and `.item()` per batch)."""
    from bridgetower_gaudi.data.dataset import StreamingLoader

    class Stream:
        rank, world_size, shuffle_block, epoch, start = 0, 1, 0, 0, None

    batches = [{"x": torch.ones(2), "stream_state": {"reader": 0}} for _ in range(3)]

    class Loader(list):
        num_workers = 0

    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        loader = StreamingLoader(Loader(batches), Stream(), torch.device("cpu"))
        with HostSyncCounter() as counter:
            seen = list(loader)
    finally:
        torch.distributed.destroy_process_group()
    assert len(seen) == 3 and counter.syncs == 0, counter.report()
