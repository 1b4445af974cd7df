"""Readers of the downstream tasks' files: VQAv2, SNLI-VE and NLVR2, as released (json / jsonl + image folders) and
as the official BridgeTower arrow files (microsoft/BridgeTower src/utils/write_vqa.py, write_snli.py,
write_nlvr2.py). `task_source(...)` picks one.

Each reader's `from_files(...)` reads and checks the files and builds the source; the constructors only hold what
it found. The json readers are one class per task (`VQAv2Source`, `SnliVeSource`, `Nlvr2Source`); the arrow files
share one source, `ArrowTaskSource`, that runs the loop over files and rows and hands each row to the task's row
parser (`VqaArrowRows`, `SnliVeArrowRows`, `Nlvr2ArrowRows`).

Every reader is a random-access `MapSource` of `RawRecord`s, one per question / hypothesis / sentence:

- `caption`: the question (VQAv2), the hypothesis `sentence2` (SNLI-VE; the official dataset reads only it), the
  sentence (NLVR2).
- `image`: a file path (json readers) or the image bytes (arrow readers); NLVR2's right image is
  `extra_images[0]` = (image, image_id).
- `example_id`: VQAv2 the question_id (str of the int: the submission file's key), SNLI-VE the `pairID`, NLVR2 the
  `identifier` ("dev-850-0-1"). The arrow files keep no per-example id for SNLI-VE and NLVR2, so there it is the
  row and position: "snli_dev.arrow[12][3]", "dev-850-0[1]".
- `target`:
  - VQAv2: {"labels": [class, ...], "scores": [soft score, ...], "answers": [the annotators' raw answers]}.
    Classes index the answer vocabulary; scores are write_vqa.py's 0.3 / 0.6 / 0.9 / 1.0 for answers given by
    1 / 2 / 3 / >=4 annotators, counted after normalisation (`evaluation.vqa.answer_scores`); answers outside the
    vocabulary get no class. "answers" is the 10 raw strings for the VQA accuracy (`evaluation.vqa.vqa_accuracy`);
    the arrow files do not keep them, so there it is []. Test questions (no annotations): None.
  - SNLI-VE: class index, contradiction 0, neutral 1, entailment 2 (write_snli.py `label2id`).
  - NLVR2: 1 when the sentence is "True" of the image pair, else 0 (nlvr2_dataset.py: `answers == "True"`);
    None where the file has no label.

Rows that cannot be read are logged to the SkipLog as `BadRecord("bad_row", ...)` at construction; a missing or
broken image surfaces later as the dataset's usual `missing_image` / `corrupt_image` skip. Problems with the source
as a whole (missing file, wrong kind of file, no image folder, a vocabulary that does not fit) raise
`DataConfigError` with the fix.
"""

from __future__ import annotations

import json
import os
import re
import sys
from typing import Any, ClassVar, NamedTuple

from ..evaluation.vqa import answer_scores, load_answer_vocabulary
from .records import BadRecord, RawRecord, SkipLog
from .sources import DataConfigError, MapSource, json_lines, require_file

# write_snli.py `label2id`.
SNLI_VE_LABELS = {"contradiction": 0, "neutral": 1, "entailment": 2}
# The official COCO folders / file-name infixes by VQAv2 `data_subtype`: test-dev questions are on test2015 images.
VQA_IMAGE_SUBTYPES = {"train2014": "train2014", "val2014": "val2014", "test2015": "test2015",
                      "test-dev2015": "test2015"}  # fmt: skip
_SUBTYPE_IN_NAME = re.compile(r"(train2014|val2014|test-dev2015|test2015)")


class _Entry(NamedTuple):
    """One record before its images are loaded (built with keywords; a tuple, as `MapSource` entries are, so the
    data set can read its image_id at [2]). `image` and the images of `extra_images` are references that the
    source's `load_image` resolves (a path, or a (file, row, column) cell of an arrow table); `target` is in the
    source's stored form (see `_target`)."""

    image: Any
    caption: str
    image_id: str
    name: str
    target: Any = None
    extra_images: tuple = ()
    example_id: str | None = None


class TaskSource(MapSource):
    """The shared random-access part: entries with targets and further images."""

    def __init__(self, *, name: str, entries: list[_Entry]):
        self.name, self.entries = name, entries

    def __getitem__(self, index: int) -> RawRecord:
        entry = self.entries[index]
        extra = tuple((self.load_image(image, entry.name), image_id) for image, image_id in entry.extra_images)
        image = self.load_image(entry.image, entry.name)
        target = self._target(entry.target)
        return RawRecord(image, entry.caption, entry.image_id, entry.name, target, extra, entry.example_id)

    def _target(self, stored):
        """The record's target from its stored form (the same unless a reader stores it compactly)."""
        return stored


