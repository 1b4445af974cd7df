"""VQAv2 answers and metrics (and plain accuracy for SNLI-VE / NLVR2), as pure functions.

- `normalize_answer`: the official VQA evaluation's answer normalisation (VQA/PythonEvaluationTools/vqaEvaluation/
  vqaEval.py, `processPunctuation` then `processDigitArticle`; microsoft/BridgeTower keeps the same tables in
  src/utils/glossary.py, `normalize_word`).
- `answer_scores`: the soft target of one question from its 10 annotator answers (src/utils/write_vqa.py,
  `get_score` over the counts of the normalised answers, as the `_fix` files BridgeTower trains on).
- `build_answer_vocabulary`: the answer classes (write_vqa.py: normalised `multiple_choice_answer`s of train + val
  seen at least 9 times, in order of first appearance: 3,129 classes).
- `vqa_accuracy`: the official VQA accuracy from the annotators' answers (leave-one-out average);
  `vqa_soft_score`: the official training-time metric (src/gadgets/my_metrics.py `VQAScore`: the soft score of the
  predicted class), which is all an arrow file allows.
- `accuracy`: SNLI-VE / NLVR2 (my_metrics.py `Accuracy`: argmax == label, labels -100 ignored).
"""

from __future__ import annotations

import collections
import functools
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from ..data.sources import DataConfigError

# --- the official normalisation tables (vqaEval.py `contractions`, `manualMap`, `articles`, `punct`) ---------------
# Keys with capitals ("Im", "Ive", "Id've") can never match (words are lower-cased first); kept as the official has.
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't", "dont": "don't",
    "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd", "howll": "how'll",
    "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've", "isnt": "isn't",
    "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's", "maam": "ma'am",
    "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've", "oclock": "o'clock",
    "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've", "somebodyll": "somebody'll",
    "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's",
    "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}  # fmt: skip
# Only these number words become digits ("eleven" stays a word); "none" counts as 0.
NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
ARTICLES = ("a", "an", "the")
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
# The official `periodStrip` is "(?!<=\d)(\.)(?!\d)": its first group is a look-*ahead* for the text "<=digit" (meant
# as a look-behind), so in effect it removes every period not followed by a digit ("1.5" keeps its point, "5." and
# "st. louis" lose theirs). Written here as what it does.
_PERIOD_STRIP = re.compile(r"\.(?!\d)")
# Official `commaStrip`: a comma between digits ("1,000"). Its presence anywhere switches every punctuation mark
# of the answer from "becomes a space" to "is deleted".
_COMMA_IN_NUMBER = re.compile(r"\d,\d")
# The official call is `periodStrip.sub("", text, re.UNICODE)`, which passes re.UNICODE (32) as the *count*: at most
# 32 periods are removed. Kept, so that even absurd answers normalise as the official ones do.
_OFFICIAL_PERIOD_COUNT = int(re.UNICODE)


def process_punctuation(text: str) -> str:
    """vqaEval.py `processPunctuation`: each mark is deleted when it touches a space somewhere in the answer (or the
    answer has a comma inside a number), else replaced by a space; then periods not followed by a digit go."""
    out = text
    number_comma = _COMMA_IN_NUMBER.search(text) is not None
    for mark in PUNCTUATION:
        # The official tests the *original* text for each mark, not the text as rewritten so far.
        if mark + " " in text or " " + mark in text or number_comma:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD_STRIP.sub("", out, count=_OFFICIAL_PERIOD_COUNT)


