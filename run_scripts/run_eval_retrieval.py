#!/usr/bin/env python
"""Image-text retrieval evaluation (IR@1/5/10, TR@1/5/10, RSUM) of a BridgeTower checkpoint.

python run_scripts/run_eval_retrieval.py --model_name_or_path DIR --data_file dataset_flickr30k.json \
    --image_root flickr30k-images --split test --k 128 --cache_dir cache/ --output_dir out/
python run_scripts/run_eval_retrieval.py --model_name_or_path DIR --k all      # synthetic data, every pair
torchrun --nproc_per_node 8 run_scripts/run_eval_retrieval.py ...             # ranks split the images
python run_scripts/run_eval_retrieval.py --help                               # every flag

The method: bridgetower_gaudi/evaluation/retrieval/__init__.py.
"""

import os

# Gaudi: lazy mode (HPU graphs) must be chosen before torch is first imported; elsewhere it means nothing.
os.environ.setdefault("PT_HPU_LAZY_MODE", "1")
# The captions are tokenized before the image-decoding workers fork: the tokenizer's threads must not be live then.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from bridgetower_gaudi.evaluation.retrieval import main  # noqa: E402 (after the environment above)

if __name__ == "__main__":
    main()
