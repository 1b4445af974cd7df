"""Experiments built on the training run: the paper's ablations (`ablation`)."""
