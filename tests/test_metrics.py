"""Metrics are pure functions: checked against hand-computed cases."""

import numpy as np

from bridgetower_gaudi.training.metrics import itm_accuracy, majority_baseline, mlm_accuracy


def test_itm_accuracy():
    assert itm_accuracy(np.array([1, 0, 1, 1]), np.array([1, 0, 0, 1])) == 0.75


def test_mlm_accuracy_counts_only_masked_tokens_and_can_restrict_to_ids():
    labels = np.array([[-100, 5, 7, -100], [9, -100, 5, -100]])
    predictions = np.array([[3, 5, 8, 1], [9, 0, 4, 2]])
    assert mlm_accuracy(predictions, labels) == 0.5  # 5 right, 7 wrong, 9 right, 5 wrong
    assert mlm_accuracy(predictions, labels, only_ids={5}) == 0.5
    assert mlm_accuracy(predictions, labels, only_ids={9}) == 1.0


def test_majority_baseline_guesses_the_most_frequent_word_of_each_class():
    colors, shapes = {1, 2}, {3, 4, 5}
    labels = np.array([1, 1, 1, 2, 3, 4, 4, -100, 9])
    # colours: guess 1 -> 3 of 4; shapes: guess 4 -> 2 of 3; 5 of 7 overall
    assert abs(majority_baseline(labels, [colors, shapes]) - 5 / 7) < 1e-12
