"""Evaluation under static shapes (issue 20, point 7): the last batch is padded to the batch size instead of dropped,
and the padding is left out of every figure: the loss, the predictions and the labels that metrics see."""

import numpy as np
import pytest
import torch
from torch import nn

import bridgetower_gaudi.training.pretrain as pretrain
from bridgetower_gaudi.training.arguments import BridgeTowerTrainingArguments
from bridgetower_gaudi.training.trainer import BridgeTowerTrainer

EXAMPLES, BATCH = 515, 64  # 8 whole batches and 3 examples


class Scores(nn.Module):
    """Two-class logits (w * x, -w * x): each example has its own loss, so a mean over the wrong set shows."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(0.01))

    def forward(self, x, labels=None):
        logits = torch.stack([self.w * x, -self.w * x], dim=-1)
        loss = nn.functional.cross_entropy(logits, labels)  # ignore_index -100: padding rows leave the mean
        return {"loss": loss, "logits": logits}


class Examples(torch.utils.data.Dataset):
    def __len__(self):
        return EXAMPLES

    def __getitem__(self, i):
        return {"x": torch.tensor(float(i % 97) - 48.0), "labels": torch.tensor(i % 3 % 2)}


def test_every_example_is_evaluated_and_padding_is_in_no_figure(tmp_path):
    seen = {}

    def metrics(prediction):
        seen["rows"] = len(prediction.label_ids)
        predicted = prediction.predictions.argmax(-1)
        return {"accuracy": float((predicted == prediction.label_ids).mean())}

    args = BridgeTowerTrainingArguments(
        output_dir=str(tmp_path), per_device_eval_batch_size=BATCH, dataloader_drop_last=True, report_to=[],
        use_cpu=True,
    )  # fmt: skip
    trainer = BridgeTowerTrainer(
        model=Scores(), args=args, eval_dataset=Examples(), data_collator=torch.utils.data.default_collate,
        compute_metrics=metrics,
    )  # fmt: skip
    result = trainer.evaluate()

    # Recomputed here over the 515 examples, one at a time.
    x = torch.stack([Examples()[i]["x"] for i in range(EXAMPLES)])
    labels = torch.stack([Examples()[i]["labels"] for i in range(EXAMPLES)])
    logits = torch.stack([0.01 * x, -0.01 * x], dim=-1)
    losses = nn.functional.cross_entropy(logits, labels, reduction="none")
    assert seen["rows"] == EXAMPLES
    assert result["eval_loss"] == pytest.approx(losses.mean().item(), rel=1e-5)
    assert result["eval_accuracy"] == pytest.approx((logits.argmax(-1) == labels).float().mean().item())
    # What dropping the remainder (or counting the padding) would give is measurably different.
    assert abs(losses[:512].mean().item() - losses.mean().item()) > 1e-4
    assert len(trainer.get_eval_dataloader()) == 9  # 8 whole batches + the padded one, every batch of 64
    predicted = trainer.predict(Examples())
    assert predicted.predictions.shape == (EXAMPLES, 2) and predicted.label_ids.shape == (EXAMPLES,)
    assert predicted.metrics["test_loss"] == pytest.approx(losses.mean().item(), rel=1e-5)


def test_pretraining_evaluation_covers_every_held_out_pair(tmp_path):
    model_args, data_args, pretraining_args, args = pretrain.parse_args(
        ["--output_dir", str(tmp_path), "--do_eval", "--synthetic_eval_size", "19", "--per_device_eval_batch_size",
         "8", "--max_seq_length", "16", "--report_to", "none"]
    )  # fmt: skip
    trainer = pretrain.build_trainer(model_args, data_args, pretraining_args, args)
    seen = {}
    compute = trainer.compute_metrics

    def recording(prediction):
        mlm_labels, itm_labels = prediction.label_ids
        seen["rows"] = (len(mlm_labels), len(itm_labels), len(prediction.predictions[0]))
        seen["itm_labels"] = np.asarray(itm_labels)
        return compute(prediction)

    trainer.compute_metrics = recording
    metrics = trainer.evaluate()
    assert seen["rows"] == (19, 19, 19)  # 2 whole batches and 3 pairs, not 16
    assert set(np.unique(seen["itm_labels"])) <= {0, 1}  # no padding label (-100) reached the metrics
    assert 0.0 <= metrics["eval_itm_accuracy"] <= 1.0 and np.isfinite(metrics["eval_loss"])


TWO_RANKS = """
import glob, json, sys, torch
sys.path.insert(0, {root!r})
from tests.test_gaudi_evaluation import Examples, Scores
from bridgetower_gaudi.training.arguments import BridgeTowerTrainingArguments
from bridgetower_gaudi.device import leave_process_group
from bridgetower_gaudi.training.trainer import BridgeTowerTrainer
seen = {{}}
def metrics(prediction):
    seen["labels"] = prediction.label_ids.tolist()
    return {{"rows": len(prediction.label_ids)}}
args = BridgeTowerTrainingArguments(output_dir={out!r}, per_device_eval_batch_size=8, dataloader_drop_last=True,
                                    report_to=[], use_cpu=True)
trainer = BridgeTowerTrainer(model=Scores(), args=args, eval_dataset=Examples(),
                             data_collator=torch.utils.data.default_collate, compute_metrics=metrics)
result = trainer.evaluate()
# One write per line (under 4 KiB): the ranks share a pipe, and `python -u` would write print's newline apart.
if args.process_index == 0:
    sys.stdout.write("RESULT " + json.dumps({{"world": args.world_size, "loss": result["eval_loss"],
                                              "rows": result["eval_rows"], "labels": seen["labels"]}}) + "\\n")
leave_process_group()
# gloo's worker threads still running here could abort this rank at exit (see leave_process_group): none may be left.
names = sorted(open(comm).read().strip() for comm in glob.glob("/proc/self/task/*/comm"))
sys.stdout.write("THREADS " + json.dumps({{"rank": args.process_index, "names": names}}) + "\\n")
"""


@pytest.mark.slow
def test_two_ranks_evaluate_every_example_once_in_order(tmp_path):
    """Two processes, 8 examples each per batch: the 515 examples come back once each, in order, and the loss is
    their mean (the padding of the last global batch of 16 spans both ranks). Both ranks exit 0 with no gloo thread
    left after leaving the group: one still running at exit could abort the rank (SIGABRT) after all its work."""
    import json

    from tests.processes import ROOT, failure_report, run_checked, torchrun

    script = tmp_path / "two_ranks.py"
    script.write_text(TWO_RANKS.format(root=ROOT, out=str(tmp_path / "out")))
    done = run_checked(torchrun(2, str(script)))
    line = next((line for line in done.stdout.splitlines() if line.startswith("RESULT ")), None)
    assert line, failure_report(done)
    result = json.loads(line[len("RESULT ") :])
    expected = [Examples()[i]["labels"].item() for i in range(EXAMPLES)]
    x = torch.stack([Examples()[i]["x"] for i in range(EXAMPLES)])
    losses = nn.functional.cross_entropy(torch.stack([0.01 * x, -0.01 * x], dim=-1), torch.tensor(expected),
                                         reduction="none")  # fmt: skip
    assert result["world"] == 2 and result["rows"] == EXAMPLES and result["labels"] == expected
    assert result["loss"] == pytest.approx(losses.mean().item(), rel=1e-5)
    threads = [json.loads(line[len("THREADS ") :]) for line in done.stdout.splitlines() if line.startswith("THREADS ")]
    assert sorted(report["rank"] for report in threads) == [0, 1], failure_report(done)
    assert not [name for report in threads for name in report["names"] if "gloo" in name], failure_report(done)