def _require_image_root(image_root: str | None, path: str, layout: str) -> str:
    if not image_root:
        raise DataConfigError(f"{path} names its images by id: pass --image_root (the folder holding {layout}).")
    if not os.path.isdir(image_root):
        raise DataConfigError(f"--image_root {image_root!r} is not a folder: check the path.")
    return image_root


def _load_json(path: str, flag: str, key: str, what: str) -> list:
    """`json.load(path)[key]`, with a DataConfigError naming `flag` when the file is not what it should be."""
    require_file(path, flag)
    try:
        with open(path) as f:
            rows = json.load(f)[key]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as error:
        raise DataConfigError(
            f"{flag} {path} is not {what} (a JSON object with a {key!r} list; {type(error).__name__}: {error})."
        ) from None
    if not isinstance(rows, list):
        raise DataConfigError(f"{flag} {path}: {key!r} is not a list: expected {what}.")
    return rows


def _check_first_rows(rows: list[tuple[int, dict]], path: str, fields: tuple[str, ...], what: str) -> None:
    """A file whose first rows all lack the fields is the wrong file, not a file with bad rows."""
    head = [row for _, row in rows[:100]]
    if head and all(any(field not in row for field in fields) for row in head):
        raise DataConfigError(
            f"{path} is not {what}: its records lack {list(fields)} (first record's fields: {sorted(head[0])})."
        )


def resolve_vocabulary(answer_vocabulary: list[str] | str | None) -> list[str] | None:
    """A vocabulary given as a list, as the path of a JSON list, or None."""
    if isinstance(answer_vocabulary, (str, os.PathLike)):
        return load_answer_vocabulary(str(answer_vocabulary))
    return None if answer_vocabulary is None else list(answer_vocabulary)


# --- the arrow files' row parsers ----------------------------------------------------------------------------------
class ArrowRows:
    """How one task's official arrow files are laid out (`columns`, of which `image_columns` are read only when an
    image is loaded; `writer`: the official script) and how a row becomes entries (`parse`, which raises
    BadRecord for a row it cannot read and logs a question it cannot read). `finish_file` checks what a whole file
    says; `target` turns a stored target into the record's."""

    columns: ClassVar[tuple[str, ...]]
    image_columns: ClassVar[tuple[str, ...]]
    writer: ClassVar[str]

    def parse(self, cells: dict, file_number: int, row: int, base: str, skip_log: SkipLog) -> list[_Entry]:
        raise NotImplementedError

    def finish_file(self, path: str) -> None:
        """Called after each file's rows."""

    @staticmethod
    def target(stored):
        return stored


