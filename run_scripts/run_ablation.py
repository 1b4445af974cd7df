#!/usr/bin/env python
"""The paper's ablations (Design I-III, backbones) as one command: one model per grid point, a table per grid.

python run_scripts/run_ablation.py --grid bridge_type                     # Design I, tiny model, synthetic data
python run_scripts/run_ablation.py --grid num_cross_layers --parallel 2   # Design II, two runs at once
python run_scripts/run_ablation.py --grid num_bridges --values 0,2 --seeds 5 --max_steps 600
python run_scripts/run_ablation.py --grid backbones --values CLIP_DIR+ROBERTA_DIR,VIT_DIR+BERT_DIR ...data flags...

Every flag it does not know goes to run_pretrain.py (data, training, model flags). Tables: OUTPUT_DIR/GRID/.
"""

from bridgetower_gaudi.experiments.ablation import main

if __name__ == "__main__":
    main()
