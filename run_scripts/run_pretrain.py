#!/usr/bin/env python
"""Pre-train BridgeTower (MLM + ITM[, ITC]) on Gaudi (`--use_habana`), CUDA or CPU.

python run_scripts/run_pretrain.py                      # embedded default: tiny model, synthetic data
python run_scripts/run_pretrain.py --use_habana ...     # Gaudi, GaudiTrainer, lazy mode
python run_scripts/run_pretrain.py --help               # every flag
"""

import os

# Gaudi: lazy mode (what HPU graphs and optimum-habana's published runs use) must be chosen before torch is first
# imported; Synapse 1.24 defaults to eager. An explicit PT_HPU_LAZY_MODE (0 for eager + torch.compile) is kept.
# Elsewhere the variable means nothing.
os.environ.setdefault("PT_HPU_LAZY_MODE", "1")

from bridgetower_gaudi.training.pretrain import main  # noqa: E402 (after the environment above)

if __name__ == "__main__":
    main()