# --- VQAv2 -----------------------------------------------------------------------------------------------------------
class VQAv2Source(TaskSource):
    """The official VQAv2 files: questions (`v2_OpenEnded_mscoco_<subtype>_questions.json`: {"data_subtype",
    "questions": [{"image_id", "question", "question_id"}]}) and, except for test, annotations
    (`v2_mscoco_<subtype>_annotations.json`: {"annotations": [{"question_id", "multiple_choice_answer", "answers":
    [{"answer"}, x10]}]}); images under `image_root` by the COCO names `<subtype>/COCO_<subtype>_%012d.jpg`
    (`image_root` may also be the <subtype> folder itself).

    The COCO subtype comes from the questions file's `data_subtype`, else from its file name, else from which of
    train2014/ val2014/ test2015/ under `image_root` holds the first question's image. Questions without any answer
    in `answer_vocabulary` are dropped when `drop_unanswerable` (as write_vqa.py drops them from train and val;
    keep them to score a validation set honestly), and counted in `num_unanswerable`."""

    def __init__(self, *, name: str, entries: list[_Entry], subtype: str, image_folder: str,
                 answer_vocabulary: list[str] | None, num_unanswerable: int):  # fmt: skip
        super().__init__(name=name, entries=entries)
        self.subtype, self.image_folder = subtype, image_folder
        self.answer_vocabulary, self.num_unanswerable = answer_vocabulary, num_unanswerable

    @classmethod
    def from_files(
        cls,
        questions_path: str,
        *,
        annotations_path: str | None = None,
        image_root: str | None,
        answer_vocabulary: list[str] | str | None = None,
        skip_log: SkipLog,
        drop_unanswerable: bool = True,
    ) -> VQAv2Source:
        name = os.path.basename(questions_path)
        require_file(questions_path, "VQAv2 questions file")
        try:
            with open(questions_path) as f:
                content = json.load(f)
            questions = content["questions"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as error:
            raise DataConfigError(
                f"{questions_path} is not a VQAv2 questions file (a JSON object with a 'questions' list, e.g. "
                f"v2_OpenEnded_mscoco_val2014_questions.json; {type(error).__name__}: {error}). The annotations go "
                "in --train_annotation_file / --validation_annotation_file."
            ) from None
        if not isinstance(questions, list):
            raise DataConfigError(f"{questions_path}: 'questions' is not a list: expected a VQAv2 questions file.")
        root = _require_image_root(image_root, questions_path, "the COCO train2014/ val2014/ test2015/ folders")
        subtype = cls._subtype(content, questions_path, questions, root)
        folder = os.path.join(root, subtype)
        image_folder = folder if os.path.isdir(folder) else root  # or image_root is the subtype folder itself
        num_unanswerable = 0
        vocabulary = resolve_vocabulary(answer_vocabulary)

        by_question = None
        if annotations_path:
            if vocabulary is None:
                raise DataConfigError(
                    f"VQAv2 annotations {annotations_path}: the answer vocabulary is needed to turn answers into "
                    "classes: pass --answer_vocabulary_file (a JSON list; evaluation.vqa.build_answer_vocabulary "
                    "builds the official one from the train + val annotations)."
                )
            by_question = cls._annotations(annotations_path, skip_log)
        classes = {answer: index for index, answer in enumerate(vocabulary or [])}

        entries = []
        for number, question in enumerate(questions):
            row_name = f"{name}:questions[{number}]"
            try:
                image_number, text, question_id = question["image_id"], question["question"], question["question_id"]
                file = os.path.join(image_folder, f"COCO_{subtype}_{int(image_number):012d}.jpg")
                target = None
                if by_question is not None:
                    if question_id not in by_question:
                        raise BadRecord("bad_row", row_name, f"question_id {question_id} has no annotation")
                    answers = by_question[question_id]
                    scores = answer_scores(answers)
                    labelled = [(classes[answer], score) for answer, score in scores.items() if answer in classes]
                    if not labelled and drop_unanswerable:
                        num_unanswerable += 1
                        continue
                    # stored compactly (tuples, interned strings): 440k training questions stay small in memory
                    target = (tuple(label for label, _ in labelled), tuple(score for _, score in labelled), answers)
                entries.append(
                    _Entry(
                        image=file,
                        caption=text,
                        image_id=f"{name}:{image_number}",
                        name=f"{name}:{question_id}",
                        target=target,
                        example_id=str(question_id),
                    )
                )
            except BadRecord as bad:
                skip_log.record(bad)
            except (KeyError, TypeError, ValueError) as error:
                skip_log.record(BadRecord("bad_row", row_name, f"{type(error).__name__}: {error}"))
        return cls(name=name, entries=entries, subtype=subtype, image_folder=image_folder,
                   answer_vocabulary=vocabulary, num_unanswerable=num_unanswerable)  # fmt: skip

    def _target(self, stored):
        if stored is None:
            return None
        labels, scores, answers = stored
        return {"labels": list(labels), "scores": list(scores), "answers": list(answers)}

    @staticmethod
    def _annotations(path: str, skip_log: SkipLog) -> dict:
        """{question_id: (the raw annotator answers)}."""
        rows = _load_json(path, "VQAv2 annotations file", "annotations", "a VQAv2 annotations file")
        base = os.path.basename(path)
        by_question = {}
        for number, row in enumerate(rows):
            try:
                answers = tuple(sys.intern(str(answer["answer"])) for answer in row["answers"])
                if not answers:
                    raise ValueError("no answers")
                by_question[row["question_id"]] = answers
            except (KeyError, TypeError, ValueError) as error:
                skip_log.record(
                    BadRecord("bad_row", f"{base}:annotations[{number}]", f"{type(error).__name__}: {error}")
                )
        return by_question

    @staticmethod
    def _subtype(content: dict, path: str, questions: list, root: str) -> str:
        declared = content.get("data_subtype") if isinstance(content, dict) else None
        if declared in VQA_IMAGE_SUBTYPES:
            return VQA_IMAGE_SUBTYPES[declared]
        named = _SUBTYPE_IN_NAME.search(os.path.basename(path))
        if named:
            return VQA_IMAGE_SUBTYPES[named.group(1)]
        # Neither: look for the first question's image in each official folder.
        try:
            image_number = int(questions[0]["image_id"])
        except (IndexError, KeyError, TypeError, ValueError):
            image_number = None
        for subtype in ("train2014", "val2014", "test2015"):
            name = f"COCO_{subtype}_{image_number:012d}.jpg" if image_number is not None else None
            if name and any(os.path.exists(os.path.join(f, name)) for f in (os.path.join(root, subtype), root)):
                return subtype
        raise DataConfigError(
            f"{path}: cannot tell which COCO images its questions are on (no 'data_subtype' field, no train2014 / "
            f"val2014 / test2015 in the file name, and the first question's image is in none of {root}/train2014, "
            f"val2014, test2015): keep the official file name, or point --image_root at the COCO folder."
        )


class VqaArrowRows(ArrowRows):
    """The official VQAv2 arrow files (write_vqa.py: `vqav2_{train,val,test}[_fix].arrow`, one row per image:
    image, questions, answers, answer_labels, answer_scores, image_id, question_id, split; per-question lists).

    The labels index the vocabulary the writer built (`label2ans`), which the files do not store; so labelled files
    need `answer_vocabulary` in the writer's order: it is checked against the answers each file names for each
    label. `answer_vocabulary_from_arrow([train, val files])` rebuilds it as the official datamodule does. Test
    files carry no labels: their questions have target None and need no vocabulary. Questions without a class are
    dropped when `drop_unanswerable`, and counted in `num_unanswerable`."""

    columns: ClassVar[tuple[str, ...]] = ("image", "questions", "answers", "answer_labels", "answer_scores",
                                          "image_id", "question_id")  # fmt: skip
    image_columns: ClassVar[tuple[str, ...]] = ("image",)
    writer: ClassVar[str] = "write_vqa.py"

    def __init__(self, *, answer_vocabulary: list[str] | str | None = None, drop_unanswerable: bool = True):
        self.answer_vocabulary = resolve_vocabulary(answer_vocabulary)
        self.drop_unanswerable = drop_unanswerable
        self.num_unanswerable = 0
        self._seen: dict[int, str] = {}  # label -> the answer the current file names for it

    def parse(self, cells: dict, file_number: int, row: int, base: str, skip_log: SkipLog) -> list[_Entry]:
        questions, question_ids = cells["questions"], cells["question_id"]
        labels, scores, answers = cells["answer_labels"], cells["answer_scores"], cells["answers"]
        image_id = f"{base}:{cells['image_id']}"
        if not isinstance(questions, list) or not isinstance(question_ids, list):
            raise BadRecord("bad_row", f"{base}[{row}]", "questions / question_id are not lists")
        if len(question_ids) != len(questions):
            raise BadRecord("bad_row", f"{base}[{row}]", "questions and question_id differ in length")
        labelled = bool(labels)  # test files: empty answer lists (write_vqa.py `list(list())`)
        if labelled and not (len(labels) == len(scores) == len(answers) == len(questions)):
            raise BadRecord("bad_row", f"{base}[{row}]", "per-question answer lists differ in length")
        entries = []
        for k, (question, question_id) in enumerate(zip(questions, question_ids, strict=True)):
            name = f"{base}[{row}][{k}]"
            target = None
            if labelled:
                if not all(isinstance(c[k], list) for c in (labels, scores, answers)) or not (
                    len(labels[k]) == len(scores[k]) == len(answers[k])
                ):
                    skip_log.record(BadRecord("bad_row", name, "labels, scores and answers do not pair up"))
                    continue
                self._seen.update(zip(labels[k], answers[k], strict=True))
                if not labels[k] and self.drop_unanswerable:
                    self.num_unanswerable += 1
                    continue
                target = (tuple(labels[k]), tuple(scores[k]))
            entries.append(_Entry(image=(file_number, row, "image"), caption=question, image_id=image_id, name=name,
                                  target=target, example_id=str(question_id)))  # fmt: skip
        return entries

    def finish_file(self, path: str) -> None:
        seen, self._seen = self._seen, {}
        if not seen:
            return
        if self.answer_vocabulary is None:
            raise DataConfigError(
                f"{path}: the official VQAv2 arrow files keep answer class numbers but not the vocabulary they "
                "number (write_vqa.py's label2ans): pass --answer_vocabulary_file with that vocabulary in the "
                "writer's order (evaluation.vqa.save_answer_vocabulary(path, answer_vocabulary_from_arrow([the "
                "train and val arrow files])) writes it, as the official datamodule rebuilds it)."
            )
        wrong = [
            (label, answer)
            for label, answer in sorted(seen.items())
            if label >= len(self.answer_vocabulary) or self.answer_vocabulary[label] != answer
        ]
        if wrong:
            label, answer = wrong[0]
            given = self.answer_vocabulary[label] if label < len(self.answer_vocabulary) else "(beyond its end)"
            raise DataConfigError(
                f"{path} was written with another answer vocabulary than the one given ({len(wrong)} classes "
                f"differ; class {label} is {answer!r} in the file, {given!r} in the vocabulary): pass the vocabulary "
                "in the writer's order (answer_vocabulary_from_arrow([the train and val arrow files]) rebuilds it)."
            )

    @staticmethod
    def target(stored):
        if stored is None:
            return None
        labels, scores = stored
        return {"labels": list(labels), "scores": list(scores), "answers": []}  # the raw answers are not kept


def answer_vocabulary_from_arrow(paths: list[str]) -> list[str]:
    """The answer vocabulary official VQAv2 arrow files were written with, from the (answer, label) pairs they hold,
    as the official VQAv2DataModule rebuilds it (from the train and val files together: a class that appears in
    neither cannot be named). Raises DataConfigError when a class is missing or named twice; a class numbered
    above every label of the files cannot be detected, so pass train and val."""
    named: dict[int, str] = {}
    for path in paths:
        table = _read_arrow(path, ("answers", "answer_labels"), "write_vqa.py")
        for answers, labels in zip(
            table.column("answers").to_pylist(), table.column("answer_labels").to_pylist(), strict=True
        ):
            for question_answers, question_labels in zip(answers or [], labels or [], strict=False):
                for answer, label in zip(question_answers, question_labels, strict=True):
                    if named.setdefault(label, answer) != answer:
                        raise DataConfigError(f"{path}: class {label} is both {named[label]!r} and {answer!r}.")
    if not named:
        raise DataConfigError(f"{paths}: no answer labels (test files?): pass the train and val arrow files.")
    missing = sorted(set(range(max(named) + 1)) - set(named))
    if missing:
        raise DataConfigError(
            f"{paths}: classes {missing[:10]} ({len(missing)} in all) appear in none of the files: pass the train "
            "and val arrow files together, or --answer_vocabulary_file."
        )
    return [named[label] for label in range(len(named))]


# --- SNLI-VE ---------------------------------------------------------------------------------------------------------
# The image field of SNLI-VE jsonl files: the generation script's, and the spelling its loading example reads.
SNLI_VE_IMAGE_FIELDS = ("Flickr30K_ID", "Flikr30kID")


def snli_ve_image_number(row: dict, name: str) -> str:
    """The Flickr30K image number of an SNLI-VE row ("3416050480"), from either image field, ".jpg" or not."""
    for key in SNLI_VE_IMAGE_FIELDS:
        if key in row:
            value = str(row[key]).strip()
            return value[: -len(".jpg")] if value.lower().endswith(".jpg") else value
    raise BadRecord("bad_row", name, f"no image field ({' or '.join(SNLI_VE_IMAGE_FIELDS)})")


class SnliVeSource(TaskSource):
    """SNLI-VE jsonl (`snli_ve_{train,dev,test}.jsonl`: the image, sentence2 (the hypothesis), gold_label,
    pairID); images `image_root/<id>.jpg` (or under image_root/flickr30k-images/, the official layout).

    The image is named as the files in circulation name it: `Flickr30K_ID` ("3416050480", the generation script's
    field, no extension) or `Flikr30kID` ("3416050480.jpg", the field the data set's own loading example and
    several public loaders read)."""

    def __init__(self, *, name: str, entries: list[_Entry], image_folder: str):
        super().__init__(name=name, entries=entries)
        self.image_folder = image_folder

    @classmethod
    def from_files(cls, path: str, *, image_root: str | None, skip_log: SkipLog) -> SnliVeSource:
        require_file(path, "SNLI-VE file")
        name = os.path.basename(path)
        root = _require_image_root(image_root, path, "the Flickr30K images, <Flickr30K_ID>.jpg")
        official = os.path.join(root, "flickr30k-images")  # write_snli.py's layout
        image_folder = official if os.path.isdir(official) else root
        rows = list(json_lines(path, name, skip_log))
        _check_first_rows(rows, path, ("sentence2", "gold_label"), "an SNLI-VE jsonl file")
        head = [row for _, row in rows[:100]]
        if head and not any(key in row for row in head for key in SNLI_VE_IMAGE_FIELDS):
            raise DataConfigError(
                f"{path} is not an SNLI-VE jsonl file: its records name no image ({' or '.join(SNLI_VE_IMAGE_FIELDS)}"
                f"; first record's fields: {sorted(head[0])})."
            )
        entries = []
        for line, row in rows:
            row_name = f"{name}:{line}"
            try:
                image_number = snli_ve_image_number(row, row_name)
                hypothesis, label = row["sentence2"], row["gold_label"]
                if label not in SNLI_VE_LABELS:
                    raise BadRecord("bad_row", row_name, f"gold_label {label!r} is none of {sorted(SNLI_VE_LABELS)}")
                if not isinstance(hypothesis, str):
                    raise BadRecord("bad_row", row_name, "sentence2 is not text")
                # the official dataset strips the hypothesis (base_dataset.py, "snli" texts: t[1].strip())
                entries.append(
                    _Entry(
                        image=os.path.join(image_folder, f"{image_number}.jpg"),
                        caption=hypothesis.strip(),
                        image_id=f"{name}:{image_number}",
                        name=row_name,
                        target=SNLI_VE_LABELS[label],
                        example_id=str(row.get("pairID", row_name)),
                    )
                )
            except BadRecord as bad:
                skip_log.record(bad)
            except (KeyError, TypeError) as error:
                skip_log.record(BadRecord("bad_row", row_name, f"missing field {error}"))
        return cls(name=name, entries=entries, image_folder=image_folder)


class SnliVeArrowRows(ArrowRows):
    """The official SNLI-VE arrow files (write_snli.py: `snli_{train,dev,test}.arrow`, one row per Flickr30K image:
    image, sentences ([premise, hypothesis] pairs), labels (class indices)). The hypothesis is the text, as
    the official dataset reads it."""

    columns: ClassVar[tuple[str, ...]] = ("image", "sentences", "labels")
    image_columns: ClassVar[tuple[str, ...]] = ("image",)
    writer: ClassVar[str] = "write_snli.py"

    def parse(self, cells: dict, file_number: int, row: int, base: str, skip_log: SkipLog) -> list[_Entry]:
        pairs, labels = cells["sentences"], cells["labels"]
        if not isinstance(pairs, list) or not isinstance(labels, list) or len(pairs) != len(labels):
            raise BadRecord("bad_row", f"{base}[{row}]", "sentences and labels do not pair up")
        entries = []
        for k, (pair, label) in enumerate(zip(pairs, labels, strict=True)):
            name = f"{base}[{row}][{k}]"
            if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[1], str)):
                skip_log.record(BadRecord("bad_row", name, "not a [premise, hypothesis] pair"))
            elif label not in SNLI_VE_LABELS.values():
                skip_log.record(BadRecord("bad_row", name, f"label {label!r} is not 0, 1 or 2"))
            else:
                entries.append(
                    _Entry(
                        image=(file_number, row, "image"),
                        caption=pair[1].strip(),
                        image_id=f"{base}:{row}",
                        name=name,
                        target=int(label),
                        example_id=name,
                    )
                )
        return entries


