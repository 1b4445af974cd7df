# BridgeTower pre-training on Intel Gaudi: Intel's Gaudi PyTorch image + this package (hpu extra) + Habana's
# DeepSpeed fork. Not yet built or run on Gaudi hardware by this project.
#   docker build -t bridgetower-gaudi .
#   docker run --rm --runtime=habana -e HABANA_VISIBLE_DEVICES=all --cap-add=sys_nice --net=host --ipc=host \
#       -v hf-cache:/data/hf bridgetower-gaudi --use_habana ...   (README: Gaudi)
# The Synapse version optimum-habana 1.21.2 validates, and the torch build of Intel's image for it (check the tag
# against Intel's support matrix / vault listing: not verified here).
ARG SYNAPSE_VERSION=1.24.0
ARG TORCH_VERSION=2.9.0
ARG IMAGE_TAG=latest
FROM vault.habana.ai/gaudi-docker/${SYNAPSE_VERSION}/ubuntu22.04/habanalabs/pytorch-installer-${TORCH_VERSION}:${IMAGE_TAG}

ARG SYNAPSE_VERSION
# Lazy mode (HPU graphs, optimum-habana's published runs); Synapse 1.24 defaults to eager. HF_HOME on a volume.
ENV PT_HPU_LAZY_MODE=1 \
    HF_HOME=/data/hf \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/bridgetower-gaudi
COPY pyproject.toml README.md ./
COPY bridgetower_gaudi ./bridgetower_gaudi
COPY run_scripts ./run_scripts

# The hpu extra with the image's torch / habana packages pinned (setup.sh --hpu), then Habana's DeepSpeed fork at
# the Synapse version: PyPI's deepspeed must never replace it.
RUN bash run_scripts/setup.sh --hpu \
    && python3 -m pip install --no-cache-dir "git+https://github.com/HabanaAI/DeepSpeed.git@${SYNAPSE_VERSION}"

RUN useradd --create-home --uid 1000 trainer \
    && mkdir -p /data/hf /workspace \
    && chown -R trainer /data/hf /workspace
USER 1000
WORKDIR /workspace
VOLUME ["/data/hf"]

# Smoke test (no HEALTHCHECK: training containers are not services):
#   docker run --rm --runtime=habana ... --entrypoint python3 bridgetower-gaudi -m bridgetower_gaudi.device
ENTRYPOINT ["python3", "/opt/bridgetower-gaudi/run_scripts/run_pretrain.py"]
