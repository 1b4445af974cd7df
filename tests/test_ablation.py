"""The ablation command: grid points as separate runs, tables in the paper's layout, resume without retraining."""

import csv
import json
import os

import pytest

from bridgetower_gaudi.experiments import ablation
from bridgetower_gaudi.experiments.ablation import AblationError, Point, grid_points, summarize

FAST = [
    "--max_steps", "3", "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "16",
    "--synthetic_train_size", "64", "--synthetic_eval_size", "32", "--logging_steps", "1", "--retrieval_images", "8",
]  # fmt: skip


def test_two_points_train_write_tables_and_resume(tmp_path):
    out = str(tmp_path / "abl")
    argv = ["--grid", "num_bridges", "--values", "2", "--seeds", "1", "--parallel", "2", "--output_dir", out, *FAST]
    summary = ablation.main(argv)
    assert summary["runs_trained"] == 2 and summary["runs_reused"] == 0
    rows = {row["point"]: row for row in summary["rows"]}
    assert list(rows) == ["num_bridges=0", "num_bridges=2"]  # the METER reference first, added to --values
    meter, bridgetower = rows["num_bridges=0"], rows["num_bridges=2"]
    assert meter["bridge_params"] == 0 and bridgetower["bridge_params"] == 2 * 2 * 2 * 64  # 2 LayerNorms / modality
    assert bridgetower["reference"] == "num_bridges=0"
    # One seed: each mean is that run's own figure (from its all_results.json, or the retrieval file for RSUM), and
    # each delta the difference to the METER reference's
    for name, row in rows.items():
        run = os.path.join(out, "num_bridges", name, "seed0")
        recorded = {}
        for file in ("all_results.json", ablation.RETRIEVAL_FILE):
            with open(os.path.join(run, file)) as f:
                recorded |= json.load(f)
        for key in ("eval_itm_accuracy", "eval_mlm_accuracy", "eval_mlm_attribute_accuracy", "rsum"):
            assert row[f"{key}_mean"] == pytest.approx(recorded[key]), (name, key)
            assert 0 <= row[f"{key}_mean"] <= (600 if key == "rsum" else 1), (name, key)
    for key in ("eval_itm_accuracy", "eval_mlm_accuracy", "eval_mlm_attribute_accuracy", "rsum"):
        delta = bridgetower[f"{key}_mean"] - meter[f"{key}_mean"]
        assert bridgetower[f"{key}_delta"] == pytest.approx(delta) and f"{key}_delta" not in meter
    assert bridgetower["eval_itm_accuracy_exceeds_spread"] is False  # one seed: no spread, nothing is marked

    # Each point is a normal run folder, with its config saying which design it is.
    run_dir = os.path.join(out, "num_bridges", "num_bridges=2", "seed0")
    assert {"model.safetensors", "config.json", "all_results.json", "ablation_point.json"} <= set(os.listdir(run_dir))
    with open(os.path.join(run_dir, "config.json")) as f:
        config = json.load(f)
    assert config["num_bridges"] == 2 and config["num_hidden_layers"] == 3
    with open(os.path.join(out, "num_bridges", "num_bridges=0", "seed0", "config.json")) as f:
        assert json.load(f)["num_bridges"] == 0

    stem = os.path.join(out, "num_bridges", "ablation_num_bridges")
    with open(stem + ".md") as f:
        table = f.read()
    assert "| METER (two-tower): 0 bridges (1 internal, 2 external) (reference) |" in table
    assert "RSUM" in table and "Time:" in table
    with open(stem + ".csv") as f:
        csv_rows = list(csv.DictReader(f))
    assert [r["point"] for r in csv_rows] == ["num_bridges=0", "num_bridges=2"]
    assert float(csv_rows[1]["eval_itm_accuracy_mean"]) == pytest.approx(bridgetower["eval_itm_accuracy_mean"])
    with open(stem + ".png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"

    # Resume: finished points are reused, not retrained; a point cut short (no all_results.json) is trained again.
    weights = os.path.join(run_dir, "model.safetensors")
    mtime = os.stat(weights).st_mtime_ns
    os.remove(os.path.join(out, "num_bridges", "num_bridges=0", "seed0", "all_results.json"))
    again = ablation.main(argv)
    assert again["runs_trained"] == 1 and again["runs_reused"] == 1
    assert os.stat(weights).st_mtime_ns == mtime
    assert again["rows"][1]["eval_itm_accuracy_mean"] == bridgetower["eval_itm_accuracy_mean"]


def test_spread_marks_only_differences_beyond_both_stds():
    points = [Point("ref", "ref"), Point("far", "far", reference="ref"), Point("near", "near", reference="ref")]
    per_seed = {
        "ref": {0: {"eval_itm_accuracy": 0.50}, 1: {"eval_itm_accuracy": 0.52}},  # std 0.014
        "far": {0: {"eval_itm_accuracy": 0.60}, 1: {"eval_itm_accuracy": 0.62}},
        "near": {0: {"eval_itm_accuracy": 0.50}, 1: {"eval_itm_accuracy": 0.56}},  # std 0.042: 0.02 is within
    }
    args = ablation.AblationArguments("bridge_type", None, 2, 1, "x", 0, {}, 0, "all", [])
    rows = {r["point"]: r for r in summarize(args, points, per_seed, seconds=1.0, trained=6, reused=0)["rows"]}
    assert rows["far"]["eval_itm_accuracy_delta"] == pytest.approx(0.10)
    assert rows["far"]["eval_itm_accuracy_exceeds_spread"] is True
    assert rows["near"]["eval_itm_accuracy_delta"] == pytest.approx(0.02)
    assert rows["near"]["eval_itm_accuracy_exceeds_spread"] is False
    assert "eval_itm_accuracy_delta" not in rows["ref"]
    table = ablation.markdown_table({**summarize(args, points, per_seed, 1.0, 6, 0), "flags": []})
    assert "| far | - | - | 61.0 ± 1.4 | +10.0* |" in table and "+2.0 |" in table


def test_grids_and_bad_flags():
    design_one = grid_points("bridge_type", None, 3)
    assert [p.overrides["link_tower_type"] for p in design_one] == list(ablation.PAPER_BRIDGES)
    assert design_one[0].label == "(a) add" and design_one[3].label == "(d) gated"
    depth = grid_points("num_cross_layers", ["1", "2"], 3)
    assert [p.overrides for p in depth] == [{"num_hidden_layers": n, "num_bridges": n - 1} for n in (3, 1, 2)]
    backbones = grid_points("backbones", ["/m/vit+/m/bert"], 6)
    assert [p.name for p in backbones] == ["backbones=vit+bert/meter", "backbones=vit+bert/bridgetower"]
    assert backbones[1].reference == backbones[0].name and "--vision_model_name_or_path" in backbones[1].flags
    with pytest.raises(AblationError, match="bridge types are"):
        grid_points("bridge_type", ["bogus"], 3)
    with pytest.raises(AblationError, match="0..2 bridges"):
        grid_points("num_bridges", ["5"], 3)
    with pytest.raises(AblationError, match="VISION\\+TEXT"):
        grid_points("backbones", None, 6)
    # A depth the tiny towers (3 layers) cannot bridge fails before anything trains, naming the fix.
    args = ablation.parse_args(["--grid", "num_cross_layers", "--values", "5"])
    with pytest.raises(AblationError, match="lower num_bridges or num_hidden_layers"):
        ablation.check_points(grid_points("num_cross_layers", ["5"], 3), ablation.base_config(args))
    with pytest.raises(AblationError, match="--model_name_or_path is set per point"):
        ablation.parse_args(["--grid", "bridge_type", "--model_name_or_path", "x"])
    # The default: the harder synthetic task on the tiny preset with 3 cross-modal layers; user flags come last.
    args = ablation.parse_args(["--grid", "bridge_type", "--max_steps", "7"])
    assert args.run_flags[-2:] == ["--max_steps", "7"] and "relations" in args.run_flags
    assert args.config_overrides == {"num_hidden_layers": 3, "initializer_factor": 2.5}
    args = ablation.parse_args(["--grid", "backbones", "--values", "/m/vit+/m/bert"])  # the pairs are the model
    assert "--config_name" not in args.run_flags and args.config_overrides == {}
