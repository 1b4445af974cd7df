"""Exact resume: a pre-training run SIGKILLed at a named phase (mid-step, or mid-save) and restarted with
`--resume_from_checkpoint auto` ends at the same step with bit-identical weights and the same skip counts as the run
that was never interrupted (CPU, one torch thread): map-style data (random augmentation, ITC hard negatives drawn by
the model, masking, data-loader workers) and a streamed tar source (resumed mid-shard)."""

from __future__ import annotations

import json
import os

import pytest
from safetensors.torch import load_file

from bridgetower_gaudi.data import synthetic_tokenizer
from bridgetower_gaudi.data.synthetic import POSITIONS, SHAPES
from bridgetower_gaudi.training.pretrain import main
from tests.data_files import color_image, write_tar
from tests.processes import python_script, run_killed_at

MAX_STEPS = 12


def _caption(i: int) -> str:
    return f"a {SHAPES[i % 3]} on the {POSITIONS[i % 4]}"  # words of the synthetic tokenizer


def _jsonl_data(folder) -> list[str]:
    """20 images with 2 captions each, 2 of them unreadable (4 records)."""
    images = folder / "imgs"
    images.mkdir(parents=True)
    rows = []
    for i in range(20):
        name = f"img{i}.png"
        if i in (5, 13):
            (images / name).write_bytes(b"not an image")
        else:
            color_image(i, (40 + i, 30)).save(images / name)
        rows.append({"image": f"imgs/{name}", "caption": [_caption(i), f"the {SHAPES[i % 3]}"]})
    (folder / "data.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return ["--train_file", str(folder / "data.jsonl"), "--image_transform", "blip_randaug_wc",
            "--objectives", "mlm,itm,itc", "--dataloader_num_workers", "2"]  # fmt: skip


def _tar_shards(folder) -> list[str]:
    """Three shards of 9, 8 and 7 samples (one with an unreadable image), read by 2 data-loader workers (4 and 2
    batches an epoch: their order matters on resume); shards in a new order each epoch, records shuffled in blocks
    of 3."""
    folder.mkdir(parents=True)
    for number, (start, count) in enumerate(((0, 9), (9, 8), (17, 7))):
        extra = {"sample09999.png": b"not an image", "sample09999.txt": b"broken"} if number == 1 else None
        write_tar(folder / f"shard-{number}.tar", start, count, extra=extra, caption_of=_caption)
    return ["--train_file", str(folder / "shard-{0..2}.tar"), "--stream_shuffle_block", "3",
            "--dataloader_num_workers", "2"]  # fmt: skip


def _tar_data(folder) -> list[str]:
    """ITC hard negatives: drawn by the model from the process's random state."""
    return [*_tar_shards(folder), "--objectives", "mlm,itm,itc"]


def _tar_data_with_dataset_negatives(folder) -> list[str]:
    """ITM negatives drawn from the data set (a random other record of the reader's current shuffle block)."""
    return [*_tar_shards(folder), "--itm_negatives", "dataset"]


def _flags(tmp_path, data_flags, output_dir) -> list[str]:
    tokenizer = tmp_path / "tokenizer"
    if not tokenizer.exists():
        synthetic_tokenizer().save_pretrained(tokenizer)
    return ["--output_dir", str(output_dir), "--do_train", "--max_steps", str(MAX_STEPS), "--save_steps", "3",
            "--per_device_train_batch_size", "4", "--max_seq_length", "16", "--learning_rate", "1e-3",
            "--logging_steps", "1", "--report_to", "none", "--seed", "3", "--tokenizer_name", str(tokenizer),
            "--resume_from_checkpoint", "auto", *data_flags]  # fmt: skip


# Where each case is killed (BRIDGETOWER_KILL_AT, see training/kill_points.py): mid-step 8 (checkpoints 3 and 6
# complete) or mid-save of checkpoint-6 (checkpoint-3 complete, checkpoint-6 staged).
KILLS = {"step": ("mid_step", 8, ["checkpoint-3", "checkpoint-6"]), "save": ("mid_save", 6, ["checkpoint-3"])}


