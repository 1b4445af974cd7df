#!/usr/bin/env python
"""Pre-train BridgeTower (MLM + ITM[, ITC]) on Gaudi (`--use_habana`), CUDA or CPU.

python run_scripts/run_pretrain.py                      # embedded default: tiny model, synthetic data
python run_scripts/run_pretrain.py --use_habana ...     # Gaudi, GaudiTrainer
python run_scripts/run_pretrain.py --help               # every flag
"""

from bridgetower_gaudi.training.pretrain import main

if __name__ == "__main__":
    main()
