"""Raw image-text records, and the log of records a run had to skip.

A long run must never die on one bad record: readers raise `BadRecord(reason)`, the dataset skips it, and
`SkipLog` counts it. The log is a JSON-lines file (one per rank) so that data-loader worker processes can append to
it without shared state, and nothing is lost if the run dies.
"""

from __future__ import annotations

import collections
import glob
import json
import os
import tempfile
import uuid
from dataclasses import dataclass
from typing import Any

# Why a record is skipped. Records that can be converted (CMYK, RGBA, palette, 16-bit, grayscale images, overlong
# captions) are converted, not skipped.
SKIP_REASONS = {
    "missing_image": "the image file does not exist",
    "empty_image": "the image file or bytes are empty",
    "corrupt_image": "the image cannot be decoded",
    "truncated_image": "the image data ends early",
    "empty_caption": "the caption is empty or not text",
    "bad_row": "the row of the source file is malformed",
    "truncated_shard": "the tar shard was cut short (inside a member, or between two members)",
}
# The reasons that are the image's fault: one unreadable image takes every caption (record) of it along.
IMAGE_REASONS = ("missing_image", "empty_image", "corrupt_image", "truncated_image")


class BadRecord(Exception):
    """A record that cannot be used; `reason` is a key of SKIP_REASONS."""

    def __init__(self, reason: str, name: str, detail: str = ""):
        assert reason in SKIP_REASONS, reason
        super().__init__(f"{reason}: {name} {detail}".strip())
        self.reason, self.name, self.detail = reason, name, detail


@dataclass
class RawRecord:
    """One example before decoding: a text with its image (bytes, a file path, or a PIL image), and for the
    downstream tasks a target and further images.

    - `target`: the task's answer, as read from the file (VQA: {"labels": [class], "scores": [soft score],
      "answers": [the annotators' raw answers]}; SNLI-VE / NLVR2: a class index; None for test examples); the task
      turns it into tensors.
    - `extra_images`: further (image, image_id) pairs of the same example (NLVR2's second image).
    - `example_id`: the example's own id where the task reports per example (VQA question_id, NLVR2 identifier).
    """

    image: Any
    caption: Any
    image_id: str
    name: str  # where the record came from, for error messages
    target: Any = None
    extra_images: tuple = ()
    example_id: str | None = None


class SkipLog:
    """Skipped records across processes (workers append to `path`), counted per unique record.

    A bad record is met many times: the replacement walk meets it again, it is drawn as an ITM negative, a resumed
    run re-reads it. Each meeting is one line (`record`: which record, `image`: which image for the image reasons,
    `at`: where in the data order it was met); the report counts unique records (per reason), unique images, and
    encounters (unique (record, at) pairs, so the re-reads of a resumed run add nothing) as a separate figure."""

    def __init__(self, path: str | None = None, fresh: bool = False):
        """`fresh=True` starts the count at zero (a new run); otherwise an existing log is appended to (a resumed
        run: its encounters are merged with the first run's)."""
        if path is None:  # a unique name, written only at the first skip: a clean run leaves no file behind
            path = os.path.join(tempfile.gettempdir(), f"bridgetower_skipped_{uuid.uuid4().hex}.jsonl")
        self.path = str(path)
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        if fresh and os.path.exists(self.path):
            os.remove(self.path)

    def record(self, bad: BadRecord, record=None, image=None, at=None) -> None:
        """Log one encounter of `bad`: `record` identifies the record (default: its name), `image` its image (image
        reasons only; default: the record's name), `at` the position in the data order it was met at."""
        entry = {
            "reason": bad.reason,
            "name": bad.name,
            "detail": bad.detail[:200],
            "record": str(record if record is not None else bad.name),
            "image": str(image if image is not None else bad.name) if bad.reason in IMAGE_REASONS else None,
            "at": None if at is None else str(at),
        }
        with open(self.path, "a") as f:  # one short append per skip: atomic enough across worker processes
            f.write(json.dumps(entry) + "\n")

    def entries(self) -> list[dict]:
        return self._read(self.path)

    def discard(self) -> None:
        """Delete the log's file, if a skip wrote one (a log used only to check a source)."""
        if os.path.exists(self.path):
            os.remove(self.path)

    @staticmethod
    def _read(path: str) -> list[dict]:
        if not os.path.exists(path):
            return []
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]

    def rank_paths(self) -> list[str]:
        """This log and its siblings of the other ranks (`...rank<N>.jsonl`)."""
        if ".rank" not in os.path.basename(self.path):
            return [self.path]
        head, _, _ = self.path.rpartition(".rank")
        return sorted(glob.glob(f"{glob.escape(head)}.rank*.jsonl"))

    @classmethod
    def summary_of(cls, paths: list[str], first: int = 5) -> dict:
        return cls._summarize([entry for path in paths for entry in cls._read(path)], first)

    @staticmethod
    def _unique(entries: list[dict]) -> dict[str, dict]:
        """record -> its first entry."""
        unique: dict[str, dict] = {}
        for entry in entries:
            unique.setdefault(entry.get("record", entry["name"]), entry)
        return unique

    def counts(self) -> dict[str, int]:
        """Unique records per reason."""
        return dict(collections.Counter(e["reason"] for e in self._unique(self.entries()).values()))

    def summary(self, first: int = 5) -> dict:
        return self._summarize(self.entries(), first)

    @classmethod
    def _summarize(cls, entries: list[dict], first: int) -> dict:
        """{"skipped_total": unique records (image-caption pairs), "skipped_<reason>": unique records,
        "skipped_images": unique unreadable images, "skip_encounters": times a bad record was met,
        "skipped_examples": ["reason: name", ...]}."""
        unique = cls._unique(entries)
        out: dict[str, Any] = {"skipped_total": len(unique)}
        for reason, count in sorted(collections.Counter(e["reason"] for e in unique.values()).items()):
            out[f"skipped_{reason}"] = count
        out["skipped_images"] = len({e["image"] for e in unique.values() if e.get("image")})
        out["skip_encounters"] = len({(e.get("record", e["name"]), e.get("at")) for e in entries})
        out["skipped_examples"] = [f"{e['reason']}: {e['name']}" for e in list(unique.values())[:first]]
        return out

    def report(self) -> str:
        summary = self.summary()
        if not summary["skipped_total"]:
            return "no records skipped"
        reasons = [f"{k[len('skipped_') :]}={v}" for k, v in summary.items() if k[len("skipped_") :] in SKIP_REASONS]
        return (
            f"skipped {summary['skipped_total']} records ({', '.join(reasons)}; {summary['skipped_images']} unreadable "
            f"images), met {summary['skip_encounters']} times; first: {summary['skipped_examples']}"
        )
