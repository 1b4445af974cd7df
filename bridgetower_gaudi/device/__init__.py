"""The one place that knows devices: which backend runs, which flags it accepts, how Gaudi is set up.

HPU code (optimum.habana, habana_frameworks) is imported only from `device.gaudi`, and only when `--use_habana`
is given: `import optimum.habana` fails on machines without Intel Gaudi software.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.metadata
import importlib.util
import os
import sys

import torch
from transformers.utils import is_torch_hpu_available

from .flags import HPU_ONLY_FLAGS

# The one Gaudi software stack this package is written and checked against: docs/guides/gaudi.md shows it, and the
# Dockerfile's build arguments, setup.sh and pyproject's hpu extra must agree with it (tests/test_docker.py).
# synapse: what optimum-habana 1.21.2 validates (utils/misc.py CURRENTLY_VALIDATED_SYNAPSE_VERSION); torch: the build
# in Intel's 1.24.0 image (pytorch-installer-2.10.0); deepspeed: HabanaAI/DeepSpeed's branch for that Synapse, which
# installs as deepspeed X.Y.Z+hpu.synapse.v1.24.0.
GAUDI_STACK = {"synapse": "1.24.0", "torch": "2.10.0", "optimum-habana": "1.21.2", "deepspeed": "1.24.0"}
HABANA_DEEPSPEED_URL = "git+https://github.com/HabanaAI/DeepSpeed.git@{synapse}"

# Shipped inside the package (wheel and image installs have no run_scripts/): Habana/clip's three keys.
DEFAULT_GAUDI_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gaudi_config.json")
# optimum-habana's name for Habana's fused SDPA in transformers' attention-function registry.
GAUDI_ATTENTION = "gaudi_fused_sdpa"


class GaudiSoftwareMissing(RuntimeError):
    """`--use_habana` on a machine without the Gaudi software stack."""


def backend_name(args) -> str:
    """'hpu', 'cuda' or 'cpu': what this run will train on."""
    if getattr(args, "use_habana", False):
        return "hpu"
    if torch.cuda.is_available() and not getattr(args, "use_cpu", False):
        return "cuda"
    return "cpu"


def share_cpu_cores_with_loader_workers(args) -> int | None:
    """On CPU, leave one core per data-loader worker: torch's intra-op threads otherwise fight the workers for the
    same cores and every step waits on both. Not when OMP_NUM_THREADS says how many threads to use. Returns the
    thread count set, or None."""
    if backend_name(args) != "cpu" or "OMP_NUM_THREADS" in os.environ:
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = max(1, cores - args.dataloader_num_workers)
    if threads >= torch.get_num_threads():
        return None
    torch.set_num_threads(threads)
    return threads


def leave_process_group() -> None:
    """End a multi-process run cleanly: every rank waits for the others, then the default group is destroyed and
    freed, which joins gloo's worker threads while Python still runs.

    Why freed, not only destroyed: a gloo worker drops its last references to a collective's tensors just after the
    rank has seen the collective complete; those tensors have Python objects, so the worker takes the GIL. If the
    rank has meanwhile reached interpreter exit, Python ends that thread inside a C++ destructor ("terminate called
    without an active exception", SIGABRT, after all the work was done) and torchrun fails the run. The group's
    destructor waits for its workers, so once it has run no worker is left to race the exit. Whatever still holds
    the group keeps its workers alive: a trainer after `train()` does (its DistributedDataParallel wrapper), so drop
    the trainer before calling this."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    torch.distributed.barrier()
    group = torch.distributed.group.WORLD
    torch.distributed.destroy_process_group()
    unpin_from_deepspeed(group)
    del group
    gc.collect()  # a dropped trainer's reference cycles: the last reference goes, and the group's destructor joins


def unpin_from_deepspeed(group) -> None:
    """DeepSpeed's TorchBackend.barrier and .monitored_barrier default to `group=GroupMember.WORLD`, evaluated when
    deepspeed.comm is first imported. The Trainer imports it after the group exists, so those defaults would keep
    the destroyed group (and its threads) alive until exit. Their bodies read None as "the default group"."""
    deepspeed_torch = sys.modules.get("deepspeed.comm.torch")
    backend = getattr(deepspeed_torch, "TorchBackend", None)
    for method in (getattr(backend, "barrier", None), getattr(backend, "monitored_barrier", None)):
        defaults = getattr(method, "__defaults__", None)
        if defaults and defaults[0] is group:
            method.__defaults__ = (None, *defaults[1:])


def require_use_habana_on_hpu(use_habana: bool, use_cpu: bool) -> None:
    """On a Gaudi machine transformers would pick the HPU by itself, without GaudiTrainer, lazy mode or the Gaudi
    flags (and `--bf16` would move the run to the CPU): ask for `--use_habana` instead."""
    if not use_habana and not use_cpu and is_torch_hpu_available():
        raise ValueError(
            "this machine has Gaudi (HPU) devices: add --use_habana to train on them with GaudiTrainer "
            "(or --use_cpu to train on the CPU on purpose)."
        )


def installed_version(package: str) -> str | None:
    """The installed distribution's version, or None."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def synapse_version() -> str | None:
    """The Intel Gaudi software (Synapse) version: habana-torch-plugin's, as optimum-habana reads it."""
    return installed_version("habana-torch-plugin")


def habana_deepspeed_install_command() -> str:
    """pip's command for Habana's DeepSpeed fork at this machine's Synapse version (the table's when unknown)."""
    synapse = synapse_version() or GAUDI_STACK["synapse"]
    release = ".".join(synapse.split(".")[:2]) + ".0"  # the fork's branches are named major.minor.0
    return "python -m pip install " + HABANA_DEEPSPEED_URL.format(synapse=release)


def habana_deepspeed_problem() -> str | None:
    """None when the installed DeepSpeed is Habana's fork built for this Synapse release; else what is wrong, with
    the install command. The fork's version carries `+hpu.synapse.vX.Y.Z` (e.g. 0.16.1+hpu.synapse.v1.22.0);
    PyPI's DeepSpeed has no HPU ZeRO / bf16 support validated by Intel."""
    version = installed_version("deepspeed")
    fix = f"install Habana's fork: {habana_deepspeed_install_command()}"
    if version is None:
        return f"--deepspeed on Gaudi: DeepSpeed is not installed; {fix}."
    _, marker, fork_synapse = version.partition("+hpu.synapse.v")
    if not marker:
        return (
            f"--deepspeed on Gaudi: the installed DeepSpeed {version} is not Habana's fork (its version would end in "
            f"+hpu.synapse.v<Synapse>); {fix} (it replaces the PyPI package)."
        )
    synapse = synapse_version()
    if synapse and fork_synapse.split(".")[:2] != synapse.split(".")[:2]:
        return (
            f"--deepspeed on Gaudi: Habana's DeepSpeed {version} is built for Synapse {fork_synapse}, this machine "
            f"runs Synapse {synapse}; {fix}."
        )
    return None


def unwritable_directory_problem(path: str, what: str) -> str | None:
    """None when `path` can be written (created when missing: its nearest existing parent must be writable); else
    which directory is not and the fix. Checked before anything is written, so a container that cannot write fails
    at once instead of after the model is built."""
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        return f"{what} {path!r} cannot be created: {existing!r} is a file, not a directory; choose another path."
    if os.access(existing, os.W_OK | os.X_OK):
        return None
    uid = os.getuid() if hasattr(os, "getuid") else "?"
    return (
        f"{what} {path!r} is not writable by this process (user id {uid}): {existing!r} does not let it create or "
        "write files. In Docker, create the host folder before `docker run -v` (Docker creates missing ones as root) "
        'and start the container with --user "$(id -u):$(id -g)" (docs/guides/docker.md), or choose a writable path.'
    )


def lazy_collectives_problem(args, collectives_in_forward: bool) -> str | None:
    """HPU graphs replay collectives recorded inside the forward (ITC's all-gather across ranks) only with lazy
    collectives on (Habana's HPU-graph docs: PT_HPU_ENABLE_LAZY_COLLECTIVES=true), which the Gaudi bridge reads when
    it starts: it must be in the environment before the run starts, so a missing one is refused with the fix."""
    if not (getattr(args, "use_habana", False) and getattr(args, "use_hpu_graphs_for_training", False)):
        return None
    if not collectives_in_forward or args.world_size <= 1:
        return None
    if os.environ.get("PT_HPU_ENABLE_LAZY_COLLECTIVES", "").lower() in ("true", "1"):
        return None
    return (
        "--use_hpu_graphs_for_training with ITC on several cards records the all-gather of the ITC features inside "
        "the HPU graph, which needs lazy collectives: export PT_HPU_ENABLE_LAZY_COLLECTIVES=true before starting "
        "(docs/guides/gaudi.md), or drop --use_hpu_graphs_for_training."
    )


def missing_gaudi_software() -> list[str]:
    """What `--use_habana` needs and this Python lacks, each with where it comes from."""
    missing = []
    if importlib.util.find_spec("habana_frameworks") is None:
        missing.append(
            "Intel Gaudi's PyTorch bridge (habana_frameworks, from the Gaudi software stack / its Docker image)"
        )
    if importlib.util.find_spec("optimum") is None or importlib.util.find_spec("optimum.habana") is None:
        missing.append("optimum-habana (pip install -e '.[hpu]', or bash run_scripts/setup.sh --hpu)")
    return missing


def gaudi_training_arguments_class():
    """Our GaudiTrainingArguments (imports optimum.habana: only for `--use_habana`). Without the Gaudi software it
    says what is missing instead of failing inside optimum-habana's Synapse version check."""
    missing = missing_gaudi_software()
    if missing:
        raise GaudiSoftwareMissing(
            "--use_habana needs the Intel Gaudi software, and this Python lacks: "
            + "; ".join(missing)
            + ". Run on a Gaudi machine inside Intel's Gaudi PyTorch image (docs/guides/gaudi.md), "
            "or drop --use_habana to train on CUDA or the CPU with the same flags."
        )
    from .gaudi import BridgeTowerGaudiTrainingArguments

    return BridgeTowerGaudiTrainingArguments


def is_gaudi_arguments(args) -> bool:
    return any(cls.__name__ == "GaudiTrainingArguments" for cls in type(args).__mro__)


def check_device_flags(args) -> None:
    """HPU-only flags off HPU fail at start-up with the fix (GaudiTrainingArguments checks the Gaudi side)."""
    wrong = [f"--{name}" for name, default in HPU_ONLY_FLAGS.items() if getattr(args, name) not in (default, False)]
    if args.torch_compile_backend == "hpu_backend":
        wrong.append("--torch_compile_backend hpu_backend")
    if args.attn_implementation == GAUDI_ATTENTION:
        wrong.append(f"--attn_implementation {GAUDI_ATTENTION}")
    if wrong:
        raise ValueError(
            f"{', '.join(wrong)} only work on Gaudi: add --use_habana on an HPU machine, or drop them here "
            f"(this run would use {backend_name(args)})."
        )


def check_gaudi_arguments(args) -> None:
    """Gaudi flag combinations that cannot work, with the fix."""
    if args.mediapipe_dataloader:
        raise ValueError(
            "--mediapipe_dataloader: bridgetower_gaudi has no Gaudi media-pipe loader yet; drop the flag (the "
            "regular loader is used, with --dataloader_num_workers)."
        )
    if args.flash_attention_recompute and args.attn_implementation != GAUDI_ATTENTION:
        raise ValueError("--flash_attention_recompute needs --use_flash_attention (Habana's fused SDPA).")
    if not args.use_habana:
        return
    if getattr(args, "deepspeed", None) and (problem := habana_deepspeed_problem()):
        raise ValueError(problem)
    logs = os.environ.get("HABANA_LOGS")  # Intel's images: /var/log/habana_logs/, owned by root
    if logs and (problem := unwritable_directory_problem(logs, "HABANA_LOGS (the Gaudi runtime's log folder)")):
        raise ValueError(problem)
    lazy_env = os.environ.get("PT_HPU_LAZY_MODE")
    if args.use_lazy_mode and lazy_env != "1":
        # Synapse 1.24 runs eager unless PT_HPU_LAZY_MODE=1 is set before torch is imported; HPU graphs need lazy.
        raise ValueError(
            f"lazy mode is asked for (--use_lazy_mode, GaudiTrainingArguments' default) but PT_HPU_LAZY_MODE is "
            f"{lazy_env if lazy_env is not None else 'unset'} (eager): export PT_HPU_LAZY_MODE=1 before starting "
            "(run_scripts/run_pretrain.py sets it when unset), or pass --use_lazy_mode False --torch_compile with "
            "PT_HPU_LAZY_MODE=0 for eager mode with torch.compile."
        )
    if args.torch_compile:
        # Intel's recommended mode: eager + torch.compile(backend="hpu_backend"); lazy mode must be off for it.
        if args.use_lazy_mode or lazy_env != "0":
            raise ValueError(
                "--torch_compile on Gaudi runs in eager mode: export PT_HPU_LAZY_MODE=0 and pass --use_lazy_mode False "
                "(or drop --torch_compile to use lazy mode)."
            )
        if args.torch_compile_backend != "hpu_backend":
            raise ValueError("--torch_compile on Gaudi needs --torch_compile_backend hpu_backend.")


def resolve_training_arguments(args):
    """Check the device flags for this backend; return the arguments to train with."""
    if not is_gaudi_arguments(args):
        if args.use_habana:
            raise ValueError(
                "--use_habana needs GaudiTrainingArguments: parse the flags with training.pretrain.parse_args."
            )
        check_device_flags(args)
        return args
    check_gaudi_arguments(args)
    if args.use_habana and args.attn_implementation == GAUDI_ATTENTION:
        from . import gaudi

        gaudi.use_gaudi_fused_sdpa()
    return args


def parsing_context(training_arguments_class):
    """Around building the training arguments: GaudiTrainingArguments patches transformers' CLIP / BERT classes
    on HPU (adapt_transformers_to_gaudi); `device.gaudi` puts transformers' own back for our towers."""
    if any(cls.__name__ == "GaudiTrainingArguments" for cls in training_arguments_class.__mro__):
        from . import gaudi

        return gaudi.transformers_towers_kept()
    return contextlib.nullcontext()
