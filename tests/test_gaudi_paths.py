"""The Gaudi path's start-up, flags, attention and install, checked on CPU in-process (no optimum-habana import:
the parts that need it run in test_gaudi_contract.py's subprocess)."""

import json
import os
import sys
from types import SimpleNamespace

import pytest
import tomllib
import torch

import bridgetower_gaudi.device as device
import bridgetower_gaudi.training.pretrain as pretrain
import bridgetower_gaudi.training.run as run_module
from bridgetower_gaudi import BridgeTowerModel
from bridgetower_gaudi.device import DEFAULT_GAUDI_CONFIG, GAUDI_ATTENTION
from bridgetower_gaudi.device.attention import register_tower_attention
from bridgetower_gaudi.training.arguments import BridgeTowerTrainingArguments
from tests.conftest import make_inputs, tiny_config
from tests.processes import child_environment, failure_report, run_checked

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ChoseGaudi(Exception):
    pass


def _choose_gaudi():
    raise ChoseGaudi


# (1) GaudiConfig: shipped in the package, Habana/clip's three keys, passed in before the Gaudi arguments are built.
def test_gaudi_config_ships_in_the_package_with_three_keys():
    assert os.path.dirname(DEFAULT_GAUDI_CONFIG) == os.path.join(ROOT, "bridgetower_gaudi", "device")
    with open(DEFAULT_GAUDI_CONFIG) as f:
        assert json.load(f) == {"use_fused_adam": True, "use_fused_clip_norm": True, "use_torch_autocast": True}
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        package_data = tomllib.load(f)["tool"]["setuptools"]["package-data"]
    assert "gaudi_config.json" in package_data["bridgetower_gaudi.device"]
    assert not os.path.exists(os.path.join(ROOT, "run_scripts", "gaudi_config.json"))


@pytest.fixture
def gaudi_as_plain(monkeypatch):
    """`--use_habana` parsed into BridgeTowerTrainingArguments (the Gaudi class needs Gaudi software)."""
    monkeypatch.setattr(run_module, "gaudi_training_arguments_class", lambda: BridgeTowerTrainingArguments)


def test_use_habana_passes_the_gaudi_config_and_attention_before_the_arguments_are_built(tmp_path, gaudi_as_plain):
    *_, args = pretrain.parse_args(["--use_habana", "--use_flash_attention", "--output_dir", str(tmp_path)])
    assert args.gaudi_config_name == DEFAULT_GAUDI_CONFIG and args.attn_implementation == GAUDI_ATTENTION
    *_, args = pretrain.parse_args(["--use_habana", "--gaudi_config_name", "mine.json", "--output_dir", str(tmp_path)])
    assert args.gaudi_config_name == "mine.json" and args.attn_implementation is None


# (2) Lazy mode: set by run_pretrain.py before torch is imported; refused clearly when switched off.
def test_run_pretrain_sets_lazy_mode_before_torch_is_imported():
    probe = (
        "import importlib.abc, os, runpy, sys\n"
        "seen = []\n"
        "class Probe(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name == 'torch' and not seen: seen.append(os.environ.get('PT_HPU_LAZY_MODE'))\n"
        "sys.meta_path.insert(0, Probe())\n"
        f"sys.argv = ['run_pretrain.py', '--help']\n"
        "try:\n"
        f"    runpy.run_path({os.path.join(ROOT, 'run_scripts', 'run_pretrain.py')!r}, run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('LAZY', seen)\n"
    )
    env = {k: v for k, v in child_environment().items() if k != "PT_HPU_LAZY_MODE"}
    done = run_checked([sys.executable, "-c", probe], env=env, timeout=300)
    assert "LAZY ['1']" in done.stdout, failure_report(done)


def _gaudi_args(**overrides):
    fields = dict(use_habana=True, use_lazy_mode=True, torch_compile=False, torch_compile_backend=None,
                  mediapipe_dataloader=False, flash_attention_recompute=False, attn_implementation=None,
                  deepspeed=None, use_hpu_graphs_for_training=False, world_size=1)  # fmt: skip
    return SimpleNamespace(**{**fields, **overrides})


