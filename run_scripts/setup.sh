#!/usr/bin/env bash
# Set up an environment for bridgetower_gaudi.
#   bash run_scripts/setup.sh            # .venv with the package
#   bash run_scripts/setup.sh --test     # .venv with the package and the test tools
#   bash run_scripts/setup.sh --system   # into the current interpreter (Gaudi / CUDA containers that ship torch)
#   bash run_scripts/setup.sh --hpu      # Gaudi image: the `hpu` extra and Habana's DeepSpeed fork into its Python,
#                                        # its torch / habana packages kept
# torch is installed only when missing (torch==2.13.0: the CPU wheel kept on this project's machines; elsewhere PyPI's
# default build); an existing torch (Gaudi and CUDA images ship their own) is never replaced.
# --hpu pins every torch* / habana* / lightning-habana package the image has (a pip constraints file), so that
# optimum-habana's requirements can never pull another build over Intel's. Habana's DeepSpeed fork (never PyPI's
# deepspeed) goes on top, at the image's Synapse release (habana-torch-plugin's major.minor; 1.24.0, the version table's
# in docs/guides/gaudi.md, when the image does not say): pip install git+https://github.com/HabanaAI/DeepSpeed.git@1.24.0
# SETUP_DRY_RUN=1 prints the pip commands instead of running them (SETUP_CONSTRAINTS names the constraints file).
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
use_venv=1
hpu=0
for arg in "$@"; do
    case "$arg" in
        --test) extras="[test]" ;;
        --system) use_venv=0 ;;
        --hpu) extras="[hpu]"; use_venv=0; hpu=1 ;;
        *) echo "setup.sh: unknown option '$arg' (use --test, --system or --hpu)" >&2; exit 2 ;;
    esac
done

if [[ $use_venv == 1 ]]; then
    [[ -x .venv/bin/python ]] || python3 -m venv .venv
    PYTHON=.venv/bin/python
else
    PYTHON=${PYTHON:-python3}
fi

run() {
    if [[ ${SETUP_DRY_RUN:-0} == 1 ]]; then echo "$*"; else "$@"; fi
}

if [[ $hpu == 1 ]]; then
    if ! "$PYTHON" -c "import torch" 2>/dev/null; then
        echo "setup.sh --hpu: $PYTHON has no torch; run it inside Intel's Gaudi PyTorch image (docs/guides/gaudi.md)." >&2
        exit 1
    fi
    constraints=${SETUP_CONSTRAINTS:-$(mktemp -t bridgetower-gaudi-constraints.XXXXXX)}
    "$PYTHON" -m pip list --format=freeze 2>/dev/null | grep -iE '^(torch|habana|lightning-habana)[a-z0-9_.-]*==' \
        > "$constraints" || true
    echo "setup.sh --hpu: keeping $(wc -l < "$constraints") packages of the image (constraints: $constraints)"
    run "$PYTHON" -m pip install --quiet -c "$constraints" -e ".${extras}"
    synapse=$(grep -iE '^habana-torch-plugin==' "$constraints" | sed -E 's/^[^=]*==([0-9]+)\.([0-9]+).*/\1.\2.0/' || true)
    run "$PYTHON" -m pip install --quiet -c "$constraints" \
        "git+https://github.com/HabanaAI/DeepSpeed.git@${synapse:-1.24.0}"
    [[ ${SETUP_DRY_RUN:-0} == 1 ]] && exit 0
elif ! "$PYTHON" -c "import torch" 2>/dev/null; then
    run "$PYTHON" -m pip install --quiet "torch==2.13.0"
    run "$PYTHON" -m pip install --quiet -e ".${extras}"
else
    run "$PYTHON" -m pip install --quiet -e ".${extras}"
fi
[[ ${SETUP_DRY_RUN:-0} == 1 ]] && exit 0
echo "setup.sh: ready ($("$PYTHON" -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'))"
