# BridgeTower on Intel Gaudi: Intel's Gaudi PyTorch image + this package (hpu extra) + Habana's DeepSpeed fork.
# The versions are docs/guides/gaudi.md's table (bridgetower_gaudi.device.GAUDI_STACK; tests/test_docker.py checks
# that these build arguments agree with it). Not yet built or run on Gaudi hardware by this project.
# Build, smoke-test and run: docs/guides/docker.md. In short:
#   docker build -t bridgetower-gaudi .
#   docker run --rm --runtime=habana -e HABANA_VISIBLE_DEVICES=all --cap-add=sys_nice --net=host --ipc=host \
#       --entrypoint python3 bridgetower-gaudi -m bridgetower_gaudi.device        # the doctor: stack + one step
#   mkdir -p outputs && docker run --rm --runtime=habana -e HABANA_VISIBLE_DEVICES=all --cap-add=sys_nice \
#       --net=host --ipc=host --user "$(id -u):$(id -g)" -v "$PWD/outputs:/workspace/outputs" -v hf-cache:/data/hf \
#       bridgetower-gaudi --use_habana --do_train --bf16 --output_dir /workspace/outputs/pretrain
ARG SYNAPSE_VERSION=1.24.0
ARG TORCH_VERSION=2.10.0
ARG IMAGE_TAG=latest
FROM vault.habana.ai/gaudi-docker/${SYNAPSE_VERSION}/ubuntu22.04/habanalabs/pytorch-installer-${TORCH_VERSION}:${IMAGE_TAG}

# Lazy mode (HPU graphs, optimum-habana's published runs); Synapse 1.24 defaults to eager. HF_HOME on a volume.
# HABANA_LOGS: Intel's location, made writable below. HOME: a writable one for any --user id.
ENV PT_HPU_LAZY_MODE=1 \
    HF_HOME=/data/hf \
    HABANA_LOGS=/var/log/habana_logs \
    HOME=/workspace \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/bridgetower-gaudi
COPY pyproject.toml README.md ./
COPY bridgetower_gaudi ./bridgetower_gaudi
COPY run_scripts ./run_scripts

# The hpu extra with the image's torch / habana packages pinned, then Habana's DeepSpeed fork at the image's Synapse
# release (both in setup.sh --hpu): PyPI's deepspeed must never replace it.
RUN bash run_scripts/setup.sh --hpu

# Writable by any user id (docker run --user "$(id -u):$(id -g)" keeps the host's ownership of outputs/): the HF cache
# volume, the working folder with its outputs mount point, and the Gaudi runtime's log folder (root's in Intel's image;
# emptied of the root-owned logs that importing torch during the build may have written).
RUN useradd --create-home --uid 1000 trainer \
    && mkdir -p /data/hf /workspace/outputs /var/log/habana_logs \
    && rm -rf /var/log/habana_logs/* \
    && chmod 1777 /data/hf /workspace /workspace/outputs /var/log/habana_logs
USER 1000
WORKDIR /workspace
VOLUME ["/data/hf"]

# No HEALTHCHECK: training containers are not services.
ENTRYPOINT ["python3", "/opt/bridgetower-gaudi/run_scripts/run_pretrain.py"]
