"""Retrieval evaluation: top-k re-ranking equals the official rule, k=all ranks exactly as every pair through the
whole model, the metrics by hand, the tower cache, the script end to end, and two gloo ranks.

Run under torchrun (`torchrun --standalone --nproc_per_node 2 tests/test_retrieval_eval.py MODEL_DIR DATA_FILE
OUT_DIR`) it is the two ranks of the distributed test."""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import replace

import pytest
import torch

from bridgetower_gaudi import BridgeTowerForImageAndTextRetrieval, BridgeTowerForPreTraining
from bridgetower_gaudi.data import ExampleBuilder, ImageTransform
from bridgetower_gaudi.data.synthetic import draw_shape, synthetic_attributes, synthetic_tokenizer
from bridgetower_gaudi.evaluation import (
    RetrievalData,
    RetrievalError,
    RetrievalOptions,
    combine_directions,
    evaluate_retrieval,
    karpathy_records,
    naive_scores,
    recall_metrics,
    retrieval_scores,
    synthetic_records,
    top_k_masks,
)
from bridgetower_gaudi.evaluation.retrieval import RESULTS_FILE, main
from tests.processes import run_checked, torchrun

NUM_IMAGES, CAPTIONS_PER_IMAGE = 6, 2
# Random weights 10x the usual scale: ITM scores then differ between pairs by far more than float rounding, so
# "ranks exactly the same" is a real test (at the usual scale the gaps are ~1e-7).
SPREAD = dict(initializer_factor=10.0)


def tiny_retrieval_model(objectives=("itm", "itc")):
    from tests.conftest import tiny_config

    torch.manual_seed(0)
    return BridgeTowerForPreTraining(tiny_config(pretraining_objectives=list(objectives), **SPREAD)).eval()


