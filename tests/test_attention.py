"""`--attn_implementation eager` (issue 19, the bf16 step on CPU): every layer's attention as explicit matmuls, as
transformers' eager attention. Under CPU bf16 autocast with dropout, torch's SDPA falls back to its math path in
fp32; eager keeps the attention matmuls in bf16. The same outputs as SDPA in fp32, and the flag reaches the model
on every device."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import bridgetower_gaudi as btg
import bridgetower_gaudi.training.pretrain as pretrain
from bridgetower_gaudi import device
from bridgetower_gaudi.device import GAUDI_ATTENTION
from tests.conftest import make_inputs, tiny_config


class MatmulDtypes(TorchDispatchMode):
    """Counts batched matmuls (the attention's: no Linear uses them) by input dtype."""

    def __init__(self):
        super().__init__()
        self.counts = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func._overloadpacket in (torch.ops.aten.bmm, torch.ops.aten.baddbmm):
            self.counts[args[0].dtype] = self.counts.get(args[0].dtype, 0) + 1
        return func(*args, **(kwargs or {}))


def test_eager_attention_equals_sdpa_in_every_layer():
    reference = btg.BridgeTowerModel(tiny_config()).eval()
    eager = btg.BridgeTowerModel(tiny_config(attn_implementation="eager")).eval()
    eager.load_state_dict(reference.state_dict())
    inputs = make_inputs(reference.config)  # the last caption padded: the masks must reach both paths
    with torch.no_grad():
        expected, got = reference(**inputs), eager(**inputs)
    torch.testing.assert_close(got.text_features, expected.text_features, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.image_features, expected.image_features, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.pooler_output, expected.pooler_output, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("implementation, fp32_matmuls", [("sdpa", True), ("eager", False)])
def test_eager_keeps_the_training_attention_in_bf16_on_cpu(implementation, fp32_matmuls):
    config = tiny_config(attn_implementation=implementation, cross_modal_attention_probs_dropout_prob=0.1)
    config.text_config.attention_probs_dropout_prob = 0.1  # the paper's dropout (the tiny preset has none)
    model = btg.BridgeTowerForPreTraining(config).train()
    inputs = make_inputs(model.config)
    labels = torch.full_like(inputs["input_ids"], -100)
    labels[:, 1:3] = inputs["input_ids"][:, 1:3]
    with MatmulDtypes() as seen:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(**inputs, labels=labels, itm_labels=torch.tensor([1, 0, 1])).loss
        loss.backward()
    # SDPA with dropout on the CPU computes q k^T and p v in fp32; eager computes them in bf16 and never in fp32.
    assert (seen.counts.get(torch.float32, 0) > 0) is fp32_matmuls
    assert (seen.counts.get(torch.bfloat16, 0) > 0) is not fp32_matmuls


def test_attn_implementation_reaches_the_model_on_the_cpu(tmp_path):
    model_args, data_args, pretraining_args, args = pretrain.parse_args(
        ["--output_dir", str(tmp_path), "--attn_implementation", "eager", "--max_steps", "1", "--report_to", "none"]
    )
    pretrain.apply_example_flags(model_args, pretraining_args, args)
    trainer = pretrain.build_trainer(model_args, data_args, pretraining_args, args)
    model = trainer.model.bridgetower
    assert model.config._attn_implementation == "eager"
    assert type(model.text_model.encoder.layer[0].attention.self).__name__ == "RobertaSelfAttention"
    assert model.vision_model.config._attn_implementation == "eager"


@pytest.mark.parametrize(
    "value, message", [(GAUDI_ATTENTION, "only work on Gaudi"), ("flash_attention_9", "pick sdpa")]
)
def test_attn_implementation_off_its_device_or_unknown_is_refused(tmp_path, value, message):
    model_args, data_args, pretraining_args, args = pretrain.parse_args(
        ["--output_dir", str(tmp_path), "--attn_implementation", value, "--report_to", "none"]
    )
    with pytest.raises(ValueError, match=message):  # main's order: the device's flags, then the example flags
        args = device.resolve_training_arguments(args)
        pretrain.apply_example_flags(model_args, pretraining_args, args)
        pretrain.build_trainer(model_args, data_args, pretraining_args, args)
    assert not list(tmp_path.iterdir())
