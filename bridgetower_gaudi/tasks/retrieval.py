"""Image-text retrieval (Flickr30K, COCO Karpathy splits): ITC + ITM on ITC-sampled hard negatives, ITC targets soft
over the captions of the same image (the official `compute_itm_itc(pretrain=False)`,
`task_finetune_irtr_itm_itc_f30k_clip_bert`, scripts/ftfpt_base_irtr_itm_itc_flickr.sh); evaluated by IR@K / TR@K /
RSUM with the fast top-k re-ranking of `evaluation.retrieval`."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..data import ExampleBuilder, ImageTransform, PretrainingCollator, build_dataset
from ..data.images import evaluation_transform
from ..evaluation.retrieval import RetrievalData, evaluate_retrieval
from ..training.arguments import PretrainingArguments
from .finetune import apply_paper_resolution, task_dataset
from .pretrain import PretrainTask, _fixed_objectives


@dataclass
class RetrievalArguments(PretrainingArguments):
    retrieval_k: str = field(
        default="128",
        metadata={"help": "ITC candidates re-ranked by ITM per query at evaluation (official: 128 Flickr30K, 256 "
                  "COCO), or 'all' (every pair through the cross-modal encoder)."},
    )  # fmt: skip


class RetrievalTask(PretrainTask):
    name = "retrieval"
    arguments_class = RetrievalArguments
    recipe_flags = [
        "--learning_rate", "5e-6",  # COCO: 4.5e-6, warmup 0.1, 30 epochs
        "--warmup_ratio", "0.05",
        "--weight_decay", "0.01",
        "--head_lr_multiplier", "5",
        "--cross_modal_lr_multiplier", "5",
        "--num_train_epochs", "20",
        "--max_seq_length", "40",
        "--image_transform", "blip_randaug_wc",
    ]  # fmt: skip
    summary_metrics = (("RSUM", "eval_rsum"), ("IR@1", "eval_ir_r1"), ("TR@1", "eval_tr_r1"))
    paper_resolution = {(768, 16): 384}

    def resolve(self, task_args: RetrievalArguments, data_args) -> None:
        _fixed_objectives(task_args, "itm,itc", self.name)
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
        metrics = evaluate_retrieval(
            trainer.model, data.images, data.captions, data.caption_to_image,
            k=k if k == "all" else int(k), batch_size=trainer.args.per_device_eval_batch_size,
            data_key=data.key, bf16=trainer.args.bf16, progress=not trainer.args.disable_tqdm,
        )  # fmt: skip
        return {f"eval_{name}": value for name, value in metrics.items()}