def random_data(num_images: int = NUM_IMAGES, captions_per_image: int = CAPTIONS_PER_IMAGE, seed: int = 1):
    """Random images and token captions of different lengths (padded), caption t belonging to image t // per."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(num_images, 3, 32, 32, generator=generator)
    count = num_images * captions_per_image
    input_ids = torch.randint(5, 1000, (count, 16), generator=generator)
    input_ids[:, 0] = 0
    attention_mask = torch.ones_like(input_ids)
    for row in range(count):
        length = 6 + row % 10
        input_ids[row, length:] = 1
        attention_mask[row, length:] = 0
    captions = {"input_ids": input_ids, "attention_mask": attention_mask}
    return images, captions, torch.arange(count) // captions_per_image


@pytest.fixture(scope="module")
def model():
    return tiny_retrieval_model()


@pytest.fixture(scope="module")
def data():
    return random_data()


@pytest.fixture(scope="module")
def naive(model, data):
    images, captions, _ = data
    return naive_scores(model, images, captions, batch_size=5, progress=False)


# --- the scores ---------------------------------------------------------------------------------------------------
def test_k_all_ranks_exactly_as_every_pair_through_the_whole_model(model, data, naive):
    images, captions, caption_to_image = data
    fast = retrieval_scores(model, images, captions, RetrievalOptions(k="all", batch_size=8, progress=False))
    sorted_scores = naive.flatten().sort().values
    assert (sorted_scores[1:] - sorted_scores[:-1]).min() > 1e-5  # distinct scores: the ranking is well defined
    assert fast.pairs_scored == naive.numel()
    assert torch.equal(fast.scores.argsort(dim=0), naive.argsort(dim=0))  # images for each caption (IR)
    assert torch.equal(fast.scores.argsort(dim=1), naive.argsort(dim=1))  # captions for each image (TR)
    torch.testing.assert_close(fast.scores, naive, rtol=0, atol=1e-5)
    assert recall_metrics(fast.scores, caption_to_image) == recall_metrics(naive, caption_to_image)


def test_top_k_scores_its_candidates_by_itm_and_the_rest_minus_100_as_the_official_rule(model, data, naive):
    images, captions, _ = data
    k = 2
    result = retrieval_scores(model, images, captions, RetrievalOptions(k=k, batch_size=7, progress=False))
    torch.testing.assert_close(result.itc, itc_by_hand(model, images, captions), rtol=0, atol=1e-6)
    expected = official_scores_by_hand(naive, result.itc, k)
    outside = expected == -100.0
    assert 0 < outside.sum() < outside.numel() - NUM_IMAGES * k  # some pairs left out, more than k per image in
    assert result.pairs_scored == int((~outside).sum())
    torch.testing.assert_close(result.scores, expected, rtol=0, atol=1e-5)


def itc_by_hand(model, images, captions) -> torch.Tensor:
    """(images x captions) cosine similarities of the model's own ITC embeddings of each tower's output."""
    with torch.no_grad():
        bridgetower = model.bridgetower
        image_embeds = model.itc_image_embeddings(bridgetower.encode_image(images))
        text_embeds = model.itc_text_embeddings(bridgetower.encode_text(**captions))
    return image_embeds @ text_embeds.t()


def official_scores_by_hand(itm: torch.Tensor, itc: torch.Tensor, k: int) -> torch.Tensor:
    """The official rule written out pair by pair: ITM on a pair among an image's k best captions or a caption's k
    best images (by ITC), -100 elsewhere."""
    expected = torch.full_like(itm, -100.0)
    num_images, num_captions = itm.shape
    for i in range(num_images):
        for t in range(num_captions):
            best_captions = itc[i].topk(min(k, num_captions)).indices.tolist()
            best_images = itc[:, t].topk(min(k, num_images)).indices.tolist()
            if t in best_captions or i in best_images:
                expected[i, t] = itm[i, t]
    return expected


def test_combine_directions_is_the_elementwise_max_of_the_two_directions_masked_to_minus_100():
    itc = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.8, 0.7]])  # 2 images x 3 captions
    itm = torch.tensor([[3.0, -2.0, 1.0], [0.5, 4.0, -1.0]])
    image_to_text, text_to_image = top_k_masks(itc, 1)
    assert image_to_text.tolist() == [[True, False, False], [False, True, False]]  # each row's best
    assert text_to_image.tolist() == [[True, False, False], [False, True, True]]  # each column's best
    combined = combine_directions(itm, image_to_text, text_to_image)
    assert combined.tolist() == [[3.0, -100.0, -100.0], [-100.0, 4.0, -1.0]]
    # k past the number of candidates: every pair is a candidate
    assert all(mask.all() for mask in top_k_masks(itc, 10))


# --- the metrics --------------------------------------------------------------------------------------------------
def test_recall_metrics_by_hand_and_tr_counts_any_caption_of_the_image():
    # 3 images, captions 0-1 of image 0, 2-3 of image 1, 4-5 of image 2
    scores = torch.tensor(
        [
            [0.9, 0.1, 0.8, 0.2, 0.3, 0.4],  # image 0: best caption 0 (its own)       -> TR@1 hit
            [0.7, 0.6, 0.1, 0.25, 0.5, 0.3],  # image 1: own captions ranked 6th and 5th -> hit at 5 by caption 3
            [0.1, 0.2, 0.3, 0.4, 0.05, 0.0],  # image 2: own captions 5th and 6th        -> hit at 5 by caption 4
        ]
    )
    metrics = recall_metrics(scores, [0, 0, 1, 1, 2, 2])
    assert metrics["tr_r1"] == pytest.approx(100 / 3)
    assert metrics["tr_r5"] == metrics["tr_r10"] == 100.0  # image 1's first caption is last: any caption counts
    # captions: best image is their own only for caption 0; with 3 images, 5 and 10 include every image
    assert metrics["ir_r1"] == pytest.approx(100 / 6)
    assert metrics["ir_r5"] == metrics["ir_r10"] == 100.0
    assert metrics["rsum"] == pytest.approx(100 / 3 + 100 + 100 + 100 / 6 + 100 + 100)
    assert metrics["ir_mean"] == pytest.approx((100 / 6 + 200) / 3)
    assert metrics["r_mean"] == pytest.approx((metrics["ir_mean"] + metrics["tr_mean"]) / 2)


def test_recall_metrics_at_1_5_10_on_twelve_pairs():
    # caption j's own image (j) ranks j-th among the images; image i's own caption ranks (11 - i)-th
    n = 12
    rows, columns = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    scores = -rows.float() + 0.01 * columns.float()
    metrics = recall_metrics(scores, torch.arange(n))
    for k in (1, 5, 10):
        assert metrics[f"ir_r{k}"] == pytest.approx(100 * k / n)
        assert metrics[f"tr_r{k}"] == pytest.approx(100 * k / n)
    assert metrics["rsum"] == pytest.approx(2 * 100 * (1 + 5 + 10) / n)
    with pytest.raises(RetrievalError, match="caption_to_image"):
        recall_metrics(scores, torch.arange(n - 1))


# --- the cache ----------------------------------------------------------------------------------------------------
def _count_tower_calls(model, monkeypatch) -> dict:
    calls = {"image": 0, "text": 0}
    bridgetower = model.bridgetower
    encode_image, encode_text = bridgetower.encode_image, bridgetower.encode_text

    def counted_image(*args, **kwargs):
        calls["image"] += 1
        return encode_image(*args, **kwargs)

    def counted_text(*args, **kwargs):
        calls["text"] += 1
        return encode_text(*args, **kwargs)

    monkeypatch.setattr(bridgetower, "encode_image", counted_image)
    monkeypatch.setattr(bridgetower, "encode_text", counted_text)
    return calls


def test_the_tower_cache_is_reused_and_follows_the_weights(data, tmp_path, monkeypatch):
    model = tiny_retrieval_model()
    images, captions, _ = data
    calls = _count_tower_calls(model, monkeypatch)
    options = RetrievalOptions(k=3, batch_size=4, cache_dir=str(tmp_path), progress=False)

    first = retrieval_scores(model, images, captions, replace(options, k="all"))
    assert calls == {"image": 2, "text": 3}  # 6 images and 12 captions in batches of 4
    assert (first.images_encoded, first.captions_encoded) == (NUM_IMAGES, NUM_IMAGES * CAPTIONS_PER_IMAGE)
    assert len(list(tmp_path.glob("*.safetensors"))) == 2

    second = retrieval_scores(model, images, captions, options)  # another k: the same tower states
    assert calls == {"image": 2, "text": 3}  # no tower ran again
    assert (second.images_encoded, second.captions_encoded) == (0, 0)
    assert torch.equal(second.itc, first.itc)
    scored = second.scores != -100.0
    torch.testing.assert_close(second.scores[scored], first.scores[scored], rtol=0, atol=1e-6)

    with torch.no_grad():  # another checkpoint: one changed vision weight
        model.bridgetower.vision_model.encoder.layers[0].mlp.fc1.weight.mul_(2.0)
    third = retrieval_scores(model, images, captions, options)
    assert calls == {"image": 4, "text": 6}  # both towers ran again: the key covers every weight
    assert third.images_encoded == NUM_IMAGES and not torch.allclose(third.itc, first.itc)

    retrieval_scores(model, images.flip(0), captions, options)  # other pixels, same weights and captions
    assert calls == {"image": 6, "text": 6}


# --- models without ITC -------------------------------------------------------------------------------------------
def test_itm_only_models_evaluate_every_pair_and_refuse_top_k(data, naive):
    images, captions, caption_to_image = data
    from tests.conftest import tiny_config

    retrieval = BridgeTowerForImageAndTextRetrieval(tiny_config(**SPREAD))
    loaded = retrieval.load_state_dict(tiny_retrieval_model().state_dict(), strict=False)
    assert not loaded.missing_keys  # the same towers, cross-modal encoder and ITM head as the fixture's model
    metrics = evaluate_retrieval(
        retrieval, images, captions, caption_to_image, RetrievalOptions(k="all", progress=False)
    )
    assert metrics == {**metrics, **recall_metrics(naive, caption_to_image)}  # the same model: the same numbers
    assert "itc_rsum" not in metrics and metrics["pairs_scored"] == naive.numel()
    with pytest.raises(RetrievalError, match="k='all'"):
        evaluate_retrieval(retrieval, images, captions, caption_to_image, RetrievalOptions(k=3, progress=False))


# --- the script ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("retrieval") / "model"
    tiny_retrieval_model().save_pretrained(path)
    synthetic_tokenizer().save_pretrained(path)
    return str(path)


def _karpathy_file(folder) -> str:
    """4 test images with 2 captions each, and a train image the test split must leave out."""
    entries = []
    for index in range(5):
        attributes = synthetic_attributes(seed=3, index=index)
        draw_shape(attributes, 48).save(folder / f"{index}.png")
        caption = f"a {attributes['color']} {attributes['shape']} on the {attributes['position']}"
        entries.append(
            {
                "filepath": "",
                "filename": f"{index}.png",
                "imgid": index,
                "split": "test" if index < 4 else "train",
                "sentences": [{"raw": caption}, {"raw": f"there is a {attributes['color']} {attributes['shape']}"}],
            }
        )
    path = folder / "dataset_flickr30k.json"
    path.write_text(json.dumps({"images": entries}))
    return str(path)


def metrics_by_hand(checkpoint: str, records, k: int | None) -> dict:
    """The script's metrics recomputed without it: the data as the script reads it (blip transform, 40 tokens), every
    pair through the whole model, ITC from the model's own embeddings, the official rule written out by hand."""
    model = BridgeTowerForPreTraining.from_pretrained(checkpoint).eval()
    transform = ImageTransform(model.config.vision_config.image_size, "blip")
    data = RetrievalData.from_records(records, ExampleBuilder(synthetic_tokenizer(), transform, 40))
    images = torch.stack([data.images[i] for i in range(len(data.images))])
    itm = naive_scores(model, images, data.captions, progress=False)
    itc = itc_by_hand(model, images, data.captions)
    scores = itm if k is None else official_scores_by_hand(itm, itc, k)
    return {**recall_metrics(scores, data.caption_to_image), **recall_metrics(itc, data.caption_to_image, "itc_")}


