"""Shared helpers: tiny configs and inputs. Everything is offline; checkpoints are written to tmp dirs."""

from __future__ import annotations

import os

import pytest
import torch
import transformers
from hypothesis import settings

from bridgetower_gaudi import PRESETS, BridgeTowerConfig
from bridgetower_gaudi.modeling.layers import CrossModalSelfAttention

# Tokenizers are used in the main process, then in forked data-loader workers.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One torch thread per test process: on 2 cores more threads fight the data-loader workers, and the training tests'
# trajectories (and so their learned-accuracy assertions) then depend on the machine's core count.
torch.set_num_threads(1)

# Hypothesis (tests/test_properties.py): the same inputs on every run by default, and always under CI (the `CI`
# variable, set by .ci/run and by CI services): a rare input cannot fail one run and pass the next, and a fresh clone
# has no example database. `HYPOTHESIS_PROFILE=random` draws new inputs for local exploration and prints the blob
# that reproduces a failure (@reproduce_failure).
# Both from hypothesis' own defaults: this file is imported twice (as pytest's conftest and as tests.conftest), and a
# profile registered without a parent would inherit whichever profile the first import loaded.
DEFAULTS = settings.get_profile("default")
settings.register_profile("ci", parent=DEFAULTS, derandomize=True, database=None, print_blob=True)
settings.register_profile("random", parent=DEFAULTS, print_blob=True)


def hypothesis_profile(environ) -> str:
    """The profile a run gets: "ci" under CI whatever HYPOTHESIS_PROFILE says, else HYPOTHESIS_PROFILE or "ci"."""
    if environ.get("CI", "").lower() not in ("", "0", "false"):
        return "ci"
    return environ.get("HYPOTHESIS_PROFILE") or "ci"


settings.load_profile(hypothesis_profile(os.environ))

TINY_ITC = dict(contrastive_hidden_size=32, logit_scale_init_value=2.6592)
# The LayerNorm epsilons transformers' BridgeTower uses (ours default to the official 1e-12 in the cross-modal layers
# and the MLM transform): with these, our models compute exactly what transformers' do.
TRANSFORMERS_EPS = dict(cross_modal_layer_norm_eps=1e-5, mlm_head_layer_norm_eps=1e-5)


# Batch 64, in-batch negatives, the tiny synthetic runs' init (initializer_factor 2.5): ITM is learned by then
# (measured), MLM colours much earlier. With the official 0.02 init, ITM leaves chance after a seed-dependent
# 200-600+ steps.
PRETRAIN_STEPS = 600


@pytest.fixture(scope="session")
def pretrained_checkpoint(tmp_path_factory) -> str:
    """A tiny BridgeTower pre-trained once per test session on the synthetic shapes (MLM + ITM) with the synthetic
    tokenizer: the inference and fine-tuning tests start from it."""
    from bridgetower_gaudi.tasks.pretrain import TINY_SYNTHETIC_INITIALIZER_FACTOR as FACTOR
    from bridgetower_gaudi.training.pretrain import main

    output_dir = tmp_path_factory.mktemp("pretrained") / "checkpoint"
    main(
        ["--config_name", "tiny", "--config_overrides", f"initializer_factor={FACTOR}", "--dataset_format",
         "synthetic", "--do_train", "--max_steps", str(PRETRAIN_STEPS),
         "--per_device_train_batch_size", "64", "--max_seq_length", "16", "--synthetic_train_size",
         str(64 * PRETRAIN_STEPS), "--itm_negatives", "in_batch",
         "--report_to", "none", "--save_strategy", "no", "--learning_rate", "5e-4", "--dataloader_num_workers", "0",
         "--seed", "0", "--output_dir", str(output_dir)]
    )  # fmt: skip
    return str(output_dir)


@pytest.fixture(scope="session")
def task_tokenizer(tmp_path_factory) -> str:
    """The synthetic tokenizer with the downstream tasks' words appended (ids of the others unchanged)."""
    from bridgetower_gaudi.data.synthetic import synthetic_tokenizer

    path = tmp_path_factory.mktemp("task_tokenizer")
    synthetic_tokenizer(task_words=True).save_pretrained(path)
    return str(path)


def tiny_config(**overrides) -> BridgeTowerConfig:
    return BridgeTowerConfig(**{**PRESETS["tiny"], **TINY_ITC, **overrides})


def tiny_hf_config(**overrides) -> transformers.BridgeTowerConfig:
    return transformers.BridgeTowerConfig(**{**PRESETS["tiny"], **TINY_ITC, **overrides})


def without_last_cross_modal_dropout(model) -> None:
    """No dropout in the last cross-modal layer, for tests that compare a pooled head with the full computation
    under one seed. Pooled heads (our pre-training ITM pass, ITM, VQA, SNLI-VE, NLVR2) run that layer at [CLS] only,
    so they draw its dropout masks at one position where the full layer draws them at every position: the same
    math, other draws. Every other layer keeps its dropout, so such a test still checks the order of every other
    draw."""
    for layer in (model.bridgetower.cross_modal_text_layers[-1], model.bridgetower.cross_modal_image_layers[-1]):
        for module in layer.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
            elif isinstance(module, CrossModalSelfAttention):
                module.dropout_p = 0.0


def make_inputs(config, batch: int = 3, seq: int = 12, seed: int = 0, pad_from: int | None = 8) -> dict:
    """Random captions (the last row padded from `pad_from`) and images at the config's size."""
    generator = torch.Generator().manual_seed(seed)
    vocab = config.text_config.vocab_size
    input_ids = torch.randint(3, vocab, (batch, seq), generator=generator)
    input_ids[:, 0] = config.text_config.bos_token_id
    attention_mask = torch.ones_like(input_ids)
    if pad_from is not None:
        input_ids[-1, pad_from:] = config.text_config.pad_token_id
        attention_mask[-1, pad_from:] = 0
    size = config.vision_config.image_size
    pixel_values = torch.randn(batch, 3, size, size, generator=generator)
    return dict(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _environment_restored():
    """Each test gets the environment back as it found it: transformers' TrainingArguments writes
    ACCELERATE_MIXED_PRECISION=bf16 for `--bf16`, and every later Trainer in the process then ran in bf16 autocast
    (7x slower on this CPU, and not the precision the test asked for)."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)
