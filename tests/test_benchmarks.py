"""The throughput report (benchmarks/run_benchmarks.py) runs end to end at the tiny preset and writes every file and
field it promises; the trainer's optimizer is the fused AdamW the report credits it with; the ITM swap probe reads
a colour-only matcher as one."""

import copy
import json
import os
import statistics
import sys

import pytest
import torch
from transformers import TrainingArguments

import bridgetower_gaudi as btg
from bridgetower_gaudi.training.trainer import BridgeTowerTrainer
from tests.conftest import tiny_config
from tests.processes import run_checked

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_tiny_report_has_every_file_and_field(tmp_path):
    command = [sys.executable, os.path.join(REPO, "benchmarks", "run_benchmarks.py"), "--preset", "tiny", "--quick",
               "--output_dir", str(tmp_path)]  # fmt: skip
    run_checked(command, timeout=300)

    (folder,) = tmp_path.iterdir()  # <device>-<date>
    assert folder.name.startswith("cpu-")
    for name in ("report.json", "report.md", "throughput.png", "memory.png", "scaling.png"):
        assert (folder / name).stat().st_size > 0, name
    report = json.loads((folder / "report.json").read_text())
    meta = report["meta"]
    assert meta["device_name"] and meta["versions"]["torch"] == torch.__version__ and "commit" in meta["git"]
    assert meta["command"].endswith("--preset tiny --quick --output_dir " + str(tmp_path))
    assert meta["config"]["preset"] == "tiny" and meta["config"]["model"]["vision_config"]["image_size"] == 32
    assert report["matmul_peak"]["fp32"] > 0 and report["matmul_peak"]["bf16"] > 0

    cases = {(r["case"], r["model"]) for r in report["results"]}
    for case in ("pretrain", "pretrain_karpathy", "itm_train", "itc_train", "itm_inference", "rerank"):
        assert {(case, "ours"), (case, "transformers")} <= cases, case
    for r in report["results"]:
        assert r["samples_per_second"] > 0 and r["flops_per_step"] > 0 and r["peak_memory_bytes"] > 0, r
        assert len(r["seconds"]) == meta["config"]["steps"]
        # MFU recomputed from the reported step FLOPs, median step time and the run precision's measured peak; a
        # tiny model cannot exceed the matmul peak
        peak = report["matmul_peak"][meta["config"]["precision"]]
        assert r["mfu"] == pytest.approx(r["flops_per_step"] / statistics.median(r["seconds"]) / peak, rel=1e-6)
        assert 0 < r["mfu"] < 1, r
        if r["kind"] == "train":
            assert r["optimizer"] == "AdamW (fused)"  # ours through our trainer, theirs through Trainer's default
    assert {c["case"] for c in report["comparisons"]} >= {"pretrain", "pretrain_karpathy", "itm_train", "rerank"}
    assert len({r["batch_size"] for r in report["results"] if r["case"].startswith("itm_train")}) > 1  # scaling

    assert report["static_shapes"] and set(report["static_shapes"].values()) == {1}
    data = report["data_path"]
    per_worker = data["examples_per_second_per_worker"]
    assert per_worker > 0 and data["images_per_second_per_worker"] == pytest.approx(1.5 * per_worker)
    pretrain = next(r for r in report["results"] if r["case"] == "pretrain" and r["model"] == "ours")
    here, device = data["workers_needed"], data["workers_needed_at_device_rate"]
    assert here["workers"] == pytest.approx(pretrain["samples_per_second"] / per_worker)
    assert device["device_examples_per_second"] == pytest.approx(904.9 / 8)  # default: Gaudi2's published rate
    assert device["workers"] == pytest.approx(904.9 / 8 / per_worker) and device["whole_workers"] >= device["workers"]
    for rates in data["decode_transform_images_per_second"].values():  # JPEG draft mode, with and without
        assert rates["full"] > 0 and rates["draft"] > 0
    markdown = (folder / "report.md").read_text()
    assert "| itm_train | ours |" in markdown and f"needs {device['workers']:.2f} workers" in markdown