def test_the_script_evaluates_a_karpathy_split_and_reuses_its_cache(checkpoint, tmp_path, capsys):
    data_file = _karpathy_file(tmp_path)
    argv = ["--model_name_or_path", checkpoint, "--data_file", data_file, "--image_root", str(tmp_path)]
    argv += ["--k", "3", "--batch_size", "4", "--device", "cpu", "--num_workers", "0", "--no_progress"]
    argv += ["--cache_dir", str(tmp_path / "cache"), "--output_dir", str(tmp_path / "out")]
    first = main(argv)
    written = json.loads((tmp_path / "out" / RESULTS_FILE).read_text())
    assert written == first
    assert (written["num_images"], written["num_captions"], written["k"]) == (4, 8, 3)
    expected = metrics_by_hand(checkpoint, karpathy_records(data_file, str(tmp_path), "test"), k=3)
    assert {name: written[name] for name in expected} == pytest.approx(expected, abs=1e-9)
    assert written["ir_r10"] == written["tr_r10"] == 100.0  # 4 images, 8 captions: the top 10 holds them all
    assert "rsum" in capsys.readouterr().out

    second = main(argv)
    assert (second["images_encoded"], second["captions_encoded"]) == (0, 0)
    assert second["rsum"] == first["rsum"]


def test_the_script_runs_on_synthetic_data_and_reports_bad_flags(checkpoint, tmp_path):
    argv = ["--model_name_or_path", checkpoint, "--synthetic_images", "5", "--synthetic_captions_per_image", "2"]
    argv += ["--k", "all", "--device", "cpu", "--num_workers", "0", "--no_progress", "--output_dir", str(tmp_path)]
    results = main(argv)
    assert (results["num_images"], results["num_captions"], results["pairs_scored"]) == (5, 10, 50)
    # The checkpoint has ITC heads: ITC alone is reported beside, and both are what the model computes.
    expected = metrics_by_hand(checkpoint, synthetic_records(5, 2, seed=10_007, image_size=64), k=None)
    assert {name: results[name] for name in expected} == pytest.approx(expected, abs=1e-9)
    with pytest.raises(SystemExit, match="positive number"):
        main(["--model_name_or_path", checkpoint, "--k", "zero"])
    with pytest.raises(SystemExit, match="no images in split"):
        main(argv + ["--data_file", _karpathy_file(tmp_path), "--image_root", str(tmp_path), "--split", "val"])