@pytest.mark.parametrize("value", ["0", None])
def test_lazy_mode_without_the_environment_is_refused(monkeypatch, value):
    if value is None:
        monkeypatch.delenv("PT_HPU_LAZY_MODE", raising=False)
    else:
        monkeypatch.setenv("PT_HPU_LAZY_MODE", value)
    with pytest.raises(ValueError, match="PT_HPU_LAZY_MODE=1"):
        device.check_gaudi_arguments(_gaudi_args())
    monkeypatch.setenv("PT_HPU_LAZY_MODE", "1")
    device.check_gaudi_arguments(_gaudi_args())


# (7) A Gaudi machine without --use_habana is refused instead of training on the CPU.
def test_hpu_machine_requires_use_habana(tmp_path, monkeypatch):
    monkeypatch.setattr(device, "is_torch_hpu_available", lambda: True)
    with pytest.raises(ValueError, match="add --use_habana"):
        pretrain.parse_args(["--bf16", "--output_dir", str(tmp_path)])
    *_, args = pretrain.parse_args(["--bf16", "--use_cpu", "--output_dir", str(tmp_path)])  # the CPU on purpose
    assert args.use_cpu


# (8) Every spelling of --use_habana, and a JSON file, choose the Gaudi arguments; without Gaudi software, the fix.
@pytest.mark.parametrize("flags", [["--use_habana"], ["--use_habana=True"], ["--use_habana", "True"]])
def test_use_habana_spellings_choose_gaudi_arguments(tmp_path, monkeypatch, flags):
    monkeypatch.setattr(run_module, "gaudi_training_arguments_class", _choose_gaudi)
    with pytest.raises(ChoseGaudi):
        pretrain.parse_args([*flags, "--output_dir", str(tmp_path)])


def test_json_argument_file_chooses_gaudi_arguments(tmp_path, monkeypatch):
    monkeypatch.setattr(run_module, "gaudi_training_arguments_class", _choose_gaudi)
    path = tmp_path / "args.json"
    path.write_text(json.dumps({"use_habana": True, "output_dir": str(tmp_path)}))
    with pytest.raises(ChoseGaudi):
        pretrain.parse_args([str(path)])
    path.write_text(json.dumps({"use_habana": False, "output_dir": str(tmp_path), "max_steps": 3}))
    *_, args = pretrain.parse_args([str(path)])
    assert not args.use_habana and args.max_steps == 3