def process_digit_article(text: str) -> str:
    """vqaEval.py `processDigitArticle`: lower-case, number words -> digits, drop articles, restore contractions."""
    words = [NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    words = [word for word in words if word not in ARTICLES]
    return " ".join(CONTRACTIONS.get(word, word) for word in words)


# Cached: reading VQAv2 normalises 10 answers of each of 658k questions (~8 us each), but few distinct strings.
@functools.lru_cache(maxsize=1 << 18)
def normalize_answer(text: str) -> str:
    """An answer as the official evaluation compares it: newlines / tabs to spaces, stripped, then
    `process_punctuation` and `process_digit_article` ("Two dogs." -> "2 dogs", "dont" -> "don't", "1,000" ->
    "1000", "the cat" -> "cat"). write_vqa.py's `normalize_word` gives the same result."""
    return process_digit_article(process_punctuation(text.replace("\n", " ").replace("\t", " ").strip()))


# --- soft targets and the answer vocabulary ------------------------------------------------------------------------
def score_for_count(count: int) -> float:
    """write_vqa.py `get_score`: the soft target of an answer given by `count` annotators."""
    return {0: 0.0, 1: 0.3, 2: 0.6, 3: 0.9}.get(count, 1.0)


def answer_scores(answers: Iterable[str]) -> dict[str, float]:
    """{normalised answer: soft score} from one question's annotator answers (usually 10). Answers are counted after
    normalisation ("Two" and "2" are one answer), as write_vqa.py does with `fix_answer_normalization=True` (the
    `_fix` arrow files the BridgeTower recipe trains on); the order is that of first appearance."""
    counts = collections.Counter(normalize_answer(answer) for answer in answers)
    return {answer: score_for_count(count) for answer, count in counts.items()}


def build_answer_vocabulary(annotations: Iterable[Mapping] | Mapping, min_count: int = 9) -> list[str]:
    """The answer classes: normalised `multiple_choice_answer`s seen at least `min_count` times, in order of first
    appearance (write_vqa.py: Counter over train then val, kept when >= 9; class i is the i-th entry).

    `annotations`: the rows of the official annotation files (`{"annotations": [...]}` is accepted too). To get the
    official 3,129 classes in the official order, pass the train2014 rows followed by the val2014 rows."""
    if isinstance(annotations, Mapping):
        annotations = annotations["annotations"]
    counts = collections.Counter(normalize_answer(row["multiple_choice_answer"]) for row in annotations)
    return [answer for answer, count in counts.items() if count >= min_count]  # Counter keeps first-seen order


def save_answer_vocabulary(path: str, answers: Sequence[str]) -> None:
    """Writes the vocabulary as a JSON list (entry i is class i)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with open(path, "w") as f:
        json.dump(list(answers), f, indent=0)


def load_answer_vocabulary(path: str) -> list[str]:
    """A vocabulary written by `save_answer_vocabulary` (a JSON list of distinct strings, entry i = class i)."""
    if not os.path.exists(path):
        raise DataConfigError(f"--answer_vocabulary_file {path!r} does not exist: check the path.")
    try:
        with open(path) as f:
            answers = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataConfigError(f"--answer_vocabulary_file {path} is not JSON ({error}).") from None
    if not isinstance(answers, list) or not all(isinstance(answer, str) for answer in answers):
        raise DataConfigError(f"--answer_vocabulary_file {path} must hold a JSON list of answer strings.")
    duplicates = [answer for answer, count in collections.Counter(answers).items() if count > 1]
    if duplicates:
        raise DataConfigError(f"--answer_vocabulary_file {path} lists answers twice: {duplicates[:5]}.")
    return answers


# --- metrics -------------------------------------------------------------------------------------------------------
def vqa_question_accuracy(predicted: str, gt_answers: Sequence[str]) -> float:
    """The official VQA accuracy of one predicted answer against the annotators' answers (usually 10), both
    normalised: min(#matching annotators / 3, 1) averaged over the 10 subsets of 9 annotators (vqaEval.py), which
    gives 0.3 / 0.6 / 0.9 / 1.0 for 1 / 2 / 3 / >=4 matching annotators (write_vqa.py's soft targets). The plain
    min(n / 3, 1) without the averaging reads higher (1.0 for 3 matches) and is not reported.

    One difference from vqaEval.py: it normalises the annotators' answers only when they disagree, and then only
    with `processPunctuation` (so "two" from 10 annotators does not match a predicted "2" there). Here both sides
    always get the whole normalisation, as the training targets do."""
    if not gt_answers:
        raise ValueError("a question without annotator answers has no VQA accuracy (test questions: submit them).")
    predicted = normalize_answer(predicted)
    matches = [normalize_answer(answer) == predicted for answer in gt_answers]
    total = sum(matches)
    # Leaving annotator i out: the other annotators' matches are total - matches[i].
    return float(np.mean([min((total - int(match)) / 3.0, 1.0) for match in matches]))


def vqa_accuracy(predicted_answers: Sequence[str], gt_answer_lists: Sequence[Sequence[str]]) -> float:
    """Mean official VQA accuracy (0..1) over questions: `vqa_question_accuracy` of each prediction against its
    annotators' answers."""
    if len(predicted_answers) != len(gt_answer_lists):
        raise ValueError(f"{len(predicted_answers)} predictions for {len(gt_answer_lists)} questions.")
    if not predicted_answers:
        return 0.0
    scores = [
        vqa_question_accuracy(predicted, answers)
        for predicted, answers in zip(predicted_answers, gt_answer_lists, strict=True)
    ]
    return float(np.mean(scores))


def vqa_soft_score(predicted_labels: Sequence[int] | np.ndarray, targets) -> float:
    """Mean soft score of the predicted classes (my_metrics.py `VQAScore`): for each question, the target score of
    the class predicted (0 if it is not among the question's answers).

    `targets`: a dense (questions x classes) array of soft scores, or a list of target dicts with "labels" and
    "scores" (the readers' VQA target format; None entries are not allowed). With targets from
    `answer_scores` this equals the official accuracy (`vqa_accuracy`) of predictions in the vocabulary."""
    predicted = np.asarray(predicted_labels, dtype=np.int64).reshape(-1)
    if isinstance(targets, np.ndarray):
        if targets.ndim != 2 or targets.shape[0] != predicted.size:
            raise ValueError(f"targets of shape {targets.shape} for {predicted.size} predictions.")
        if not predicted.size:
            return 0.0
        return float(targets[np.arange(predicted.size), predicted].mean())
    if len(targets) != predicted.size:
        raise ValueError(f"{len(targets)} targets for {predicted.size} predictions.")
    if not predicted.size:
        return 0.0
    scores = [
        dict(zip(target["labels"], target["scores"], strict=True)).get(int(label), 0.0)
        for label, target in zip(predicted, targets, strict=True)
    ]
    return float(np.mean(scores))


def accuracy(predictions, labels, ignore_index: int = -100) -> float:
    """Share of predictions equal to their label (SNLI-VE, NLVR2). `predictions` are class indices, or logits
    (..., classes) whose argmax is taken; labels equal to `ignore_index` do not count (my_metrics.py `Accuracy`).
    0.0 when nothing counts."""
    predictions, labels = np.asarray(predictions), np.asarray(labels).reshape(-1)
    if predictions.ndim > 1 and predictions.size != labels.size:
        predictions = predictions.argmax(axis=-1)
    predictions = predictions.reshape(-1)
    if predictions.shape != labels.shape:
        raise ValueError(f"{predictions.size} predictions for {labels.size} labels.")
    kept = labels != ignore_index
    if not kept.any():
        return 0.0
    return float((predictions[kept] == labels[kept]).mean())


def write_vqa_predictions(path: str, question_ids: Sequence, answers: Sequence[str]) -> None:
    """The submission file of the VQAv2 test server (objectives.py `vqa_test_wrapup`): a JSON list of
    {"question_id": int, "answer": str}."""
    if len(question_ids) != len(answers):
        raise ValueError(f"{len(question_ids)} question ids for {len(answers)} answers.")
    rows = [{"question_id": int(qid), "answer": answer} for qid, answer in zip(question_ids, answers, strict=True)]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(rows, f)