# --- two ranks ----------------------------------------------------------------------------------------------------
def test_two_gloo_ranks_split_the_images_and_return_the_single_process_scores(tmp_path):
    model, (images, captions, _) = tiny_retrieval_model(), random_data()
    model.save_pretrained(tmp_path / "model")
    torch.save({"images": images, "captions": captions}, tmp_path / "data.pt")
    single = retrieval_scores(model, images, captions, RetrievalOptions(k=3, batch_size=4, progress=False))

    ranks = torchrun(2, os.path.abspath(__file__), str(tmp_path / "model"), str(tmp_path / "data.pt"), str(tmp_path))
    done = run_checked(ranks, timeout=300)
    # the ranks share one pipe, so their lines may interleave: match the reports, not the lines
    assert sorted(re.findall(r"RANK \d images_encoded=\d+", done.stdout)) == [
        "RANK 0 images_encoded=3",
        "RANK 1 images_encoded=3",
    ], done.stdout
    for rank in (0, 1):
        scores = torch.load(tmp_path / f"scores{rank}.pt")
        torch.testing.assert_close(scores, single.scores, rtol=0, atol=1e-5)
        assert torch.equal((scores == -100.0), (single.scores == -100.0))


def _rank_main(model_dir: str, data_file: str, out_dir: str) -> None:
    """One rank under torchrun (RANK, WORLD_SIZE and the rendezvous address come from it)."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    model = BridgeTowerForPreTraining.from_pretrained(model_dir).eval()
    data = torch.load(data_file)
    options = RetrievalOptions(k=3, batch_size=4, progress=False)
    result = retrieval_scores(model, data["images"], data["captions"], options)
    torch.save(result.scores, os.path.join(out_dir, f"scores{rank}.pt"))
    sys.stdout.write(f"RANK {rank} images_encoded={result.images_encoded}\n")  # one write per line: a shared pipe
    sys.stdout.flush()
    dist.destroy_process_group()


if __name__ == "__main__":
    _rank_main(*sys.argv[1:4])
