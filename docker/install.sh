#!/usr/bin/env bash
# The image's install steps, runnable anywhere: install affsweep from its own pyproject.toml into the
# active Python (a venv, or the image's conda env), with Ray and MLflow at the versions the project
# is developed and tested with. The CUDA base image already carries torch; pip keeps it when it
# satisfies pyproject.toml's range. Usage: docker/install.sh [REPO_DIR] [extra pip args, e.g. --dry-run]
set -euo pipefail
REPO="${1:-$(cd "$(dirname "$0")/.." && pwd)}"
shift || true
PYTHON="${PYTHON:-python}"
RAY_VERSION="${RAY_VERSION:-2.60.0}"
MLFLOW_VERSION="${MLFLOW_VERSION:-3.17.2}"

"$PYTHON" -m pip install --no-cache-dir "$@" \
    "$REPO" \
    "ray[default,tune]==${RAY_VERSION}" \
    "mlflow==${MLFLOW_VERSION}" \
    "psycopg2-binary>=2.9" \
    "boto3>=1.34"
