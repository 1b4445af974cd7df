"""Readers: each turns one on-disk format into image-text records, one record per caption.

Random-access sources (`__len__`, `__getitem__`) back the map-style dataset; every source also streams
(`iter_positions(shard, num_shards, start)`: each record with the position to resume after it), which is how tar
shards and `--streaming` runs read. Readers raise `BadRecord` for a record they cannot use, and `DataConfigError` at
construction when the source itself cannot work.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import tarfile
from collections.abc import Iterator

from .records import BadRecord, RawRecord, SkipLog


class DataConfigError(ValueError):
    """A data source or flag combination that cannot work; raised at start-up, before any training."""


class MapSource:
    """Random-access records from a list of (image reference, caption, image_id, name) entries."""

    name = "source"

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> RawRecord:
        image, caption, image_id, name = self.entries[index]
        return RawRecord(self.load_image(image, name), caption, image_id, name)

    def load_image(self, image, name):
        return image

    def iter_records(self, shard: int = 0, num_shards: int = 1) -> Iterator[RawRecord | BadRecord]:
        return (item for item, _ in self.iter_positions(shard, num_shards))

    def iter_positions(self, shard: int = 0, num_shards: int = 1, start=None, order_seed=None):
        """(record or BadRecord, the position after it: the next index to read) for shard `shard` of `num_shards`,
        from position `start` (a position this gave before) or the beginning. (`order_seed`: a tar source's shard
        order; records here are shuffled by the streaming dataset's blocks.)"""
        for index in range(shard if start is None else start, len(self), num_shards):
            try:
                yield self[index], index + num_shards
            except BadRecord as bad:
                yield bad, index + num_shards


def _captions(value, name: str) -> list:
    """A caption field -> list of captions (a str, or a list of str as in Karpathy / arrow files)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)):
        return list(value)
    raise BadRecord("bad_row", name, f"caption field of type {type(value).__name__}")


def unique_captions(captions: list) -> list:
    """An image's captions without repeats, in first-seen order: the official caption data sets drop a caption
    that an image already has (base_dataset.py, `remove_duplicate=True` for COCO / Flickr30K / VG / CC / SBU), so
    a repeated caption is neither drawn twice as often in training nor counted twice in retrieval evaluation."""
    return list(dict.fromkeys(captions))


def require_file(path: str, flag: str) -> None:
    if not os.path.exists(path):
        raise DataConfigError(f"{flag} {path!r} does not exist: check the path.")


class KarpathySource(MapSource):
    """`dataset_coco.json` / `dataset_flickr30k.json`: images[] with filepath, filename, split, sentences[].raw.
    COCO's `restval` split counts as train, as the papers do; an image's repeated captions count once
    (`unique_captions`)."""

    def __init__(self, path: str, image_root: str | None, splits: list[str], skip_log: SkipLog):
        require_file(path, "--train_file/--validation_file")
        if not image_root:
            raise DataConfigError(
                f"{path} is a Karpathy split file, whose image paths are relative: pass --image_root (the folder "
                "holding the images, e.g. the COCO root with train2014/ and val2014/)."
            )
        self.name = os.path.basename(path)
        with open(path) as f:
            try:
                images = json.load(f)["images"]
            except (json.JSONDecodeError, KeyError, TypeError) as error:
                raise DataConfigError(f"{path} is not a Karpathy split file ({error}).") from None
        wanted = set(splits) | ({"restval"} if "train" in splits else set())
        self.entries = []
        for number, image in enumerate(images):
            try:
                if image["split"] not in wanted:
                    continue
                file = os.path.join(image_root, image.get("filepath", ""), image["filename"])
                image_id = str(image.get("cocoid", image.get("imgid", image["filename"])))
                for caption in unique_captions(sentence["raw"] for sentence in image["sentences"]):
                    self.entries.append((file, caption, f"{self.name}:{image_id}", f"{self.name}:{image['filename']}"))
            except (KeyError, TypeError) as error:
                skip_log.record(BadRecord("bad_row", f"{self.name}:images[{number}]", f"missing field {error}"))


class ArrowSource(MapSource):
    """The official BridgeTower / ViLT / METER pyarrow IPC files (image bytes, caption list, image_id, split),
    memory-mapped; several files form one source. A row's repeated captions count once (`unique_captions`)."""

    def __init__(self, paths: list[str], image_column: str, caption_column: str, skip_log: SkipLog, split=None):
        import pyarrow as pa

        self.tables, self.entries = [], []
        self.name = os.path.basename(paths[0]) + (f"+{len(paths) - 1}" if len(paths) > 1 else "")
        for file_number, path in enumerate(paths):
            require_file(path, "--train_file/--validation_file")
            try:
                table = pa.ipc.RecordBatchFileReader(pa.memory_map(path, "r")).read_all()
            except pa.ArrowInvalid as error:
                raise DataConfigError(f"{path} is not an Arrow IPC file ({error}).") from None
            for column in (image_column, caption_column):
                if column not in table.column_names:
                    raise DataConfigError(
                        f"{path} has no column {column!r}; its columns are {table.column_names}: pass "
                        "--image_column / --caption_column."
                    )
            self.tables.append(table)
            captions = table.column(caption_column).to_pylist()
            ids = table.column("image_id").to_pylist() if "image_id" in table.column_names else range(len(captions))
            splits = table.column("split").to_pylist() if split and "split" in table.column_names else None
            base = os.path.basename(path)
            for row, (value, image_id) in enumerate(zip(captions, ids, strict=True)):
                if splits is not None and splits[row] != split:
                    continue
                try:
                    for caption in unique_captions(_captions(value, f"{base}[{row}]")):
                        self.entries.append(((file_number, row), caption, f"{base}:{image_id}", f"{base}[{row}]"))
                except BadRecord as bad:
                    skip_log.record(bad)
        self.image_column = image_column

    def load_image(self, image, name):
        file_number, row = image
        return self.tables[file_number].column(self.image_column)[row].as_py()


class JsonLinesSource(MapSource):
    """One JSON object (jsonl) or CSV row per record, with an image path (relative to --image_root, else to the
    file's folder) and a caption (or a list of captions)."""

    def __init__(self, path: str, image_root: str | None, image_column: str, caption_column: str, skip_log: SkipLog):
        require_file(path, "--train_file/--validation_file")
        self.name = os.path.basename(path)
        root = image_root or os.path.dirname(os.path.abspath(path))
        self.entries = []
        rows = list(self._rows(path, skip_log))
        if rows and all(image_column not in row or caption_column not in row for _, row in rows[:100]):
            raise DataConfigError(
                f"{path}: records have no {image_column!r} / {caption_column!r} fields (first record's fields: "
                f"{sorted(rows[0][1])}); pass --image_column / --caption_column."
            )
        for line, row in rows:
            name = f"{self.name}:{line}"
            try:
                if image_column not in row or caption_column not in row:
                    raise BadRecord("bad_row", name, "missing image or caption field")
                image = row[image_column]
                if not isinstance(image, str):
                    raise BadRecord("bad_row", name, "image field is not a path")
                for caption in _captions(row[caption_column], name):
                    self.entries.append((os.path.join(root, image), caption, f"{self.name}:{image}", name))
            except BadRecord as bad:
                skip_log.record(bad)

    def _rows(self, path, skip_log):
        if path.lower().endswith(".csv"):
            with open(path, newline="") as f:
                for line, row in enumerate(csv.DictReader(f), start=2):
                    yield line, {k: v for k, v in row.items() if k is not None}
            return
        yield from json_lines(path, self.name, skip_log)


def json_lines(path: str, name: str, skip_log: SkipLog) -> Iterator[tuple[int, dict]]:
    """(line number, object) of each row of a JSON-lines file; a line that is not a JSON object goes to the log."""
    with open(path) as f:
        for line, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except ValueError as error:
                skip_log.record(BadRecord("bad_row", f"{name}:{line}", str(error)))
                continue
            if isinstance(row, dict):
                yield line, row
            else:
                skip_log.record(BadRecord("bad_row", f"{name}:{line}", f"a JSON {type(row).__name__}, not an object"))


class HFDatasetSource(MapSource):
    """Any `datasets` data set: a hub name, a loader script or data folder (imagefolder with metadata, json, csv,
    parquet), or a `save_to_disk` folder. Images are decoded by us, so a bad one is skipped, not fatal."""

    def __init__(self, name_or_path, config_name, split, image_column, caption_column, image_root, skip_log):
        import datasets

        if (
            os.path.isdir(name_or_path)
            and os.path.exists(os.path.join(name_or_path, "dataset_info.json"))
            or (os.path.isdir(name_or_path) and os.path.exists(os.path.join(name_or_path, "dataset_dict.json")))
        ):
            dataset = datasets.load_from_disk(name_or_path)
            if isinstance(dataset, datasets.DatasetDict):
                if split not in dataset:
                    raise DataConfigError(f"{name_or_path} has splits {list(dataset)}, not {split!r}.")
                dataset = dataset[split]
        else:
            dataset = datasets.load_dataset(name_or_path, config_name, split=split)
        for column in (image_column, caption_column):
            if column not in dataset.column_names:
                raise DataConfigError(
                    f"data set {name_or_path} has no column {column!r}; its columns are {dataset.column_names}: "
                    "pass --image_column / --caption_column."
                )
        if isinstance(dataset.features[image_column], datasets.Image):
            dataset = dataset.cast_column(image_column, datasets.Image(decode=False))
        self.dataset, self.image_column, self.image_root = dataset, image_column, image_root
        self.name = os.path.basename(str(name_or_path).rstrip("/"))
        self.entries = []
        for row, value in enumerate(dataset[caption_column]):
            try:
                for caption in _captions(value, f"{self.name}[{row}]"):
                    self.entries.append((row, caption, f"{self.name}:{row}", f"{self.name}[{row}]"))
            except BadRecord as bad:
                skip_log.record(bad)

    def load_image(self, row, name):
        value = self.dataset[row][self.image_column]
        if isinstance(value, dict):  # datasets.Image(decode=False): {"bytes": ..., "path": ...}
            return value.get("bytes") or value.get("path")
        if isinstance(value, str) and self.image_root and not os.path.isabs(value):
            return os.path.join(self.image_root, value)
        return value


_IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp")


def expand_shards(path: str) -> list[str]:
    """`cc3m-{000000..000331}.tar` -> the 332 shard names (webdataset's brace expansion; `::` separates lists)."""
    from webdataset.shardlists import expand_urls

    return expand_urls(path)


def is_url(path: str) -> bool:
    """`pipe:COMMAND` (its output is the shard) and remote URLs are opened by webdataset's gopen, never checked on
    disk."""
    return path.startswith("pipe:") or "://" in path and not path.startswith("file://")


class _Tail:
    """A read-only stream that remembers how many bytes it gave and the last 1024 of them: a tar file that ends
    without its end-of-archive blocks (two zero blocks) was cut, even where the cut fell between two members, which
    tarfile itself takes for the end of the archive."""

    def __init__(self, stream):
        self.stream, self.count, self.last = stream, 0, b""

    def read(self, size=-1):
        data = self.stream.read(size)
        self.count += len(data)
        self.last = data[-1024:] if len(data) >= 1024 else (self.last + data)[-1024:]  # no copy of large reads
        return data

    def drain(self) -> None:
        while self.read(1 << 16):
            pass

    def ended_properly(self) -> bool:
        return self.count % 512 == 0 and len(self.last) == 1024 and not any(self.last)


class WebDatasetSource:
    """Tar shards (CC3M / SBU scale) of samples `key.jpg|png` + `key.txt|json`, streamed without unpacking: local
    files, brace ranges (`cc3m-{000000..000331}.tar`, expanded by webdataset), and `pipe:COMMAND` / remote URLs
    (opened with webdataset's gopen). Shards are read with the standard library's streaming tarfile rather than
    webdataset's tar iterator: a mid-shard resume needs each sample's byte offset (to seek to it), which
    webdataset's iterator does not give.

    Readers (ranks x data-loader workers) split the shards: with at least as many shards as readers each takes whole
    shards; with fewer, each shard is read by the readers that share it (reader k reads shard k % S and takes every
    c-th of its samples, c readers sharing it), never by every reader. A shard cut inside a member, or cut between
    two members (no end-of-archive blocks), is reported as `truncated_shard`."""

    def __init__(self, paths: list[str]):
        shards = [shard for path in paths for shard in expand_shards(path)]
        for path in shards:
            if not is_url(path):
                require_file(path, "--train_file/--validation_file")
        self.paths = sorted(shards)
        self.name = os.path.basename(self.paths[0]) + (f"+{len(self.paths) - 1}" if len(self.paths) > 1 else "")

    def plan(self, reader: int, num_readers: int, order_seed: int | None = None) -> list[tuple[str, int, int]]:
        """(shard, every, phase) for one reader: it takes the samples n of the shard with n % every == phase. With
        `order_seed` the shards are dealt out in that seed's order (a new one each epoch), else in name order."""
        paths = list(self.paths)
        if order_seed is not None:
            random.Random(order_seed).shuffle(paths)
        count = len(paths)
        if count >= num_readers:
            return [(path, 1, 0) for path in paths[reader::num_readers]]
        sharing = len(range(reader % count, num_readers, count))
        return [(paths[reader % count], sharing, reader // count)]

    def iter_records(self, shard: int = 0, num_shards: int = 1) -> Iterator[RawRecord | BadRecord]:
        return (item for item, _ in self.iter_positions(shard, num_shards))

    def iter_positions(self, shard: int = 0, num_shards: int = 1, start=None, order_seed=None):
        """(record or BadRecord, position after it); a position is [shard in the plan, byte offset of the next
        sample, samples of that shard seen]: a resume seeks there (local files; a pipe or URL is read up to it)."""
        plan = self.plan(shard, num_shards, order_seed)
        first, offset, seen = start if start is not None else (0, 0, 0)
        for number in range(first, len(plan)):
            path, every, phase = plan[number]
            if number != first:
                offset, seen = 0, 0
            for item, after in self._samples(path, offset):
                if isinstance(item, BadRecord) and item.reason == "truncated_shard":
                    if phase == 0:  # reported once, by the first of the readers sharing the shard
                        yield item, [number + 1, 0, 0]
                    continue
                seen += 1
                if (seen - 1) % every == phase:
                    yield item, [number, after, seen] if after is not None else [number + 1, 0, 0]

    def _open(self, path: str, offset: int):
        if is_url(path):
            import webdataset

            stream = webdataset.gopen(path, "rb")
            remaining = offset
            while remaining:  # a pipe cannot seek: read up to the resume point (no sample is decoded)
                data = stream.read(min(remaining, 1 << 20))
                if not data:
                    break
                remaining -= len(data)
            return stream
        stream = open(path, "rb")
        stream.seek(offset)
        return stream

    def _samples(self, path: str, offset: int = 0):
        """(record, byte offset where the next sample starts) for the samples from byte `offset`; the offset is
        None after a damaged shard's report."""
        base = os.path.basename(path)
        current_key, fields = None, {}
        stream = self._open(path, offset)
        tail = _Tail(stream)
        try:
            with tarfile.open(fileobj=tail, mode="r|*") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    key, _, extension = os.path.basename(member.name).partition(".")
                    key = os.path.join(os.path.dirname(member.name), key)
                    if key != current_key and current_key is not None:
                        yield self._record(base, current_key, fields), offset + member.offset
                        fields = {}
                    current_key = key
                    data = tar.extractfile(member).read()
                    if len(data) < member.size:  # streaming tarfile returns short reads silently at EOF
                        raise tarfile.ReadError(f"{member.name} ends after {len(data)} of {member.size} bytes")
                    fields[extension.lower()] = data
                tail.drain()
                end = offset + tail.count
        except (tarfile.TarError, OSError, EOFError) as error:
            detail = f"cut inside a member after {current_key!r}: {error}"
            yield BadRecord("truncated_shard", f"{base}:{current_key}", detail), None
            return
        finally:
            stream.close()
        cut = path.endswith(".tar") and not tail.ended_properly()
        if current_key is not None:
            # A cut between two members may have taken the last sample's other members: it is kept if whole.
            yield self._record(base, current_key, fields), None if cut else end
        if cut:
            detail = f"ends after {current_key!r} without its end-of-archive blocks (cut between two members)"
            yield BadRecord("truncated_shard", f"{base}:end", detail), None

    def _record(self, base, key, fields) -> RawRecord | BadRecord:
        name = f"{base}:{key}"
        image = next((fields[e] for e in _IMAGE_EXTENSIONS if e in fields), None)
        if image is None:
            return BadRecord("missing_image", name, f"sample has {sorted(fields)}")
        if "txt" in fields:
            caption = fields["txt"].decode("utf-8", errors="replace")
        elif "json" in fields:
            try:
                caption = json.loads(fields["json"]).get("caption")
            except (ValueError, AttributeError):
                return BadRecord("bad_row", name, "unreadable json")
        else:
            return BadRecord("empty_caption", name, "sample has no txt or json")
        return RawRecord(io.BytesIO(image).getvalue(), caption, name, name)