def test_use_habana_without_gaudi_software_says_what_is_missing(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        pretrain.main(["--use_habana", "--output_dir", str(tmp_path)])
    message = str(exit_info.value)
    assert "habana_frameworks" in message and "drop --use_habana" in message


# (5) Towers: a kernel registered under a name serves CLIP, RoBERTa and BERT with each one's own scale.
@pytest.mark.parametrize("backbone", ["roberta", "bert"])
def test_registered_attention_serves_every_tower_with_the_right_scale(backbone):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    calls = []

    def recording(module, query, key, value, attention_mask, **kwargs):
        calls.append((type(module).__name__, query.shape[-1], kwargs["scaling"]))
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    register_tower_attention("test_recording_sdpa", recording)
    reference = BridgeTowerModel(tiny_config(text_backbone=backbone)).eval()
    registered = BridgeTowerModel(tiny_config(text_backbone=backbone, attn_implementation="test_recording_sdpa")).eval()
    registered.load_state_dict(reference.state_dict())
    inputs = make_inputs(reference.config)
    with torch.no_grad():
        expected, got = reference(**inputs), registered(**inputs)
    torch.testing.assert_close(got.pooler_output, expected.pooler_output, rtol=1e-5, atol=1e-5)
    towers = {name for name, _, _ in calls}
    assert "CLIPAttention" in towers and any(backbone.capitalize() in name for name in towers)
    assert all(scale == pytest.approx(head_dim**-0.5) for _, head_dim, scale in calls)


# (9) optimum-habana's example flags.
def test_example_flags_are_accepted_and_applied(tmp_path):
    model_args, data_args, pretraining_args, args = pretrain.parse_args(
        ["--output_dir", str(tmp_path), "--do_train", "--do_eval", "--max_train_samples", "8", "--max_eval_samples",
         "4", "--freeze_vision_model", "--freeze_text_model", "--trust_remote_code", "True", "--synthetic_train_size",
         "32", "--synthetic_eval_size", "16", "--max_seq_length", "16", "--report_to", "none"]
    )  # fmt: skip
    pretrain.apply_example_flags(model_args, pretraining_args, args)
    assert pretraining_args.freeze_vision_tower and pretraining_args.freeze_text_tower
    trainer = pretrain.build_trainer(model_args, data_args, pretraining_args, args)
    pretrain.limit_samples(trainer, args)
    assert len(trainer.train_dataset) == 8 and len(trainer.eval_dataset) == 4
    assert args.per_device_train_batch_size == 8 and len(trainer.get_train_dataloader()) == 1  # 8 samples, not 32


def test_hub_flags_download_at_the_revision_into_the_cache(tmp_path, monkeypatch):
    import huggingface_hub

    calls = []
    monkeypatch.setattr(
        huggingface_hub, "snapshot_download", lambda repo, **kw: calls.append((repo, kw)) or str(tmp_path / repo)
    )
    model_args = SimpleNamespace(model_name_or_path=None, vision_model_name_or_path="org/clip",
                                 text_model_name_or_path=str(tmp_path), tokenizer_name=None)  # fmt: skip
    pretrain.resolve_hub_models(model_args, str(tmp_path / "cache"), "v1", "secret")
    assert calls == [("org/clip", {"revision": "v1", "cache_dir": str(tmp_path / "cache"), "token": "secret"})]
    assert model_args.vision_model_name_or_path == str(tmp_path / "org/clip")
    assert model_args.text_model_name_or_path == str(tmp_path)  # local paths stay


@pytest.mark.parametrize(
    "flags, message",
    [(["--do_predict"], "--do_predict"), (["--image_processor_name", "openai/clip"], "--image_processor_name")],
)
def test_example_flags_we_cannot_honour_are_refused(tmp_path, flags, message):
    """Before anything is built or written (pre-training has no test-set prediction step)."""
    model_args, data_args, pretraining_args, args = pretrain.parse_args(["--output_dir", str(tmp_path), *flags])
    with pytest.raises(ValueError, match=message):
        pretrain.apply_example_flags(model_args, pretraining_args, args)
        pretrain.build_trainer(model_args, data_args, pretraining_args, args)
    assert not os.listdir(tmp_path)


def test_mediapipe_dataloader_is_refused_clearly(tmp_path, monkeypatch):
    monkeypatch.setenv("PT_HPU_LAZY_MODE", "1")
    with pytest.raises(ValueError, match="media-pipe"):
        device.check_gaudi_arguments(_gaudi_args(mediapipe_dataloader=True))
    *_, args = pretrain.parse_args(["--output_dir", str(tmp_path), "--mediapipe_dataloader"])
    with pytest.raises(ValueError, match="only work on Gaudi"):
        device.resolve_training_arguments(args)


def test_gaudi_example_flags_parse_on_every_device(tmp_path):
    flags = ["--sdp_on_bf16", "--pipelining_fwd_bwd", "--non_blocking_data_copy", "--adjust_throughput",
             "--distribution_strategy", "fast_ddp", "--cache_dir", "c", "--model_revision", "r",
             "--token", "t"]  # fmt: skip
    *_, args = pretrain.parse_args(["--output_dir", str(tmp_path), *flags])
    assert args.sdp_on_bf16 and args.distribution_strategy == "fast_ddp" and args.model_revision == "r"


# (6) DeepSpeed: optimum-habana's Gaudi ZeRO settings; Habana's fork, never upstream's pin, on Gaudi.
def test_deepspeed_configs_follow_optimum_habanas_gaudi_configs():
    def zero(stage):
        with open(os.path.join(ROOT, "run_scripts", f"ds_zero{stage}.json")) as f:
            return json.load(f)["zero_optimization"]

    assert zero(1) == {"stage": 1}
    assert zero(2) == {"stage": 2, "overlap_comm": False, "reduce_scatter": False, "contiguous_gradients": False}
    assert zero(3)["overlap_comm"] and zero(3)["contiguous_gradients"]
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        hpu_extra = tomllib.load(f)["project"]["optional-dependencies"]["hpu"]
    assert not any(dep.startswith("deepspeed") for dep in hpu_extra)


# (10) setup.sh --hpu keeps the image's torch / habana packages through a constraints file, and installs Habana's
# DeepSpeed fork at the image's Synapse release (the version table's when the image does not say).
@pytest.mark.parametrize("plugin, release", [(None, device.GAUDI_STACK["synapse"]), ("1.23.0.543", "1.23.0")])
def test_setup_hpu_pins_the_image_and_installs_habanas_deepspeed_at_its_release(tmp_path, plugin, release):
    path = os.environ.get("PYTHONPATH", "")
    if plugin:  # what Intel's image has: habana-torch-plugin, whose version is the Synapse release
        info = tmp_path / "image" / f"habana_torch_plugin-{plugin}.dist-info"
        info.mkdir(parents=True)
        info.joinpath("METADATA").write_text(f"Metadata-Version: 2.1\nName: habana-torch-plugin\nVersion: {plugin}\n")
        path = os.pathsep.join(filter(None, [str(tmp_path / "image"), path]))
    constraints = tmp_path / "c.txt"
    env = {**child_environment(PYTHON=sys.executable, SETUP_DRY_RUN="1", SETUP_CONSTRAINTS=str(constraints)),
           "PYTHONPATH": path}  # fmt: skip
    done = run_checked(["bash", os.path.join(ROOT, "run_scripts", "setup.sh"), "--hpu"], env=env, timeout=120)
    pinned = constraints.read_text().lower().split()
    assert f"torch=={torch.__version__}".lower() in pinned
    assert (f"habana-torch-plugin=={plugin}" in pinned) == bool(plugin)
    pip = f"{sys.executable} -m pip install --quiet -c {constraints}"
    assert done.stdout.splitlines()[1:] == [
        f"{pip} -e .[hpu]",
        f"{pip} git+https://github.com/HabanaAI/DeepSpeed.git@{release}",
    ]


def test_device_package_imports_nothing_from_training():
    """The layering: training/ builds on device/, never the other way round."""
    folder = os.path.join(ROOT, "bridgetower_gaudi", "device")
    for name in os.listdir(folder):
        if name.endswith(".py"):
            with open(os.path.join(folder, name)) as f:
                source = f.read()
            assert "..training" not in source and "bridgetower_gaudi.training" not in source, name


# Issue 20 (2): a container that cannot write fails at once, naming the folder, before anything is built or written.
def _refuse_writes_under(monkeypatch, folder):
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: path != str(folder) and real_access(path, mode))


