"""Which attributes a checkpoint's ITM head checks, on the synthetic "shapes" source: every colour x shape x position
caption ("a red circle on the left") is scored against its own image and against three images that differ from it
in one attribute only (another colour, shape or position). Prints the share of matching pairs accepted and, per
attribute, the share of one-attribute swaps rejected (ITM probability 0.5 as the threshold).

    python benchmarks/itm_swap_probe.py outputs/pretrain-tiny-synthetic

A head that checks colour only rejects every colour swap and no shape or position swap: on random held-out negatives
it then scores what colour alone scores (docs/results/default-run.md has the measured figures).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bridgetower_gaudi.data.synthetic import COLORS, POSITIONS, SHAPES, draw_shape  # noqa: E402

ATTRIBUTES = {"colour": list(COLORS), "shape": list(SHAPES), "position": list(POSITIONS)}


def swap_probe(pipeline, seed: int = 0, image_size: int = 64) -> dict[str, float]:
    """{"match": share of own images accepted, "colour" / "shape" / "position": share of swaps rejected}."""
    rng = np.random.default_rng(seed)

    def image(colour: str, shape: str, position: str):
        drawn = {"color": colour, "shape": shape, "position": position, "jitter": rng.uniform(-0.06, 0.06, 2)}
        return draw_shape({**drawn, "noise_seed": int(rng.integers(2**31))}, image_size)

    verdicts = {"match": [], **{name: [] for name in ATTRIBUTES}}
    for caption_attributes in itertools.product(*ATTRIBUTES.values()):
        text = "a {} {} on the {}".format(*caption_attributes)
        images = [image(*caption_attributes)]
        for slot, values in enumerate(ATTRIBUTES.values()):
            others = [v for v in values if v != caption_attributes[slot]]
            swapped = list(caption_attributes)
            swapped[slot] = others[rng.integers(len(others))]
            images.append(image(*swapped))
        own, *swaps = (row[0]["itm"] for row in pipeline.score(images, [text]))
        verdicts["match"].append(own > 0.5)
        for name, score in zip(ATTRIBUTES, swaps, strict=True):
            verdicts[name].append(score < 0.5)
    return {name: float(np.mean(values)) for name, values in verdicts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="A BridgeTowerForPreTraining folder trained on the synthetic source.")
    parser.add_argument("--seed", type=int, default=0, help="Draws of the swapped attributes, jitter and noise.")
    args = parser.parse_args()
    from bridgetower_gaudi.pipeline import BridgeTowerPipeline

    pipeline = BridgeTowerPipeline.from_pretrained(args.checkpoint, device="cpu")
    print(json.dumps({"checkpoint": args.checkpoint, **swap_probe(pipeline, args.seed)}))


if __name__ == "__main__":
    main()
