"""The deployment files: they parse, name keys their tools know, bind to 127.0.0.1 by default and hold
no credentials. (What needs a cloud account or a Docker engine -- `ray up`, `docker build`,
`docker compose up` -- cannot run here; docs/cluster.md says how to run them.)"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.leaks import leaks

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"

# what a leaked secret looks like: key material, or a secret-named key with a literal value
def test_secret_patterns_catch_what_they_should():
    assert leaks("password: hunter2hunter2") and leaks("uri: postgresql://bob:pw1234@db/x")
    assert leaks("AWS_SECRET_ACCESS_KEY=abcdef123456") and leaks("key AKIAABCDEFGHIJKLMNOP")
    assert not leaks('POSTGRES_PASSWORD: "$$POSTGRES_PASSWORD"') and not leaks("POSTGRES_PASSWORD=change-me")


def test_cluster_yaml_validates_against_rays_schema():
    import jsonschema
    import ray

    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    config = yaml.safe_load((DOCKER / "cluster.yaml").read_text())
    jsonschema.validate(config, schema)  # unknown top-level keys are errors: additionalProperties is false
    assert schema.get("additionalProperties") is False
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    assert any(t["resources"].get("GPU", 0) >= 1 for t in types.values())  # a GPU worker type
    assert types[config["head_node_type"]]["resources"].get("CPU") == 0  # trials run on workers only
    assert config["docker"]["image"] and config["docker"]["container_name"]
    mounts = config["file_mounts"]
    assert mounts["/home/ray/affsweep/sweeps"] == "./sweeps" and (REPO / "sweeps").is_dir()
    for local in mounts.values():
        assert (REPO / local).exists(), local
    assert "docker/.env" in config["rsync_exclude"]  # the secrets file is never synced to nodes
    shared = " ".join(config["docker"]["run_options"])
    assert "/mnt/shared" in shared  # the shared sweep directory reaches the containers
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start  # the dashboard (and Jobs API) stays on the head


def test_compose_file_binds_to_loopback_and_reads_secrets_from_an_ignored_env_file():
    config = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = config["services"]
    assert {"postgres", "minio", "mlflow"} <= set(services)
    known = {"image", "build", "restart", "env_file", "environment", "volumes", "ports", "healthcheck", "command",
             "entrypoint", "depends_on"}
    for name, svc in services.items():
        assert set(svc) <= known, (name, set(svc) - known)
        for port in svc.get("ports", []):
            assert port.startswith("${BIND_ADDRESS:-127.0.0.1}:"), (name, port)  # loopback unless configured
        assert svc.get("env_file") in (None, [".env"])
        for value in (svc.get("environment") or {}).values():
            assert not leaks(f"x={value}")
    assert "ports" not in services["postgres"]  # the database is reachable from the compose network only
    for name, svc in services.items():
        for dep in svc.get("depends_on", {}):
            assert dep in services, (name, dep)
    assert set(config["volumes"]) == {"postgres-data", "minio-data"}
    # every variable the services read from .env is documented in env.example
    example = dict(line.split("=", 1) for line in (DOCKER / "env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    used = set(re.findall(r"\$\$?\{?([A-Z][A-Z0-9_]+)", (DOCKER / "compose.yaml").read_text()))
    provided_inside = {"MLFLOW_BACKEND_STORE_URI", "MLFLOW_ARTIFACTS_DESTINATION", "AWS_ACCESS_KEY_ID",
                       "AWS_SECRET_ACCESS_KEY"}
    assert used - provided_inside <= set(example), used - set(example)
    assert example["BIND_ADDRESS"] == "127.0.0.1"
    ignored = subprocess.run(["git", "check-ignore", "-q", "docker/.env"], cwd=REPO)
    assert ignored.returncode == 0, "docker/.env must be git-ignored"


def test_no_credentials_in_deployment_files():
    for name in ("Dockerfile", "cluster.yaml", "compose.yaml", "install.sh", "env.example"):
        text = (DOCKER / name).read_text()
        assert not leaks(text), (name, leaks(text))
    dockerfile = (DOCKER / "Dockerfile").read_text()
    assert re.search(r"^USER ray$", dockerfile, re.M)  # the image does not run as root
    assert not re.search(r"^(ENV|ARG)\s+\S*(PASSWORD|SECRET|TOKEN|KEY)", dockerfile, re.M | re.I)
    assert "COPY . " not in dockerfile  # only the project's sources: never a local docker/.env
    from_line = next(line for line in dockerfile.splitlines() if line.startswith("FROM "))
    assert re.match(r"FROM pytorch/pytorch:[\d.]+-cuda[\d.]+-cudnn\d+-runtime$", from_line)


def test_image_pins_the_versions_the_project_runs():
    import mlflow
    import ray

    text = (DOCKER / "Dockerfile").read_text() + (DOCKER / "install.sh").read_text()
    assert f"RAY_VERSION={ray.__version__}" in text and f"MLFLOW_VERSION={mlflow.__version__}" in text


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_install_script_resolves_the_project_from_its_pyproject():
    """The image's install step, as pip would run it (``--dry-run``: nothing is installed)."""
    done = subprocess.run(["bash", str(DOCKER / "install.sh"), str(REPO), "--dry-run", "--no-deps", "-q",
                           "--report", "-"], env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    names = {item["metadata"]["name"].lower() for item in report["install"]}
    assert "affsweep" in names