def test_unwritable_output_dir_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    folder = tmp_path / "mounted-by-docker"
    folder.mkdir()
    _refuse_writes_under(monkeypatch, folder)
    flags = ["--do_train", "--max_steps", "1", "--synthetic_train_size", "8", "--report_to", "none"]
    with pytest.raises(ValueError, match=f"--output_dir '{folder / 'run'}' is not writable.*{folder}.*--user"):
        pretrain.main(["--output_dir", str(folder / "run"), *flags])
    assert not os.listdir(folder)
    afile = tmp_path / "a-file"
    afile.write_text("")
    assert "is a file" in device.unwritable_directory_problem(str(afile / "run"), "--output_dir")
    assert device.unwritable_directory_problem(str(tmp_path / "new" / "run"), "--output_dir") is None


def test_unwritable_habana_log_folder_is_refused_on_gaudi(tmp_path, monkeypatch):
    monkeypatch.setenv("PT_HPU_LAZY_MODE", "1")
    monkeypatch.setenv("HABANA_LOGS", str(tmp_path / "habana_logs"))
    device.check_gaudi_arguments(_gaudi_args())  # created on first use: its parent is writable
    _refuse_writes_under(monkeypatch, tmp_path)
    with pytest.raises(ValueError, match="HABANA_LOGS .*habana_logs.* is not writable"):
        device.check_gaudi_arguments(_gaudi_args())


