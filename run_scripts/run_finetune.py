#!/usr/bin/env python
"""Fine-tune BridgeTower on a downstream task on Gaudi (`--use_habana`), CUDA or CPU.

python run_scripts/run_finetune.py --task vqa --model_name_or_path CKPT --dataset_format vqa_v2 ...
python run_scripts/run_finetune.py --task nlvr2 --config_name tiny --do_train --do_eval --output_dir out  # synthetic
python run_scripts/run_finetune.py --task retrieval --help        # every flag of a task
Tasks: itm, mlm, retrieval, vqa, snli_ve, nlvr2 (docs/guides/fine-tuning.md).
"""

import os

# Gaudi: lazy mode (what HPU graphs and optimum-habana's published runs use) must be chosen before torch is first
# imported; Synapse 1.24 defaults to eager. An explicit PT_HPU_LAZY_MODE (0 for eager + torch.compile) is kept.
# Elsewhere the variable means nothing.
os.environ.setdefault("PT_HPU_LAZY_MODE", "1")

from bridgetower_gaudi.training.finetune import main  # noqa: E402 (after the environment above)

if __name__ == "__main__":
    main()
