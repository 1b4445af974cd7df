"""VQAv2 / SNLI-VE / NLVR2 readers (json and the official arrow layouts) and the VQA answer normalisation and
metrics. Every file is written here: tiny json / jsonl files, PNG images, arrow files."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from bridgetower_gaudi.data import DataConfigError, ExampleBuilder, ImageTextDataset, ImageTransform, SkipLog
from bridgetower_gaudi.data.images import decode_image
from bridgetower_gaudi.data.synthetic import synthetic_tokenizer
from bridgetower_gaudi.data.task_sources import (
    ArrowTaskSource,
    Nlvr2ArrowRows,
    Nlvr2Source,
    SnliVeArrowRows,
    SnliVeSource,
    VqaArrowRows,
    VQAv2Source,
    answer_vocabulary_from_arrow,
    task_source,
)
from bridgetower_gaudi.evaluation.vqa import (
    accuracy,
    answer_scores,
    build_answer_vocabulary,
    load_answer_vocabulary,
    normalize_answer,
    save_answer_vocabulary,
    score_for_count,
    vqa_accuracy,
    vqa_question_accuracy,
    vqa_soft_score,
    write_vqa_predictions,
)
from tests.data_files import color_image, color_index, jpeg_bytes


# --- answer normalisation ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "raw, normalised",
    [
        ("Two", "2"),  # number words up to ten become digits
        ("ten", "10"),
        ("10", "10"),
        ("eleven", "eleven"),  # ... and only those
        ("none", "0"),
        ("a dog", "dog"),  # articles go
        ("The Cat", "cat"),
        ("an apple", "apple"),
        ("a", ""),
        ("dont", "don't"),  # contractions come back
        ("isnt it", "isn't it"),
        ("yes.", "yes"),  # a period not followed by a digit goes
        ("st. louis", "st louis"),
        ("1.5", "1.5"),  # ... a decimal point stays
        ("1,000", "1000"),  # a comma inside a number: every mark is deleted
        ("1,000-2", "10002"),
        ("red, white", "red white"),  # a mark touching a space is deleted
        ("red,white", "red white"),  # ... else it becomes a space
        ("t-shirt", "t shirt"),
        ("left - right", "left right"),
        ("black & white?", "black & white"),  # '&' is no punctuation mark of the official list
        ("man's", "man's"),  # nor is the apostrophe
        ("  Yes\n", "yes"),
        ("two\tdogs", "2 dogs"),
    ],
)
def test_answers_are_normalised_as_the_official_vqa_evaluation(raw, normalised):
    assert normalize_answer(raw) == normalised


def test_period_rule_behaves_as_the_official_pattern():
    # vqaEval.py's periodStrip, verbatim: its "(?!<=\d)" is a look-ahead, so it removes periods before non-digits.
    official = re.compile(r"(?!<=\d)(\.)(?!\d)")
    for text in ["a.b", "5.", "5.5", ".5", "dr. who", "end...", "v1.2.3."]:
        expected = official.sub("", text)
        assert normalize_answer(text) == " ".join(expected.lower().split()), text


# --- soft scores, vocabulary, metrics ------------------------------------------------------------------------------
def test_soft_scores_count_answers_after_normalisation():
    assert [score_for_count(n) for n in range(6)] == [0.0, 0.3, 0.6, 0.9, 1.0, 1.0]
    answers = ["2", "two", "Two", "2.", "yes", "Yes", "the cat", "cat", "cat!", "dog"]
    assert answer_scores(answers) == {"2": 1.0, "yes": 0.6, "cat": 0.9, "dog": 0.3}


def test_vocabulary_keeps_answers_seen_min_count_times_in_first_seen_order(tmp_path):
    rows = [{"multiple_choice_answer": a} for a in ["Two"] * 5 + ["yes"] * 9 + ["2"] * 4 + ["no"] * 8 + ["Yes."]]
    assert build_answer_vocabulary(rows) == ["2", "yes"]  # "Two" + "2" = 9; "no" only 8
    assert build_answer_vocabulary({"annotations": rows}, min_count=8) == ["2", "yes", "no"]
    save_answer_vocabulary(str(tmp_path / "v" / "answers.json"), ["2", "yes"])
    assert load_answer_vocabulary(str(tmp_path / "v" / "answers.json")) == ["2", "yes"]
    (tmp_path / "dup.json").write_text('["a", "a"]')
    with pytest.raises(DataConfigError, match="twice"):
        load_answer_vocabulary(str(tmp_path / "dup.json"))
    (tmp_path / "obj.json").write_text('{"a": 1}')
    with pytest.raises(DataConfigError, match="JSON list"):
        load_answer_vocabulary(str(tmp_path / "obj.json"))
    with pytest.raises(DataConfigError, match="does not exist"):
        load_answer_vocabulary(str(tmp_path / "nowhere.json"))


def test_vqa_accuracy_is_the_official_leave_one_out_average():
    # Hand-computed: 3 of 10 annotators said "2" (spelt three ways). Leaving out one of those 3 leaves 2 matches
    # (2/3); leaving out one of the other 7 leaves 3 matches (1.0): (3 x 2/3 + 7 x 1) / 10 = 0.9, where the plain
    # min(3/3, 1) would read 1.0.
    gt = ["2", "two", "Two"] + ["3"] * 7
    assert vqa_question_accuracy("two", gt) == pytest.approx(0.9)
    # 1 match: 9 subsets keep it (1/3 each), 1 loses it: 9 x (1/3) / 10 = 0.3.
    assert vqa_question_accuracy("cat", ["cat"] + ["dog"] * 9) == pytest.approx(0.3)
    assert vqa_question_accuracy("3", gt) == 1.0 and vqa_question_accuracy("cat", gt) == 0.0
    # The averaging over 9-annotator subsets gives exactly write_vqa.py's soft scores.
    for n in range(11):
        answers = ["yes"] * n + ["no"] * (10 - n)
        assert vqa_question_accuracy("yes", answers) == pytest.approx(score_for_count(n))
    assert vqa_accuracy(["two", "cat"], [gt, ["the cat"] * 10]) == pytest.approx((0.9 + 1.0) / 2)
    with pytest.raises(ValueError, match="predictions"):
        vqa_accuracy(["a"], [])
    with pytest.raises(ValueError, match="no VQA accuracy"):
        vqa_question_accuracy("a", [])


def test_soft_score_accuracy_and_submission(tmp_path):
    dense = np.array([[0.0, 0.9, 0.3], [1.0, 0.0, 0.0]])
    assert vqa_soft_score([1, 2], dense) == pytest.approx(0.45)
    sparse = [{"labels": [1, 2], "scores": [0.9, 0.3]}, {"labels": [0], "scores": [1.0]}]
    assert vqa_soft_score([2, 0], sparse) == pytest.approx(0.65)
    assert accuracy([0, 2, 1, 1], [0, 1, 1, -100]) == pytest.approx(2 / 3)  # -100 does not count
    logits = np.array([[0.1, 2.0], [3.0, -1.0], [0.0, 1.0]])
    assert accuracy(logits, [1, 1, 1]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="2 predictions for 1 labels"):
        accuracy([0, 1], [0])
    write_vqa_predictions(str(tmp_path / "sub.json"), ["7", 8], ["yes", "2"])
    assert json.loads((tmp_path / "sub.json").read_text()) == [
        {"question_id": 7, "answer": "yes"},
        {"question_id": 8, "answer": "2"},
    ]


# --- VQAv2 json ----------------------------------------------------------------------------------------------------
VOCABULARY = ["yes", "no", "2"]


def _coco_image(root, subtype: str, image_id: int, color: int) -> None:
    folder = root / subtype
    folder.mkdir(parents=True, exist_ok=True)
    color_image(color).save(folder / f"COCO_{subtype}_{image_id:012d}.jpg", format="PNG")


def _write_vqa(tmp_path, subtype="val2014", declare=True, questions_name=None):
    """Five questions: answerable, unanswerable, no annotation, malformed, image missing."""
    images = tmp_path / "coco"
    _coco_image(images, subtype, 1, 0)
    _coco_image(images, subtype, 2, 1)
    questions = [
        {"image_id": 1, "question": "is it red?", "question_id": 10},
        {"image_id": 2, "question": "what animal?", "question_id": 20},
        {"image_id": 2, "question": "how many?", "question_id": 30},
        {"question": "no image id", "question_id": 40},
        {"image_id": 3, "question": "no image file?", "question_id": 50},
    ]
    content = {"questions": questions, **({"data_subtype": subtype} if declare else {})}
    name = questions_name or f"v2_OpenEnded_mscoco_{subtype}_questions.json"
    (tmp_path / name).write_text(json.dumps(content))
    annotations = [
        {"question_id": 10, "image_id": 1, "multiple_choice_answer": "yes",
         "answers": [{"answer": a} for a in ["yes"] * 3 + ["Yes"] * 2 + ["no"] * 2 + ["two", "2", "maybe"]]},
        {"question_id": 20, "image_id": 2, "multiple_choice_answer": "cat", "answers": [{"answer": "cat"}] * 10},
        {"question_id": 40, "image_id": 0, "multiple_choice_answer": "yes", "answers": [{"answer": "yes"}] * 10},
        {"question_id": 50, "image_id": 3, "multiple_choice_answer": "no", "answers": [{"answer": "no"}] * 10},
        {"question_id": 60, "answers": "not a list of answers"},
    ]  # fmt: skip
    (tmp_path / "annotations.json").write_text(json.dumps({"annotations": annotations}))
    return tmp_path / name, tmp_path / "annotations.json", images


def test_vqa_json_targets_unanswerable_and_bad_rows(tmp_path):
    questions, annotations, images = _write_vqa(tmp_path)
    log = SkipLog(tmp_path / "skips.jsonl")
    source = VQAv2Source.from_files(
        str(questions),
        annotations_path=str(annotations),
        image_root=str(images),
        answer_vocabulary=VOCABULARY,
        skip_log=log,
    )
    assert len(source) == 2 and source.num_unanswerable == 1  # "cat" is no class
    first = source[0]
    assert first.caption == "is it red?" and first.example_id == "10"
    assert first.target == {
        "labels": [0, 1, 2],
        "scores": [1.0, 0.6, 0.6],  # "yes" x5, "no" x2, "two" + "2"
        "answers": ["yes"] * 3 + ["Yes"] * 2 + ["no"] * 2 + ["two", "2", "maybe"],
    }
    assert color_index(decode_image(first.image, first.name)) == 0
    # no annotation for 30, no image_id in 40, malformed annotation 60
    assert log.counts() == {"bad_row": 3}
    kept = VQAv2Source.from_files(
        str(questions),
        annotations_path=str(annotations),
        image_root=str(images),
        answer_vocabulary=VOCABULARY,
        skip_log=SkipLog(),
        drop_unanswerable=False,
    )
    assert [r.example_id for r in (kept[i] for i in range(len(kept)))] == ["10", "20", "50"]
    assert kept[1].target["labels"] == [] and kept[1].target["answers"] == ["cat"] * 10

    # Through the dataset, the missing image file is skipped and counted like any other.
    builder = ExampleBuilder(synthetic_tokenizer(), ImageTransform(32, "clip"), max_seq_length=8)
    dataset = ImageTextDataset([kept], builder, log)
    examples = [dataset[i] for i in range(len(dataset))]
    assert len(examples) == 3 and log.counts()["missing_image"] >= 1
    assert all(example["pixel_values"].shape == (3, 32, 32) for example in examples)


def test_vqa_test_questions_without_annotations(tmp_path):
    # test-dev questions: no data_subtype field here, so the file name says test-dev2015 -> test2015 images
    questions, _, images = _write_vqa(tmp_path, "test2015", declare=False,
                                      questions_name="v2_OpenEnded_mscoco_test-dev2015_questions.json")  # fmt: skip
    source = task_source("vqa", "vqa_v2", str(questions), None, str(images), SkipLog())
    assert source.subtype == "test2015" and len(source) == 4  # only the malformed row is gone
    record = source[1]
    assert record.target is None and record.example_id == "20"
    assert color_index(decode_image(record.image, record.name)) == 1


def test_vqa_images_found_by_folder_search_and_in_the_subtype_folder(tmp_path):
    questions, annotations, images = _write_vqa(tmp_path, "train2014", declare=False, questions_name="q.json")
    source = VQAv2Source.from_files(
        str(questions),
        annotations_path=str(annotations),
        image_root=str(images),
        answer_vocabulary=VOCABULARY,
        skip_log=SkipLog(),
    )
    assert source.subtype == "train2014"
    assert color_index(decode_image(source[0].image, "x")) == 0
    # --image_root may be the train2014 folder itself
    source = VQAv2Source.from_files(str(questions), image_root=str(images / "train2014"), skip_log=SkipLog())
    assert color_index(decode_image(source[0].image, "x")) == 0
    with pytest.raises(DataConfigError, match="cannot tell which COCO images"):
        VQAv2Source.from_files(str(questions), image_root=str(tmp_path), skip_log=SkipLog())


def test_vqa_start_up_errors_name_the_fix(tmp_path):
    questions, annotations, images = _write_vqa(tmp_path)
    with pytest.raises(DataConfigError, match="does not exist"):
        VQAv2Source.from_files(str(tmp_path / "missing.json"), image_root=str(images), skip_log=SkipLog())
    with pytest.raises(DataConfigError, match="not a VQAv2 questions file.*annotation_file"):
        VQAv2Source.from_files(str(annotations), image_root=str(images), skip_log=SkipLog())  # the files swapped
    with pytest.raises(DataConfigError, match="not a VQAv2 annotations file"):
        VQAv2Source.from_files(
            str(questions),
            annotations_path=str(questions),
            image_root=str(images),
            answer_vocabulary=VOCABULARY,
            skip_log=SkipLog(),
        )
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(DataConfigError, match="not a VQAv2 questions file"):
        VQAv2Source.from_files(str(tmp_path / "broken.json"), image_root=str(images), skip_log=SkipLog())
    with pytest.raises(DataConfigError, match="--answer_vocabulary_file"):
        VQAv2Source.from_files(
            str(questions), annotations_path=str(annotations), image_root=str(images), skip_log=SkipLog()
        )
    with pytest.raises(DataConfigError, match="--image_root"):
        VQAv2Source.from_files(str(questions), image_root=None, skip_log=SkipLog())
    save_answer_vocabulary(str(tmp_path / "answers.json"), VOCABULARY)  # a vocabulary path works too
    source = task_source("vqav2", "auto", str(questions), str(annotations), str(images), SkipLog(),
                         answer_vocabulary=str(tmp_path / "answers.json"))  # fmt: skip
    assert source.answer_vocabulary == VOCABULARY and len(source) == 2


def _write_vqa_split(tmp_path, subtype: str, answers: list[str], first_id: int) -> tuple[str, str]:
    """Official-format questions + annotations of `subtype`: one question per answer, all 10 annotators agreeing."""
    ids = range(first_id, first_id + len(answers))
    questions = [{"image_id": i, "question": f"question {i}?", "question_id": i} for i in ids]
    annotations = [{"question_id": i, "image_id": i, "multiple_choice_answer": answer, "answer_type": "other",
                    "answers": [{"answer": answer, "answer_id": k + 1} for k in range(10)]}
                   for i, answer in zip(ids, answers, strict=True)]  # fmt: skip
    questions_path = tmp_path / f"v2_OpenEnded_mscoco_{subtype}_questions.json"
    annotations_path = tmp_path / f"v2_mscoco_{subtype}_annotations.json"
    questions_path.write_text(json.dumps({"data_subtype": subtype, "data_type": "mscoco", "questions": questions}))
    annotations_path.write_text(json.dumps({"data_subtype": subtype, "annotations": annotations}))
    return str(questions_path), str(annotations_path)


def test_vqa_trains_on_train_and_val_json_with_the_train_val_vocabulary(tmp_path):
    from bridgetower_gaudi.tasks import get_task
    from bridgetower_gaudi.tasks.finetune import task_sources
    from bridgetower_gaudi.training import run

    # At the official threshold (9): "yes" 5 + 4 and "2" ("two" 4 + "2" 5) reach it only over train + val.
    train = _write_vqa_split(tmp_path, "train2014", ["yes"] * 5 + ["no"] * 9 + ["two"] * 4, first_id=1)
    val = _write_vqa_split(tmp_path, "val2014", ["yes"] * 4 + ["2"] * 5 + ["blue"], first_id=100)
    (tmp_path / "coco").mkdir()
    task = get_task("vqa")
    flags = ["--output_dir", str(tmp_path / "out"), "--image_root", str(tmp_path / "coco"),
             "--train_file", train[0], val[0], "--train_annotation_file", train[1], val[1]]  # fmt: skip
    model_args, data_args, task_args, _ = run.parse_args(flags, task)
    vocabulary = task.answer_vocabulary(model_args, task_args, data_args)
    assert vocabulary == ["yes", "no", "2"]  # write_vqa.py's first-seen order over train then val
    assert build_answer_vocabulary(json.loads(open(train[1]).read())) == ["no"]  # train alone
    data_args.answer_vocabulary = vocabulary
    log = SkipLog()
    sources = task_sources("vqa", data_args, "train", 0, log, 32)
    assert [len(source) for source in sources] == [18, 9]  # every question; "blue" is no class (write_vqa.py)
    assert log.counts() == {} and sources[1][0].target["labels"] == [0]
    assert sources[1].subtype == "val2014" and sources[1][4].target == {"labels": [2], "scores": [1.0],
                                                                       "answers": ["2"] * 10}  # fmt: skip
    # The pairing is by position: another count of annotation files is refused with the fix.
    flags[-1:] = []
    data_args = run.parse_args(flags, task)[1]
    data_args.answer_vocabulary = vocabulary
    with pytest.raises(DataConfigError, match="one annotation file per questions file"):
        task_sources("vqa", data_args, "train", 0, SkipLog(), 32)
    # A separate validation split adds its annotations to the vocabulary after the training ones.
    flags = [*flags[:5], train[0], "--train_annotation_file", train[1], "--validation_file", val[0],
             "--validation_annotation_file", val[1]]  # fmt: skip
    model_args, data_args, task_args, _ = run.parse_args(flags, task)
    assert task.answer_vocabulary(model_args, task_args, data_args) == vocabulary


# --- SNLI-VE and NLVR2 json ----------------------------------------------------------------------------------------
def test_snli_ve_jsonl(tmp_path):
    folder = tmp_path / "flickr" / "flickr30k-images"  # the official layout: found under image_root
    folder.mkdir(parents=True)
    color_image(2).save(folder / "111.jpg", format="PNG")
    rows = [
        {"Flickr30K_ID": "111", "sentence1": "premise", "sentence2": " A dog runs. ", "gold_label": "entailment",
         "pairID": "111.jpg#0r1e"},
        {"Flickr30K_ID": "111", "sentence2": "a cat", "gold_label": "contradiction", "pairID": "p2"},
        {"Flickr30K_ID": "111", "sentence2": "maybe", "gold_label": "neutral", "pairID": "p3"},
        {"Flickr30K_ID": "111", "sentence2": "unlabelled", "gold_label": "-", "pairID": "p4"},
        {"sentence2": "no image", "gold_label": "neutral"},
    ]  # fmt: skip
    lines = [json.dumps(row) for row in rows] + ["{broken"]
    (tmp_path / "snli_ve_dev.jsonl").write_text("\n".join(lines) + "\n")
    log = SkipLog(tmp_path / "skips.jsonl")
    source = task_source("snli_ve", "auto", str(tmp_path / "snli_ve_dev.jsonl"), None, str(tmp_path / "flickr"), log)
    assert isinstance(source, SnliVeSource) and len(source) == 3
    assert [source[i].target for i in range(3)] == [2, 0, 1]
    assert source[0].caption == "A dog runs." and source[0].example_id == "111.jpg#0r1e"
    assert color_index(decode_image(source[0].image, "x")) == 2
    assert log.counts() == {"bad_row": 3}
    (tmp_path / "nlvr.json").write_text(json.dumps({"identifier": "dev-1-0-0", "sentence": "s", "label": "True"}))
    with pytest.raises(DataConfigError, match="not an SNLI-VE jsonl file"):
        SnliVeSource.from_files(str(tmp_path / "nlvr.json"), image_root=str(tmp_path), skip_log=SkipLog())


def test_snli_ve_jsonl_names_its_image_either_way_in_circulation(tmp_path):
    # The generation script writes Flickr30K_ID without an extension; the data set's loading example (and several
    # public loaders) read Flikr30kID with ".jpg". Both name the same image.
    (tmp_path / "flickr30k-images").mkdir()
    color_image(3).save(tmp_path / "flickr30k-images" / "3416050480.jpg", format="PNG")
    rows = [
        {"Flickr30K_ID": "3416050480", "sentence2": "a", "gold_label": "neutral", "pairID": "p1"},
        {"Flikr30kID": "3416050480.jpg", "sentence2": "b", "gold_label": "entailment", "pairID": "p2"},
        {"Flikr30kID": "3416050480", "sentence2": "c", "gold_label": "contradiction", "pairID": "p3"},
    ]
    (tmp_path / "snli_ve_dev.jsonl").write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    source = SnliVeSource.from_files(str(tmp_path / "snli_ve_dev.jsonl"), image_root=str(tmp_path), skip_log=SkipLog())
    records = [source[i] for i in range(3)]
    assert {record.image_id for record in records} == {"snli_ve_dev.jsonl:3416050480"}
    assert all(color_index(decode_image(record.image, "x")) == 3 for record in records)
    assert [record.target for record in records] == [1, 2, 0]
    (tmp_path / "other.jsonl").write_text(json.dumps({"image": "1.jpg", "sentence2": "a", "gold_label": "neutral"}))
    with pytest.raises(DataConfigError, match="Flickr30K_ID or Flikr30kID"):
        SnliVeSource.from_files(str(tmp_path / "other.jsonl"), image_root=str(tmp_path), skip_log=SkipLog())


def _nlvr2_images(root, folder: str, pair: str, colors: tuple[int, int]) -> None:
    (root / folder).mkdir(parents=True, exist_ok=True)
    for i, color in enumerate(colors):
        color_image(color).save(root / folder / f"{pair}-img{i}.png")


def test_nlvr2_json_pairs_folders_and_labels(tmp_path):
    root = tmp_path / "nlvr2"
    _nlvr2_images(root, "train/7", "train-10171-0", (0, 1))
    _nlvr2_images(root, "dev", "dev-850-0", (2, 3))
    train_rows = [
        {"identifier": "train-10171-0-0", "sentence": "two dogs", "label": "True", "directory": 7},
        {"identifier": "train-10171-0-1", "sentence": "no dogs", "label": "False", "directory": 7},
        {"identifier": "train-10171-0-2", "sentence": "odd label", "label": "Maybe", "directory": 7},
    ]
    (tmp_path / "train.json").write_text("\n".join(json.dumps(r) for r in train_rows) + "\n")
    log = SkipLog(tmp_path / "skips.jsonl")
    source = Nlvr2Source.from_files(str(tmp_path / "train.json"), image_root=str(root), skip_log=log)
    assert len(source) == 2 and log.counts() == {"bad_row": 1}
    first = source[0]
    assert first.target == 1 and source[1].target == 0 and first.example_id == "train-10171-0-0"
    (image_1, image_1_id), = first.extra_images  # fmt: skip
    assert color_index(decode_image(first.image, "x")) == 0 and color_index(decode_image(image_1, "x")) == 1
    assert first.image_id != image_1_id and image_1_id.endswith("train-10171-0-img1")

    # test questions without a label; images of the split straight under image_root with split_folder "."
    (tmp_path / "test.json").write_text(json.dumps({"identifier": "dev-850-0-3", "sentence": "s"}) + "\n")
    source = task_source("nlvr2", "nlvr2", str(tmp_path / "test.json"), None, str(root / "dev"), SkipLog(),
                         split_folder=".")  # fmt: skip
    assert source[0].target is None and color_index(decode_image(source[0].extra_images[0][0], "x")) == 3
    with pytest.raises(DataConfigError, match="no image folder"):
        Nlvr2Source.from_files(str(tmp_path / "test.json"), image_root=str(tmp_path), skip_log=SkipLog())
    # the official writer's layout: train images under images/train/
    _nlvr2_images(tmp_path / "official", "images/train/7", "train-10171-0", (4, 5))
    source = Nlvr2Source.from_files(
        str(tmp_path / "train.json"), image_root=str(tmp_path / "official"), skip_log=SkipLog()
    )
    assert color_index(decode_image(source[0].image, "x")) == 4


# --- the official arrow files --------------------------------------------------------------------------------------
def _write_table(path, columns: dict) -> None:
    import pyarrow as pa

    table = pa.table(columns)
    with pa.OSFile(str(path), "wb") as sink, pa.RecordBatchFileWriter(sink, table.schema) as writer:
        writer.write_table(table)


def _vqa_arrow(path, label2ans=("yes", "no", "2"), test=False) -> None:
    """write_vqa.py's layout: one row per image, per-question lists."""
    labels = [[[0, 1]], [[2], []]]
    scores = [[[1.0, 0.3]], [[0.6], []]]
    _write_table(path, {
        "image": [jpeg_bytes(color_image(0)), jpeg_bytes(color_image(1))],
        "questions": [["is it red?"], ["how many?", "which?"]],
        "answers": [[] for _ in labels] if test else [[[label2ans[i] for i in q] for q in row] for row in labels],
        "answer_labels": [[] for _ in labels] if test else labels,
        "answer_scores": [[] for _ in labels] if test else scores,
        "image_id": [1, 2],
        "question_id": [[10], [20, 21]],
        "split": ["test" if test else "val"] * 2,
    })  # fmt: skip