# Issue 20 (3): --deepspeed on Gaudi needs Habana's fork at the Synapse release, named with its install command.
@pytest.mark.parametrize(
    "deepspeed, problem",
    [
        ("0.19.8", "is not Habana's fork"),
        (None, "DeepSpeed is not installed"),
        ("0.16.1+hpu.synapse.v1.22.0", "built for Synapse 1.22.0, this machine runs Synapse 1.24.0"),
        ("0.16.1+hpu.synapse.v1.24.0", None),
    ],
)
def test_deepspeed_on_gaudi_must_be_habanas_fork(monkeypatch, deepspeed, problem):
    versions = {"deepspeed": deepspeed, "habana-torch-plugin": "1.24.0"}
    monkeypatch.setattr(device, "installed_version", versions.get)
    monkeypatch.setenv("PT_HPU_LAZY_MODE", "1")
    monkeypatch.delenv("HABANA_LOGS", raising=False)
    if problem is None:
        device.check_gaudi_arguments(_gaudi_args(deepspeed="ds.json"))
        return
    with pytest.raises(ValueError, match=problem) as error:
        device.check_gaudi_arguments(_gaudi_args(deepspeed="ds.json"))
    assert "python -m pip install git+https://github.com/HabanaAI/DeepSpeed.git@1.24.0" in str(error.value)
    device.check_gaudi_arguments(_gaudi_args())  # without --deepspeed nothing is asked of DeepSpeed


def test_pypis_deepspeed_is_refused_before_the_gaudi_arguments_set_it_up(tmp_path, monkeypatch):
    monkeypatch.setattr(device, "installed_version", {"deepspeed": "0.19.8", "habana-torch-plugin": "1.24.0"}.get)
    monkeypatch.setattr(run_module, "gaudi_training_arguments_class", _choose_gaudi)
    with pytest.raises(ValueError, match="not Habana's fork"):
        pretrain.parse_args(["--use_habana", "--deepspeed", "run_scripts/ds_zero2.json", "--output_dir", str(tmp_path)])


def test_no_extra_for_gaudi_pulls_pypis_deepspeed():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        extras = tomllib.load(f)["project"]["optional-dependencies"]
    assert extras["hpu"] == [f"optimum-habana=={device.GAUDI_STACK['optimum-habana']}"]
    assert "deepspeed" not in extras  # `.[hpu,deepspeed]` would put PyPI's over Habana's fork


# Issue 20 (4): HPU graphs for training with ITC across cards need lazy collectives, set before the run starts.
def test_hpu_graphs_with_itc_across_cards_need_lazy_collectives(tmp_path, monkeypatch, gaudi_as_plain):
    monkeypatch.delenv("PT_HPU_ENABLE_LAZY_COLLECTIVES", raising=False)
    monkeypatch.setattr(BridgeTowerTrainingArguments, "world_size", 8)
    flags = ["--use_habana", "--use_hpu_graphs_for_training", "--do_train", "--objectives", "mlm,itm,itc",
             "--report_to", "none", "--output_dir", str(tmp_path / "run")]  # fmt: skip
    model_args, data_args, pretraining_args, args = pretrain.parse_args(flags)
    with pytest.raises(ValueError, match="PT_HPU_ENABLE_LAZY_COLLECTIVES=true"):
        pretrain.build_trainer(model_args, data_args, pretraining_args, args)
    assert not os.path.exists(tmp_path / "run")
    graphs = SimpleNamespace(use_habana=True, use_hpu_graphs_for_training=True, world_size=8)
    assert device.lazy_collectives_problem(graphs, collectives_in_forward=False) is None  # no ITC: no all-gather
    assert device.lazy_collectives_problem(SimpleNamespace(**{**vars(graphs), "world_size": 1}), True) is None
    monkeypatch.setenv("PT_HPU_ENABLE_LAZY_COLLECTIVES", "true")
    assert device.lazy_collectives_problem(graphs, collectives_in_forward=True) is None