# --- NLVR2 -----------------------------------------------------------------------------------------------------------
def nlvr2_label(value, name: str) -> int | None:
    """ "True" -> 1, "False" -> 0 (booleans too); None when absent."""
    if value is None:
        return None
    if value in ("True", True):
        return 1
    if value in ("False", False):
        return 0
    raise BadRecord("bad_row", name, f"label {value!r} is neither 'True' nor 'False'")


class Nlvr2Source(TaskSource):
    """NLVR2 json lines (`train.json`, `dev.json`, `test1.json`: identifier "train-10171-0-0", sentence, label
    "True"/"False", directory (train only)). The pair's images are `<identifier minus its last -N>-img0.png` and
    `-img1.png` in `image_root/<split>/` (split: the identifier's first part, or `split_folder`), train images in
    the numbered subfolder `directory` (write_nlvr2.py; its train images sit under images/train/, also found).
    `split_folder="."` reads images directly from `image_root`."""

    @classmethod
    def from_files(cls, path: str, *, image_root: str | None, skip_log: SkipLog,
                   split_folder: str | None = None) -> Nlvr2Source:  # fmt: skip
        require_file(path, "NLVR2 file")
        name = os.path.basename(path)
        root = _require_image_root(image_root, path, "the NLVR2 train/ dev/ test1/ image folders")
        rows = list(json_lines(path, name, skip_log))
        _check_first_rows(rows, path, ("identifier", "sentence"), "an NLVR2 json-lines file")
        folders: dict[str, str] = {}
        entries = []
        for line, row in rows:
            row_name = f"{name}:{line}"
            try:
                identifier, sentence = row["identifier"], row["sentence"]
                if not isinstance(sentence, str) or not isinstance(identifier, str) or "-" not in identifier:
                    raise BadRecord("bad_row", row_name, "identifier / sentence are not text")
                label = nlvr2_label(row.get("label"), row_name)
                split = split_folder if split_folder is not None else identifier.split("-")[0]
                if split not in folders:
                    folders[split] = cls._split_folder(root, split, path)
                folder = folders[split]
                if identifier.startswith("train") and "directory" in row:  # write_nlvr2.py: train only
                    folder = os.path.join(folder, str(row["directory"]))
                pair = identifier.rsplit("-", 1)[0]  # "train-10171-0-0" -> "train-10171-0"
                images = [(os.path.join(folder, f"{pair}-img{i}.png"), f"{name}:{pair}-img{i}") for i in (0, 1)]
                entries.append(_Entry(image=images[0][0], caption=sentence, image_id=images[0][1], name=row_name,
                                      target=label, extra_images=(images[1],), example_id=identifier))  # fmt: skip
            except BadRecord as bad:
                skip_log.record(bad)
            except (KeyError, TypeError) as error:
                skip_log.record(BadRecord("bad_row", row_name, f"missing field {error}"))
        return cls(name=name, entries=entries)

    @staticmethod
    def _split_folder(root: str, split: str, path: str) -> str:
        for folder in (os.path.join(root, split), os.path.join(root, "images", split)):
            if os.path.isdir(folder):
                return folder
        raise DataConfigError(
            f"{path}: no image folder {os.path.join(root, split)}: --image_root must hold the NLVR2 split folders "
            "(train/<directory>/, dev/, test1/ as released), or pass the folder of this file's images as "
            "split_folder ('.' for --image_root itself)."
        )


