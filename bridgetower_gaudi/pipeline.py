"""Inference on a trained BridgeTower checkpoint: image-caption scores, masked words, folder search, answers.

    pipe = BridgeTowerPipeline.from_pretrained("outputs/pretrain-tiny-synthetic", device="auto", bf16=False)
    pipe.score("cat.png", ["a cat on a couch", "a dog"])        # ITM match probability (+ ITC similarity)
    pipe.fill_mask("cat.png", "a [MASK] on a couch", top=5)    # top tokens for each masked position
    pipe.search("photos/", "a cat on a couch", top=5)          # rank a folder of images by a sentence
    pipe.search_captions("cat.png", captions, top=5)           # rank captions for an image
    pipe.vqa("cat.png", "what is on the couch?", top=5)         # answers (a VQA checkpoint: run_finetune --task vqa)

The parts live in `bridgetower_gaudi.inference`: loading the checkpoint (`loading`), captions and images as tensors
(`inputs`), the towers run in static-shape batches (`towers`, shared with the retrieval evaluation), ranking
(`ranking`) and the folder cache of image states (`image_cache`); this module puts them together, one object per
checkpoint.
"""

from __future__ import annotations

import os

import torch

from .data.records import BadRecord
from .inference.image_cache import CACHE_DIR_NAME, FolderStates, ImageStateCache, checkpoint_key
from .inference.inputs import PipelineInputs
from .inference.loading import PipelineError, load_model, load_tokenizer, resolve_device
from .inference.ranking import SearchResult, rank, ranked_matches, ranking_description
from .inference.towers import TowerRunner
from .modeling import BridgeTowerConfig

__all__ = ["BridgeTowerPipeline", "PipelineError", "SearchResult"]