# Issue 20 (5): every flag of optimum-habana's run_bridgetower.py is accepted and applied, or refused with why.
def test_run_bridgetower_flags_are_applied(tmp_path, monkeypatch):
    import huggingface_hub
    from transformers import AutoTokenizer

    downloads, loads = [], []
    snapshot = tmp_path / "snapshot"
    (snapshot / "part").mkdir(parents=True)
    monkeypatch.setattr(huggingface_hub, "snapshot_download",
                        lambda repo, **kw: downloads.append((repo, kw)) or str(snapshot))  # fmt: skip
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", lambda source, **kw: loads.append((source, kw)) or 1 / 0)
    model_args, data_args, pretraining_args, args = pretrain.parse_args(
        ["--output_dir", str(tmp_path), "--dataset_name", "org/pairs", "--dataset_revision", "v2", "--data_dir",
         "part", "--use_fast_tokenizer", "False", "--freeze_text_pooler", "True", "--tokenizer_name", "tok"]
    )  # fmt: skip
    run_module.resolve_dataset_location(data_args, args.dataset_revision, args.data_dir, None, None)
    assert downloads == [("org/pairs", {"repo_type": "dataset", "revision": "v2", "cache_dir": None, "token": None})]
    assert data_args.dataset_name == str(snapshot / "part")
    with pytest.raises(ZeroDivisionError):
        run_module.load_tokenizer(model_args, data_args, use_fast=args.use_fast_tokenizer)
    assert loads == [("tok", {"use_fast": False})]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--overwrite_cache"], "caches no preprocessed data set"),
        (["--preprocessing_num_workers", "4"], "use --dataloader_num_workers 4"),
        (["--freeze_text_pooler", "False"], "never uses the text tower's own pooler"),
        (["--data_dir", "part"], "apply to --dataset_name"),
    ],
)
def test_run_bridgetower_flags_we_cannot_honour_say_why(tmp_path, flags, message):
    with pytest.raises(ValueError, match=message):
        pretrain.main(["--output_dir", str(tmp_path / "run"), "--do_train", "--report_to", "none", *flags])
    assert not os.path.exists(tmp_path / "run")


# Issue 20 (6): --use_flash_attention and another --attn_implementation conflict: refused, not resolved silently.
@pytest.mark.parametrize("habana", [[], ["--use_habana"]])
def test_flash_attention_and_another_attn_implementation_conflict(tmp_path, gaudi_as_plain, habana):
    with pytest.raises(ValueError, match="keep one of the two flags"):
        pretrain.parse_args([*habana, "--use_flash_attention", "--attn_implementation", "sdpa",
                             "--output_dir", str(tmp_path)])  # fmt: skip
    *_, args = pretrain.parse_args(["--use_habana", "--use_flash_attention", "--attn_implementation",
                                    GAUDI_ATTENTION, "--output_dir", str(tmp_path)])  # fmt: skip
    assert args.attn_implementation == GAUDI_ATTENTION


# Issue 24: the Gaudi refusals that had no test.
@pytest.mark.parametrize(
    "lazy_env, overrides, message",
    [
        ("1", dict(torch_compile=True, torch_compile_backend="hpu_backend"), "export PT_HPU_LAZY_MODE=0"),
        ("0", dict(torch_compile=True, use_lazy_mode=True), "PT_HPU_LAZY_MODE is 0"),  # lazy asked, eager set
        ("0", dict(torch_compile=True, use_lazy_mode=False, torch_compile_backend="inductor"), "hpu_backend"),
    ],
)
def test_torch_compile_on_gaudi_needs_eager_mode_and_the_hpu_backend(monkeypatch, lazy_env, overrides, message):
    monkeypatch.setenv("PT_HPU_LAZY_MODE", lazy_env)
    monkeypatch.delenv("HABANA_LOGS", raising=False)
    with pytest.raises(ValueError, match=message):
        device.check_gaudi_arguments(_gaudi_args(**overrides))
    eager = dict(torch_compile=True, use_lazy_mode=False, torch_compile_backend="hpu_backend")
    monkeypatch.setenv("PT_HPU_LAZY_MODE", "0")
    device.check_gaudi_arguments(_gaudi_args(**eager))  # Intel's recommended eager + compile passes


def test_flash_attention_recompute_needs_the_fused_sdpa(monkeypatch):
    monkeypatch.setenv("PT_HPU_LAZY_MODE", "1")
    monkeypatch.delenv("HABANA_LOGS", raising=False)
    with pytest.raises(ValueError, match="--flash_attention_recompute needs --use_flash_attention"):
        device.check_gaudi_arguments(_gaudi_args(flash_attention_recompute=True))
    device.check_gaudi_arguments(_gaudi_args(flash_attention_recompute=True, attn_implementation=GAUDI_ATTENTION))
