#!/usr/bin/env bash
# Set up an environment for bridgetower_gaudi.
#   bash run_scripts/setup.sh            # .venv with the package
#   bash run_scripts/setup.sh --test     # .venv with the package and the test tools
#   bash run_scripts/setup.sh --system   # into the current interpreter (Gaudi / CUDA containers that ship torch)
# torch is installed only when missing (torch==2.13.0: the CPU wheel kept on this project's machines; elsewhere PyPI's
# default build); an existing torch (Gaudi and CUDA images ship their own) is never replaced.
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
use_venv=1
for arg in "$@"; do
    case "$arg" in
        --test) extras="[test]" ;;
        --system) use_venv=0 ;;
        *) echo "setup.sh: unknown option '$arg' (use --test and/or --system)" >&2; exit 2 ;;
    esac
done

if [[ $use_venv == 1 ]]; then
    [[ -x .venv/bin/python ]] || python3 -m venv .venv
    PYTHON=.venv/bin/python
else
    PYTHON=${PYTHON:-python3}
fi

if ! "$PYTHON" -c "import torch" 2>/dev/null; then
    "$PYTHON" -m pip install --quiet "torch==2.13.0"
fi
"$PYTHON" -m pip install --quiet -e ".${extras}"
echo "setup.sh: ready ($("$PYTHON" -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'))"