class Nlvr2ArrowRows(ArrowRows):
    """The official NLVR2 arrow files (write_nlvr2.py: `nlvr2_{train,dev,test1,...}.arrow`, one row per image
    pair: image_0, image_1, questions (sentences), answers ("True"/"False"), identifier (the pair's))."""

    columns: ClassVar[tuple[str, ...]] = ("image_0", "image_1", "questions", "answers", "identifier")
    image_columns: ClassVar[tuple[str, ...]] = ("image_0", "image_1")
    writer: ClassVar[str] = "write_nlvr2.py"

    def parse(self, cells: dict, file_number: int, row: int, base: str, skip_log: SkipLog) -> list[_Entry]:
        sentences, answers, pair = cells["questions"], cells["answers"], cells["identifier"]
        if not isinstance(sentences, list) or not isinstance(answers, list) or len(sentences) != len(answers):
            raise BadRecord("bad_row", f"{base}[{row}]", "questions and answers do not pair up")
        images = [((file_number, row, f"image_{i}"), f"{base}:{pair}-img{i}") for i in (0, 1)]
        entries = []
        for k, (sentence, answer) in enumerate(zip(sentences, answers, strict=True)):
            name = f"{base}[{row}][{k}]"
            try:
                label = nlvr2_label(answer, name)
                if not isinstance(sentence, str):
                    raise BadRecord("bad_row", name, "the sentence is not text")
            except BadRecord as bad:
                skip_log.record(bad)
                continue
            entries.append(_Entry(image=images[0][0], caption=sentence, image_id=images[0][1], name=name,
                                  target=label, extra_images=(images[1],), example_id=f"{pair}[{k}]"))  # fmt: skip
        return entries