def test_itc_at_large_takes_optimum_habanas_run_bridgetower_shape():
    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    try:
        import run_benchmarks
    finally:
        sys.path.pop(0)
    args = run_benchmarks.parse_args(["--task", "itc", "--preset", "large"])
    assert (args.batch_size, args.seq_len, args.precision, args.tasks) == (48, 128, "bf16", ["itc"])
    assert run_benchmarks.transformers_config("large").vision_config.image_size == 294
    assert args.optimum_habana_shape and set(run_benchmarks.OPTIMUM_HABANA_8_CARDS) == {"Gaudi2", "Gaudi3", "A100"}
    assert run_benchmarks.parse_args(["--preset", "base"]).batch_size == 4  # other runs: the base shape


def test_the_trainer_steps_with_fused_adamw_on_cpu(tmp_path):
    """The trainer's optimizer is torch's fused AdamW, and one step of it moves every parameter as the plain
    (for-loop) AdamW does with the same groups and gradients."""
    model = btg.BridgeTowerForPreTraining(tiny_config())
    args = TrainingArguments(str(tmp_path), report_to="none", use_cpu=True, weight_decay=0.01, learning_rate=1e-3)
    optimizer = BridgeTowerTrainer(model=model, args=args).create_optimizer()
    assert type(optimizer) is torch.optim.AdamW and optimizer.defaults["fused"] is True

    reference_model = copy.deepcopy(model)
    reference_params = dict(reference_model.named_parameters())
    names = {id(p): n for n, p in model.named_parameters()}
    groups = [{**{k: v for k, v in group.items() if k != "params"}, "fused": False, "foreach": False,
               "params": [reference_params[names[id(p)]] for p in group["params"]]}
              for group in optimizer.param_groups]  # fmt: skip
    reference = torch.optim.AdamW(groups)
    generator = torch.Generator().manual_seed(0)
    for name, p in model.named_parameters():
        p.grad = torch.randn(p.shape, generator=generator)
        reference_params[name].grad = p.grad.clone()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer.step()
    reference.step()
    stepped = [(names[id(p)], p) for group in optimizer.param_groups for p in group["params"]]
    assert len(stepped) > len(before) // 2, len(stepped)
    for name, p in stepped:
        assert not torch.equal(p, before[name]), name
        torch.testing.assert_close(p, reference_params[name], rtol=1e-6, atol=1e-7, msg=name)


def test_swap_probe_reports_a_colour_only_matcher_as_such():
    """benchmarks/itm_swap_probe.py: a scorer that accepts any image showing the caption's colour accepts every
    matching pair, rejects every colour swap and no shape or position swap."""
    import numpy as np

    from benchmarks.itm_swap_probe import swap_probe
    from bridgetower_gaudi.data.synthetic import COLORS

    class ColourOnly:
        def score(self, images, texts):
            colour = np.array(COLORS[texts[0].split()[1]], dtype=np.uint8)
            shown = [bool((np.asarray(image) == colour).all(axis=-1).any()) for image in images]
            return [[{"text": texts[0], "itm": float(s)}] for s in shown]

    assert swap_probe(ColourOnly()) == {"match": 1.0, "colour": 1.0, "shape": 0.0, "position": 0.0}


def test_workers_needed_is_the_step_rate_over_one_workers_rate_in_whole_workers_too():
    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    try:
        import data_loading
    finally:
        sys.path.pop(0)
    need = data_loading.workers_needed(113.1, 50.0)
    assert need["workers"] == pytest.approx(2.262) and need["whole_workers"] == 3
    assert data_loading.workers_needed(0.44, 50.0)["whole_workers"] == 1  # a slow step still needs one worker


def test_matmul_dtypes_counts_each_steps_matmuls_by_dtype():
    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    try:
        import matmul_dtypes
    finally:
        sys.path.pop(0)
    rows = matmul_dtypes.main(["--preset", "tiny", "--batch_size", "2"])
    assert set(rows) == {"transformers", "ours, sdpa", "ours, eager"}
    # The tiny preset has no dropout: SDPA runs fused (no batched matmul); eager's attention is batched matmuls.
    assert ("bmm", "bfloat16") not in rows["ours, sdpa"].calls and rows["ours, eager"].calls[("bmm", "bfloat16")] > 0
    assert rows["transformers"].calls[("bmm", "bfloat16")] > 0
    assert all(dtype == "bfloat16" for counts in rows.values() for _, dtype in counts.calls)  # bf16 autocast
    # The same Linear layers either way: their matmul FLOPs agree, and are 2 * m * k * n per call (positive).
    for op in ("mm", "addmm"):
        assert rows["ours, sdpa"].flops[(op, "bfloat16")] == rows["ours, eager"].flops[(op, "bfloat16")] > 0
