"""Evaluation metrics as pure functions of predictions and labels."""

from __future__ import annotations

import numpy as np


def itm_accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Share of pairs whose match / mismatch prediction is right."""
    return float((predictions == labels).mean()) if labels.size else float("nan")


def mlm_accuracy(predictions: np.ndarray, labels: np.ndarray, only_ids: set[int] | None = None) -> float:
    """Share of masked tokens (label != -100) predicted exactly; `only_ids` restricts to those target ids."""
    masked = labels != -100
    if only_ids is not None:
        masked &= np.isin(labels, list(only_ids))
    return float((predictions[masked] == labels[masked]).mean()) if masked.any() else float("nan")


def majority_baseline(labels: np.ndarray, word_classes: list[set[int]]) -> float:
    """Accuracy of always guessing the most frequent word of each target's class (e.g. colours, shapes): what the
    text alone allows when the class is all the text reveals."""
    correct = total = 0
    for ids in word_classes:
        targets = labels[np.isin(labels, list(ids))]
        if targets.size:
            correct += np.bincount(targets).max()
            total += targets.size
    return float(correct / total) if total else float("nan")