# --- the arrow source ------------------------------------------------------------------------------------------------
class ArrowTaskSource(TaskSource):
    """The official arrow files of one task (several files form one source), memory-mapped: `rows` (the task's row
    parser: VqaArrowRows, SnliVeArrowRows or Nlvr2ArrowRows) says which columns the files hold and turns each row
    into entries; a row it refuses is logged as `bad_row`."""

    def __init__(self, *, name: str, entries: list[_Entry], tables: list, rows):
        super().__init__(name=name, entries=entries)
        self.tables, self.rows = tables, rows

    @classmethod
    def from_files(cls, paths: list[str], rows, *, skip_log: SkipLog) -> ArrowTaskSource:
        name = _arrow_name(paths)
        tables, entries = [], []
        for file_number, path in enumerate(paths):
            table = _read_arrow(path, rows.columns, rows.writer)
            tables.append(table)
            base = os.path.basename(path)
            read = [column for column in rows.columns if column not in rows.image_columns]  # images: when loaded
            values = {column: table.column(column).to_pylist() for column in read}
            for row in range(table.num_rows):
                try:
                    entries += rows.parse({c: values[c][row] for c in read}, file_number, row, base, skip_log)
                except BadRecord as bad:
                    skip_log.record(bad)
            rows.finish_file(path)
        return cls(name=name, entries=entries, tables=tables, rows=rows)

    def _target(self, stored):
        return self.rows.target(stored)

    def load_image(self, image, name):
        return _arrow_cell(self.tables, image)