def test_vqa_arrow_targets_and_vocabulary_checks(tmp_path):
    _vqa_arrow(tmp_path / "vqav2_val.arrow")
    source = ArrowTaskSource.from_files(
        [str(tmp_path / "vqav2_val.arrow")], VqaArrowRows(answer_vocabulary=VOCABULARY), skip_log=SkipLog()
    )
    assert len(source) == 2 and source.rows.num_unanswerable == 1  # question 21 has no class
    assert source[0].target == {"labels": [0, 1], "scores": [1.0, 0.3], "answers": []}
    assert source[1].example_id == "20" and source[1].caption == "how many?"
    assert color_index(decode_image(source[1].image, "x")) == 1
    assert answer_vocabulary_from_arrow([str(tmp_path / "vqav2_val.arrow")]) == VOCABULARY
    with pytest.raises(DataConfigError, match="--answer_vocabulary_file"):
        ArrowTaskSource.from_files(
            [str(tmp_path / "vqav2_val.arrow")], VqaArrowRows(answer_vocabulary=None), skip_log=SkipLog()
        )
    with pytest.raises(DataConfigError, match="another answer vocabulary.*class 1 is 'no'"):
        ArrowTaskSource.from_files(
            [str(tmp_path / "vqav2_val.arrow")], VqaArrowRows(answer_vocabulary=["yes", "2", "no"]), skip_log=SkipLog()
        )
    # a class no file names cannot be rebuilt
    _write_table(tmp_path / "gap.arrow", {"answers": [[["x"]]], "answer_labels": [[[2]]]})
    with pytest.raises(DataConfigError, match=r"classes \[0, 1\]"):
        answer_vocabulary_from_arrow([str(tmp_path / "gap.arrow")])

    # test files: empty answer lists, no vocabulary needed, target None
    _vqa_arrow(tmp_path / "vqav2_test.arrow", test=True)
    source = task_source("vqa", "auto", str(tmp_path / "vqav2_test.arrow"), None, None, SkipLog())
    assert len(source) == 3 and all(source[i].target is None for i in range(3))
    assert [source[i].example_id for i in range(3)] == ["10", "20", "21"]