def _kill_during(flags, output_dir, moment: str) -> list[str]:
    """Run the same command as a subprocess that SIGKILLs itself at the named phase; the checkpoints left."""
    phase, step, left = KILLS[moment]
    run_killed_at(python_script("run_scripts/run_pretrain.py", *flags), phase, step)
    names = sorted(n for n in os.listdir(output_dir) if n.startswith("checkpoint-"))
    assert names == left, names
    return names


def _final(output_dir) -> tuple[int, dict, dict]:
    state = json.loads((output_dir / "trainer_state.json").read_text())
    results = json.loads((output_dir / "all_results.json").read_text())
    skips = {k: v for k, v in results.items() if k.startswith("skip") and k != "skipped_examples"}
    return state["global_step"], load_file(output_dir / "model.safetensors"), skips


@pytest.mark.slow
@pytest.mark.parametrize(
    "data, moment",
    [(_jsonl_data, "step"), (_tar_data, "save"), (_tar_data_with_dataset_negatives, "step")],
    ids=["map-style", "tar", "tar-dataset-negatives"],
)
def test_a_killed_run_resumes_to_bit_identical_weights(tmp_path, data, moment):
    data_flags = data(tmp_path / "data")
    results = main(_flags(tmp_path, data_flags, tmp_path / "whole"))  # "auto" without a checkpoint: a fresh start
    assert results["nonfinite_steps"] == 0 and results["train_loss"] > 0, results
    step, weights, skips = _final(tmp_path / "whole")
    assert step == MAX_STEPS and skips["skipped_total"] > 0, skips

    killed = tmp_path / "killed"
    left = _kill_during(_flags(tmp_path, data_flags, killed), killed, moment)
    assert left and f"checkpoint-{MAX_STEPS}" not in left, left  # killed before the end
    if data is not _jsonl_data:  # checkpoint-3 (3 batches of 4): both readers resume inside a shard, past its start
        (state,) = [json.loads(p.read_text()) for p in (killed / "checkpoint-3").glob("data_state.rank*.json")]
        assert sorted(r["block_start"][1] > 0 for r in state["readers"].values()) == [True, True], state
    main(_flags(tmp_path, data_flags, killed))  # the same command: resumes from the newest checkpoint
    resumed_step, resumed_weights, resumed_skips = _final(killed)
    assert resumed_step == step and resumed_skips == skips
    assert sorted(resumed_weights) == sorted(weights)
    different = [name for name in weights if not resumed_weights[name].equal(weights[name])]
    assert different == [], different[:5]


def test_map_style_training_items_know_their_epoch_through_the_trainers_loader(tmp_path):
    """The trainer's loader (accelerate's) passes the epoch to EpochSampler: items are asked for as epoch * size +
    index, so each epoch draws anew (augmentation, negatives, masking) and a resumed epoch draws the same."""
    from bridgetower_gaudi.training.pretrain import build_trainer, parse_args

    flags = _flags(tmp_path, _jsonl_data(tmp_path / "data"), tmp_path / "out")
    trainer = build_trainer(*parse_args([*flags, "--dataloader_num_workers", "0"]))
    size = len(trainer.train_dataset)
    loader = trainer.get_train_dataloader()
    first = next(iter(loader.batch_sampler))
    loader.set_epoch(3)
    third = next(iter(loader.batch_sampler))
    assert all(0 <= p < size for p in first) and all(3 * size <= p < 4 * size for p in third)
    assert [p % size for p in first] != [p % size for p in third]  # a new order too
    limited = trainer.train_dataset.first(6)  # --max_train_samples 6: still by epoch and index
    assert len(limited) == 6 and limited[2 * 6 + 1]["draw_seed"] != limited[1]["draw_seed"]