# --- arrow helpers ---------------------------------------------------------------------------------------------------
def _arrow_name(paths: list[str]) -> str:
    if not paths:
        raise DataConfigError("no arrow files given.")
    return os.path.basename(paths[0]) + (f"+{len(paths) - 1}" if len(paths) > 1 else "")


def _read_arrow(path: str, columns: tuple[str, ...], writer: str):
    """The memory-mapped table of an arrow IPC file holding `columns` (as the official `writer` writes them)."""
    import pyarrow as pa

    require_file(path, "arrow file")
    try:
        table = pa.ipc.RecordBatchFileReader(pa.memory_map(path, "r")).read_all()
    except (pa.ArrowInvalid, OSError) as error:
        raise DataConfigError(f"{path} is not an Arrow IPC file ({error}).") from None
    missing = [column for column in columns if column not in table.column_names]
    if missing:
        raise DataConfigError(
            f"{path} lacks the columns {missing} of the official {writer} layout (its columns: "
            f"{table.column_names}): is it another task's file?"
        )
    return table


def _arrow_cell(tables: list, reference: tuple[int, int, str]):
    file_number, row, column = reference
    return tables[file_number].column(column)[row].as_py()


# --- the factory the task layer calls --------------------------------------------------------------------------------
TASK_ALIASES = {
    "vqa": "vqa", "vqav2": "vqa", "vqa_v2": "vqa",
    "snli_ve": "snli_ve", "snli-ve": "snli_ve", "snli": "snli_ve", "ve": "snli_ve",
    "nlvr2": "nlvr2",
}  # fmt: skip
# --dataset_format values meaning "the task's released json / jsonl files".
JSON_FORMATS = {"vqa": "vqa_v2", "snli_ve": "snli_ve", "nlvr2": "nlvr2"}