class BridgeTowerPipeline:
    """A BridgeTower checkpoint answering image-text questions: `score`, `fill_mask`, `search`, `search_captions`
    and `vqa`, each for one input or a list.

    Every method is batched: the towers run once per image and once per text, the cross-modal encoder once per
    pair, `batch_size` at a time. Ranking follows the official retrieval recipe when the checkpoint has ITC heads
    (everything by ITC similarity, the best `rerank` re-ranked by ITM); without them every candidate is ranked by
    ITM, which is fine for small folders; a contrastive-only checkpoint ranks by ITC alone. Shapes are static:
    captions are padded to `max_length`, and on HPU every batch to `batch_size` and the modules run as HPU graphs
    (lazy mode), so nothing recompiles between calls. `search` keeps the image states of a folder on disk
    (`inference.image_cache`): a second query skips the image tower. Bad input raises a PipelineError that says
    what to do.
    """

    def __init__(
        self,
        model,
        config: BridgeTowerConfig,
        tokenizer,
        model_dir: str,
        bf16: bool = False,
        batch_size: int = 32,
        max_length: int | None = None,
        rerank: int = 16,
    ):
        """`model` with its `config` and `tokenizer`, already on its device; `model_dir` is where it was read
        from (the cache key and the error messages name it). `from_pretrained` builds all of them."""
        self.model, self.config, self.model_dir = model, config, model_dir
        self.bf16, self.batch_size, self.rerank = bf16, batch_size, rerank
        self.inputs = PipelineInputs(tokenizer, config, max_length)
        self.transform, self.max_length = self.inputs.transform, self.inputs.max_length
        self.runner = TowerRunner(model, batch_size, bf16)
        self.has_itm = hasattr(model, "itm_score")
        self.has_mlm = hasattr(model, "mlm_score")
        self.has_itc = self.runner.has_itc
        self.has_vqa = hasattr(model, "vqa_classifier")

    @classmethod
    def from_pretrained(
        cls,
        model_dir: str,
        device: str = "auto",
        bf16: bool = False,
        batch_size: int = 32,
        max_length: int | None = None,
        rerank: int = 16,
    ) -> BridgeTowerPipeline:
        """The pipeline of a checkpoint folder (weights, config.json and tokenizer, as run_pretrain.py or
        run_finetune.py save them) on `device` ("auto": hpu, cuda or cpu, whichever is present). `bf16`: bfloat16
        autocast; `batch_size`: rows per forward (fixed on HPU); `max_length`: caption length in tokens (default:
        every position the model has); `rerank`: ITC candidates re-ranked by ITM in `search`."""
        model, config = load_model(model_dir, resolve_device(device))
        tokenizer = load_tokenizer(model_dir)
        return cls(model, config, tokenizer, model_dir, bf16, batch_size, max_length, rerank)

    @property
    def device(self) -> str:
        """Where the model runs: "cpu", "cuda" or "hpu"."""
        return self.runner.device.type

    # --- towers -----------------------------------------------------------------------------------------------
    def encode_texts(self, texts: list[str]) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """(the text states the cross-modal encoder reads, one tensor per fed layer; the attention mask)."""
        encoding = self.inputs.tokenize(texts)
        mask = encoding["attention_mask"]
        return self.runner(self.runner.text_tower, encoding["input_ids"], mask), mask

    def encode_images(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The vision states the cross-modal encoder reads, one tensor per fed layer, of transformed pixels."""
        return self.runner(self.runner.image_tower, pixel_values)

    def _itm(self, text_states, text_mask, image_states, text_rows, image_rows) -> torch.Tensor:
        self._require("itm", "image-text matching (ITM)")
        itm_logits, _ = self.runner.fuse(text_states, text_mask, image_states, text_rows, image_rows)
        return itm_logits.softmax(dim=-1)[:, 1]

    def _itc_similarity(self, text_states, image_states) -> torch.Tensor:
        """(texts x images) cosine similarity of the ITC embeddings (the heads the checkpoint trained)."""
        with torch.inference_mode():
            text, image = self.runner.itc_text(text_states), self.runner.itc_image(image_states)
            return (text @ image.t()).float().cpu()

    def _require(self, head: str, what: str) -> None:
        if not getattr(self, f"has_{head}"):
            objectives = "mlm,itm,itc" if head == "itc" else "mlm,itm"
            raise PipelineError(
                f"{self.model_dir!r} ({type(self.model).__name__}) has no {head.upper()} head, which {what} needs: "
                f"use a checkpoint trained with it (run_pretrain.py --objectives {objectives})."
            )

    def _require_itm_or_itc(self, what: str) -> None:
        if not (self.has_itm or self.has_itc):
            raise PipelineError(
                f"{self.model_dir!r} ({type(self.model).__name__}) has neither an ITM nor an ITC head, which {what} "
                "needs: use a checkpoint trained with them (run_pretrain.py --objectives mlm,itm or mlm,itm,itc)."
            )

    # --- one input at a time ----------------------------------------------------------------------------------
    def score(self, images, texts):
        """ITM match probability (and ITC cosine similarity when the checkpoint has ITC heads) of every text with
        every image. One image -> a list of {"text", "itm"[, "itc"]} per text; a list of images -> a list of those."""
        single = not isinstance(images, (list, tuple))
        images = [images] if single else list(images)
        texts = [texts] if isinstance(texts, str) else list(texts)
        self._require_itm_or_itc("scoring")
        text_states, text_mask = self.encode_texts(texts)
        image_states = self.encode_images(self.inputs.pixels(images))
        scores = {}
        if self.has_itm:
            text_rows = [t for _ in images for t in range(len(texts))]
            image_rows = [i for i in range(len(images)) for _ in texts]
            itm = self._itm(text_states, text_mask, image_states, text_rows, image_rows)
            scores["itm"] = itm.view(len(images), len(texts))
        if self.has_itc:
            scores["itc"] = self._itc_similarity(text_states, image_states).t()
        results = [
            [{"text": text, **{name: float(s[i, t]) for name, s in scores.items()}} for t, text in enumerate(texts)]
            for i in range(len(images))
        ]
        return results[0] if single else results

    def vqa(self, images, questions, top: int = 5):
        """The `top` answers to each question about its image, with probabilities (sigmoid of the VQA logits: the
        head is trained with binary cross-entropy). One image and question -> a list of {"answer", "score"}; lists
        of images and questions (same length) -> a list of those."""
        single = isinstance(questions, str)
        images = [images] if single else list(images)
        questions = [questions] if single else list(questions)
        if not self.has_vqa:
            raise PipelineError(
                f"{self.model_dir!r} ({type(self.model).__name__}) has no VQA head: fine-tune one with "
                "run_scripts/run_finetune.py --task vqa, and pass its output folder."
            )
        if len(images) != len(questions):
            raise PipelineError(f"{len(images)} images for {len(questions)} questions: give one image per question.")
        text_states, text_mask = self.encode_texts(questions)
        image_states = self.encode_images(self.inputs.pixels(images))
        rows = list(range(len(questions)))
        logits, _ = self.runner.fuse(text_states, text_mask, image_states, rows, rows)
        probabilities = logits.sigmoid()
        labels = self.config.id2label
        results = []
        for row in range(len(questions)):
            values, indices = probabilities[row].topk(min(top, probabilities.shape[1]))
            results.append(
                [{"answer": labels[int(i)], "score": float(v)} for v, i in zip(values, indices, strict=True)]
            )
        return results[0] if single else results

    def fill_mask(self, images, texts, top: int = 5):
        """The `top` tokens (with probabilities) for each masked word (`[MASK]` or `<mask>`) of each text, read with
        its image. One (image, text) -> a list per masked position of [{"token", "score", "sequence"}]; lists of
        images and texts (same length) -> a list of those."""
        single = isinstance(texts, str)
        images = [images] if single else list(images)
        texts = [texts] if single else list(texts)
        if len(images) != len(texts):
            raise PipelineError(f"fill_mask: {len(images)} images for {len(texts)} texts; pass one image per text.")
        self._require("mlm", "filling masked words")
        texts = [self.inputs.with_mask_token(text) for text in texts]
        text_states, text_mask = self.encode_texts(texts)
        image_states = self.encode_images(self.inputs.pixels(images))
        rows = list(range(len(texts)))
        _, mlm_logits = self.runner.fuse(text_states, text_mask, image_states, rows, rows)
        input_ids = self.inputs.tokenize(texts)["input_ids"]
        mask_token, mask_id = self.inputs.tokenizer.mask_token, self.inputs.tokenizer.mask_token_id
        results = []
        for row, text in enumerate(texts):
            per_mask = []
            for position in (input_ids[row] == mask_id).nonzero().flatten().tolist():
                scores, ids = mlm_logits[row, position].softmax(dim=-1).topk(min(top, mlm_logits.shape[-1]))
                tokens = [self.inputs.token_text(i) for i in ids.tolist()]
                per_mask.append(
                    [
                        {"token": token, "score": float(score), "sequence": text.replace(mask_token, token, 1)}
                        for score, token in zip(scores, tokens, strict=True)
                    ]
                )
            results.append(per_mask)
        return results[0] if single else results

    # --- ranking ----------------------------------------------------------------------------------------------
    def search_captions(self, image, captions: list[str], top: int = 5) -> SearchResult:
        """The captions that best describe `image`, best first (each with its ITM probability and / or ITC
        similarity)."""
        self._require_itm_or_itc("search")
        text_states, text_mask = self.encode_texts(list(captions))
        image_states = self.encode_images(self.inputs.pixels([image]))
        order, itm, itc = self._rank(text_states, text_mask, image_states, len(captions), text_side=True, top=top)
        return SearchResult(ranked_matches("caption", captions, order, itm, itc), self._ranked_by(len(captions)))

    def search(self, image_dir: str, query: str, top: int = 5, cache_dir: str | None = None, progress: bool = True):
        """The images under `image_dir` (recursively) that best match `query`, best first; unreadable files are
        skipped and listed in `skipped`. Image states are cached in `cache_path(image_dir, cache_dir)`."""
        self._require_itm_or_itc("search")
        if not os.path.isdir(image_dir):
            raise PipelineError(f"no folder at {image_dir!r}: pass a folder of images to search.")
        text_states, text_mask = self.encode_texts([query])  # a too-long query fails before the folder is read
        folder = self._folder_states(image_dir, cache_dir, progress)
        candidates = len(folder.paths)
        if not candidates:
            return SearchResult([], self._ranked_by(0), folder.skipped, folder.embedded, 0)
        order, itm, itc = self._rank(text_states, text_mask, folder.states, candidates, text_side=False, top=top)
        matches = ranked_matches("path", folder.paths, order, itm, itc)
        cached = candidates - folder.embedded
        return SearchResult(matches, self._ranked_by(candidates), folder.skipped, folder.embedded, cached)

    def _rank(self, text_states, text_mask, image_states, candidates: int, text_side: bool, top: int):
        """(order, itm, itc) of the candidates (the texts when `text_side`, else the images) for the one query on
        the other side; see `inference.ranking.rank`."""
        itc = None
        if self.has_itc:
            similarity = self._itc_similarity(text_states, image_states)  # texts x images
            itc = similarity[:, 0] if text_side else similarity[0]

        def itm_of(shortlist: list[int]) -> torch.Tensor:
            query = [0] * len(shortlist)
            text_rows, image_rows = (shortlist, query) if text_side else (query, shortlist)
            return self._itm(text_states, text_mask, image_states, text_rows, image_rows)

        order, itm = rank(candidates, top, self.rerank, itc, itm_of if self.has_itm else None)
        return order, itm, itc

    def _ranked_by(self, candidates: int) -> str:
        return ranking_description(candidates, self.has_itm, self.has_itc, self.rerank)

    # --- the folder cache -------------------------------------------------------------------------------------
    def cache_path(self, image_dir: str, cache_dir: str | None = None) -> str:
        """Where `search` keeps the image states of `image_dir` for this checkpoint, image pipeline and precision."""
        dtype = "bf16" if self.bf16 else "fp32"
        # "+draft": JPEGs decoded in draft mode (decode_image); caches of full decodes are not mixed in.
        key = checkpoint_key(self.model_dir, self.transform.image_size, f"{self.transform.mode}+draft", dtype)
        return os.path.join(cache_dir or os.path.join(image_dir, CACHE_DIR_NAME), key)

    def _folder_states(self, image_dir: str, cache_dir: str | None, progress: bool) -> FolderStates:
        def embed(paths: list[str]):
            pixels, names, failures = [], [], []
            for path in paths:
                try:
                    pixels.append(self.inputs.decode(os.path.join(image_dir, path), path))
                    names.append(path)
                except BadRecord as error:
                    failures.append((path, error.reason))
            return names, self.encode_images(torch.stack(pixels)) if pixels else None, failures

        cache = ImageStateCache(image_dir, self.cache_path(image_dir, cache_dir), self.runner.top_layers)
        return cache.states(embed, self.batch_size, progress)