def test_snli_ve_and_nlvr2_arrow(tmp_path):
    _write_table(tmp_path / "snli_dev.arrow", {
        "image": [jpeg_bytes(color_image(3)), jpeg_bytes(color_image(4))],
        "sentences": [[["premise", " a dog "], ["premise", "a cat"]], [["p", "h"]]],
        "labels": [[2, 0], [7]],  # 7: no class
    })  # fmt: skip
    log = SkipLog(tmp_path / "skips.jsonl")
    source = ArrowTaskSource.from_files([str(tmp_path / "snli_dev.arrow")], SnliVeArrowRows(), skip_log=log)
    assert [(source[i].caption, source[i].target) for i in range(len(source))] == [("a dog", 2), ("a cat", 0)]
    assert color_index(decode_image(source[0].image, "x")) == 3 and log.counts() == {"bad_row": 1}

    _write_table(tmp_path / "nlvr2_dev.arrow", {
        "image_0": [jpeg_bytes(color_image(5))],
        "image_1": [jpeg_bytes(color_image(6))],
        "questions": [["left has more", "right has more", "odd"]],
        "answers": [["True", "False", "yes"]],
        "identifier": ["dev-850-0"],
    })  # fmt: skip
    source = task_source("nlvr2", "arrow", [str(tmp_path / "nlvr2_dev.arrow")], None, None, log)
    assert isinstance(source.rows, Nlvr2ArrowRows) and len(source) == 2 and log.counts() == {"bad_row": 2}
    record = source[1]
    assert record.target == 0 and record.example_id == "dev-850-0[1]"
    assert color_index(decode_image(record.image, "x")) == 5
    assert color_index(decode_image(record.extra_images[0][0], "x")) == 6

    with pytest.raises(DataConfigError, match="lacks the columns.*write_nlvr2.py"):
        ArrowTaskSource.from_files([str(tmp_path / "snli_dev.arrow")], Nlvr2ArrowRows(), skip_log=SkipLog())
    (tmp_path / "not.arrow").write_bytes(b"not arrow")
    with pytest.raises(DataConfigError, match="not an Arrow IPC file"):
        ArrowTaskSource.from_files([str(tmp_path / "not.arrow")], SnliVeArrowRows(), skip_log=SkipLog())


