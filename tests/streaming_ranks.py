"""Two gloo ranks (under torchrun) train and evaluate on unevenly sized tar shards: rank 0's training shard has 24
samples, rank 1's 8; its validation shard 12, rank 1's 4. Each rank prints one line (a single write: the ranks share
a pipe) with its steps, data epochs, evaluation batches and the gathered evaluation loss. Run by test_reliability.py:
`torchrun --nproc_per_node=2 streaming_ranks.py DATA_DIR TOKENIZER OUTPUT_DIR`."""

import os
import sys

import torch

from bridgetower_gaudi.device import leave_process_group
from bridgetower_gaudi.training.pretrain import build_trainer, parse_args


def main(data: str, tokenizer: str, output_dir: str) -> None:
    flags = ["--output_dir", output_dir, "--do_train", "--do_eval", "--max_steps", "6", "--use_cpu",
             "--train_file", os.path.join(data, "train-{0..1}.tar"),
             "--validation_file", os.path.join(data, "val-{0..1}.tar"), "--tokenizer_name", tokenizer,
             "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "4", "--max_seq_length", "16",
             "--itm_negatives", "in_batch", "--report_to", "none", "--save_strategy", "no",
             "--dataloader_num_workers", "0"]  # fmt: skip
    trainer = build_trainer(*parse_args(flags))
    trainer.train()
    eval_batches = sum(1 for _ in trainer.get_eval_dataloader())
    metrics = trainer.evaluate()
    rank = torch.distributed.get_rank()
    line = (f"RANK {rank} steps {trainer.state.global_step} epochs {trainer._train_stream.epoch} "
            f"eval_batches {eval_batches} eval_loss {metrics['eval_loss']:.6f}\n")  # fmt: skip
    sys.stdout.write(line)
    sys.stdout.flush()
    del trainer  # its DDP wrapper holds the process group, which leave_process_group frees
    leave_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:4])