def task_source(
    task: str,
    fmt: str,
    path: str | list[str],
    annotation_path: str | None = None,
    image_root: str | None = None,
    skip_log: SkipLog | None = None,
    *,
    answer_vocabulary: list[str] | str | None = None,
    drop_unanswerable: bool = True,
    split_folder: str | None = None,
) -> TaskSource:
    """The reader of one file (or, for arrow, one or more files) of a downstream task.

    - `task`: "vqa", "snli_ve" or "nlvr2" (aliases: vqav2, vqa_v2, snli, ve).
    - `fmt`: "auto" (".arrow" files are arrow, everything else the task's json), "arrow", "json"/"jsonl", or the
      task's own --dataset_format name ("vqa_v2", "snli_ve", "nlvr2": the released json files).
    - `path`: VQAv2 the questions json; SNLI-VE the jsonl; NLVR2 the json lines; arrow: file(s).
    - `annotation_path`: VQAv2 json only: the annotations (None: test questions, target None); ignored otherwise.
    - `image_root`: the json readers' image folder (arrow files hold their images).
    - `answer_vocabulary`: VQAv2: the classes, a list or the path of a JSON list (needed with annotations and for
      labelled arrow files). `drop_unanswerable`: VQAv2. `split_folder`: NLVR2 json.
    """
    skip_log = skip_log or SkipLog()
    key = TASK_ALIASES.get(task.lower())
    if key is None:
        raise DataConfigError(f"task {task!r} has no readers here: choose one of {sorted(set(TASK_ALIASES.values()))}.")
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    paths = [str(p) for p in paths]
    if fmt == "auto":
        fmt = "arrow" if all(p.lower().endswith(".arrow") for p in paths) else "json"
    if fmt == "arrow":
        rows = {
            "vqa": lambda: VqaArrowRows(answer_vocabulary=answer_vocabulary, drop_unanswerable=drop_unanswerable),
            "snli_ve": SnliVeArrowRows,
            "nlvr2": Nlvr2ArrowRows,
        }[key]()
        return ArrowTaskSource.from_files(paths, rows, skip_log=skip_log)
    if fmt not in ("json", "jsonl", JSON_FORMATS[key]):
        raise DataConfigError(
            f"--dataset_format {fmt!r} cannot read {key} data: use auto, arrow or {JSON_FORMATS[key]} (the released "
            "json files)."
        )
    if len(paths) != 1:
        raise DataConfigError(f"{key} json readers take one file at a time, not {len(paths)}.")
    if key == "vqa":
        return VQAv2Source.from_files(paths[0], annotations_path=annotation_path, image_root=image_root,
                                      answer_vocabulary=answer_vocabulary, skip_log=skip_log,
                                      drop_unanswerable=drop_unanswerable)  # fmt: skip
    if key == "snli_ve":
        return SnliVeSource.from_files(paths[0], image_root=image_root, skip_log=skip_log)
    return Nlvr2Source.from_files(paths[0], image_root=image_root, skip_log=skip_log, split_folder=split_folder)