def test_factory_refuses_what_it_cannot_read(tmp_path):
    with pytest.raises(DataConfigError, match="choose one of"):
        task_source("gqa", "auto", "x.json")
    with pytest.raises(DataConfigError, match="cannot read nlvr2 data"):
        task_source("nlvr2", "karpathy", "x.json", image_root=str(tmp_path))
    with pytest.raises(DataConfigError, match="does not exist"):
        task_source("snli_ve", "snli_ve", str(tmp_path / "missing.jsonl"), image_root=str(tmp_path))


# --- caption data sets -----------------------------------------------------------------------------------------------
def test_an_images_repeated_captions_count_once_as_officially(tmp_path):
    """base_dataset.py drops repeats of a caption within one image (`remove_duplicate=True` for the caption data
    sets): Karpathy json and the official arrow files alike; the same caption on two images stays on both."""
    import pyarrow as pa

    from bridgetower_gaudi.data.sources import ArrowSource, KarpathySource

    images = tmp_path / "images"
    images.mkdir()
    for i in range(2):
        color_image(i).save(images / f"{i}.jpg", format="PNG")
    sentences = [["a dog", "a dog", "a brown dog", "a dog"], ["a dog", "a cat"]]
    entries = [{"filepath": "images", "filename": f"{i}.jpg", "split": "test", "cocoid": i,
                "sentences": [{"raw": raw} for raw in raws]} for i, raws in enumerate(sentences)]  # fmt: skip
    (tmp_path / "dataset_coco.json").write_text(json.dumps({"images": entries, "dataset": "coco"}))
    source = KarpathySource(str(tmp_path / "dataset_coco.json"), str(tmp_path), ["test"], SkipLog())
    read = [(source[i].image_id.split(":")[-1], source[i].caption) for i in range(len(source))]
    assert read == [("0", "a dog"), ("0", "a brown dog"), ("1", "a dog"), ("1", "a cat")]
    table = pa.table({"image": [jpeg_bytes(color_image(i)) for i in range(2)], "caption": sentences,
                      "image_id": ["0", "1"], "split": ["test", "test"]})  # fmt: skip
    with pa.OSFile(str(tmp_path / "coco_caption_karpathy_test.arrow"), "wb") as sink:
        with pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
    arrow = ArrowSource([str(tmp_path / "coco_caption_karpathy_test.arrow")], "image", "caption", SkipLog())
    assert [arrow[i].caption for i in range(len(arrow))] == ["a dog", "a brown dog", "a dog", "a cat"]


@pytest.mark.parametrize("op", ["Rotate", "ShearX", "ShearY"])
def test_vqa_augmentations_rotate_and_shear_bilinearly_as_officially(op):
    """randaugment.py warps with cv2.warpAffine, bilinear: a black / white edge becomes grey steps, where nearest
    keeps only black, white and the grey fill (128)."""
    from PIL import Image

    from bridgetower_gaudi.data.images import _RANDOM_AUGMENT_OPS

    pixels = np.zeros((64, 64, 3), dtype=np.uint8)
    pixels[:, 32:] = 255
    pixels[32:, :] = 255 - pixels[32:, :]  # a checkerboard of four squares: vertical and horizontal edges
    warped = np.asarray(_RANDOM_AUGMENT_OPS[op](Image.fromarray(pixels), 0.5, 1))
    blends = set(np.unique(warped).tolist()) - {0, 128, 255}
    assert len(blends) > 10, sorted(blends)
