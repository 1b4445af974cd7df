"""Image-text retrieval (Flickr30K, COCO Karpathy splits): ITC + ITM on ITC-sampled hard negatives, ITC targets soft
over the captions of the same image (the official `compute_itm_itc(pretrain=False)`,
`task_finetune_irtr_itm_itc_f30k_clip_bert`, scripts/ftfpt_base_irtr_itm_itc_flickr.sh); evaluated by IR@K / TR@K /
RSUM with the fast top-k re-ranking of `evaluation.retrieval`."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from ..data import ExampleBuilder, ImageTransform, PretrainingCollator, build_dataset
from ..data.images import evaluation_transform
from ..evaluation.retrieval import RetrievalData, RetrievalOptions, evaluate_retrieval
from ..training.arguments import PretrainingArguments
from .base import read_flags
from .finetune import apply_paper_resolution, task_dataset
from .pretrain import PretrainTask, fixed_objectives

logger = logging.getLogger("bridgetower_gaudi")

# The official recipes (scripts/ftfpt_base_irtr_itm_itc_{flickr,coco}.sh, config.py): (total batch, flags).
RECIPES = {
    "flickr30k": (512, [
        "--per_device_train_batch_size", "8",  # x 8 GPUs x 8 accumulation = 512
        "--learning_rate", "5e-6",
        "--warmup_ratio", "0.05",
        "--num_train_epochs", "20",
        "--retrieval_k", "128",
    ]),
    "coco": (256, [
        "--per_device_train_batch_size", "16",  # x 8 GPUs x 2 accumulation = 256
        "--learning_rate", "4.5e-6",
        "--warmup_ratio", "0.1",
        "--num_train_epochs", "30",
        "--retrieval_k", "256",
    ]),
}  # fmt: skip
SHARED_FLAGS = [
    "--weight_decay", "0.01",
    "--head_lr_multiplier", "5",
    "--cross_modal_lr_multiplier", "5",
    "--max_seq_length", "40",
    "--image_transform", "blip_randaug_wc",
]  # fmt: skip
# File / data-set names that say which data set a run reads (Karpathy's dataset_coco.json / dataset_flickr30k.json,
# the official coco_caption_karpathy_*.arrow / f30k_caption_karpathy_*.arrow, Hub names).
NAME_HINTS = (("coco", "coco"), ("flickr", "flickr30k"), ("f30k", "flickr30k"))


@dataclass
class RetrievalDataChoice:
    """The flags that choose the retrieval recipe, read before the full parse."""

    retrieval_dataset: str = "auto"
    train_file: list[str] | None = None
    validation_file: list[str] | None = None
    dataset_name: str | None = None


def retrieval_dataset(argv: list[str]) -> str:
    """ "flickr30k" or "coco": `--retrieval_dataset`, else what the data files' / data set's names say, else
    flickr30k."""
    choice = read_flags(RetrievalDataChoice, argv)
    if choice.retrieval_dataset != "auto":
        if choice.retrieval_dataset not in RECIPES:
            raise ValueError(f"--retrieval_dataset {choice.retrieval_dataset!r}: choose auto, flickr30k or coco.")
        return choice.retrieval_dataset
    names = [os.path.basename(str(n)).lower() for n in (choice.train_file or []) + (choice.validation_file or [])]
    names += [str(choice.dataset_name).lower()] if choice.dataset_name else []
    found = {dataset for name in names for hint, dataset in NAME_HINTS if hint in name}
    if len(found) > 1:
        raise ValueError(f"the data files name both COCO and Flickr30K ({names}): pass --retrieval_dataset.")
    return found.pop() if found else "flickr30k"


@dataclass
class RetrievalArguments(PretrainingArguments):
    retrieval_k: str = field(
        default="128",
        metadata={"help": "ITC candidates re-ranked by ITM per query at evaluation (the recipe: 128 Flickr30K, 256 "
                  "COCO), or 'all' (every pair through the cross-modal encoder)."},
    )  # fmt: skip
    retrieval_dataset: str = field(
        default="auto",
        metadata={"help": "Whose official recipe to run: flickr30k or coco (lr, total batch, warmup, epochs, k); "
                  "auto: the data files' names say (dataset_coco.json, coco_caption_karpathy_*), else flickr30k."},
    )  # fmt: skip


class RetrievalTask(PretrainTask):
    name = "retrieval"
    arguments_class = RetrievalArguments
    # Flickr30K's recipe; COCO's replaces it when the data is COCO (`choose_recipe`).
    official_total_batch = RECIPES["flickr30k"][0]
    recipe_flags = RECIPES["flickr30k"][1] + SHARED_FLAGS
    summary_metrics = (("RSUM", "eval_rsum"), ("IR@1", "eval_ir_r1"), ("TR@1", "eval_tr_r1"))
    paper_resolution = {(768, 16): 384}

    def choose_recipe(self, argv: list[str]) -> None:
        dataset = retrieval_dataset(argv)
        self.official_total_batch, flags = RECIPES[dataset]
        self.recipe_flags = flags + SHARED_FLAGS
        logger.info("retrieval: the official %s recipe (--retrieval_dataset overrides)", dataset)

    def resolve(self, task_args: RetrievalArguments, data_args) -> None:
        fixed_objectives(task_args, "itm,itc", self.name)
        if data_args.itm_negatives not in (None, "itc_hard"):
            raise ValueError("--task retrieval draws ITM negatives from ITC similarities: drop --itm_negatives.")
        super().resolve(task_args, data_args)

    def build_model(self, model_args, task_args, data_args, tokenizer):
        model = super().build_model(model_args, task_args, data_args, tokenizer)
        apply_paper_resolution(model, data_args, self.paper_resolution)
        return model

    def build_dataset(self, data_args, task_args, tokenizer, image_size, split, seed, skip_log):
        if split == "test":
            return None
        if data_args.dataset_format == "synthetic" and not (data_args.train_file or data_args.dataset_name):
            return task_dataset(self.name, data_args, tokenizer, image_size, split, seed, skip_log)
        return build_dataset(data_args, tokenizer, image_size, split, seed, skip_log)

    def collators(self, tokenizer, data_args, task_args, args):
        collator = PretrainingCollator(tokenizer, itm_negatives="itc_hard", mlm=False, itc_image_ids=True,
                                       seed=args.seed if data_args.deterministic_masking else None)  # fmt: skip
        return collator, collator

    def evaluate(self, trainer, dataset) -> dict:
        """IR@1/5/10, TR@1/5/10 and RSUM over the whole held-out split, every caption against every image."""
        data_args = trainer.data_args
        transform = ImageTransform(trainer.image_size, evaluation_transform(data_args.image_transform))
        builder = ExampleBuilder(trainer.processing_class, transform, data_args.max_seq_length)
        data = RetrievalData.from_records([dataset.record(i) for i in range(len(dataset))], builder)
        k = trainer.recipe_args.retrieval_k
        options = RetrievalOptions(
            k=k if k == "all" else int(k), batch_size=trainer.args.per_device_eval_batch_size,
            data_key=data.key, bf16=trainer.args.bf16, progress=not trainer.args.disable_tqdm,
        )  # fmt: skip
        metrics = evaluate_retrieval(trainer.model, data.images, data.captions, data.caption_to_image, options)
        return {f"eval_{name}": value for name, value in metrics.items()}
