import os

import pytest
import torch

from tests.support.ray_local import stop_ray_local

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
torch.set_num_threads(1)


@pytest.fixture
def tiny_trial():
    """A trial small enough to train in seconds on one CPU core."""
    from trainers.config import TrialConfig

    def make(**overrides):
        base = dict(
            dataset=dict(name="synthetic", preset="affwild2_like", n=1000, image_size=24),
            backbone=dict(name="test_resnet", pretrained=False),
            epochs=2, batch_size=32, lr=3e-3, warmup_epochs=0, unfreeze_fraction=1.0, encoder_lr_factor=1.0,
            eval_batch_size=128,
        )
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                base[key] = {**base[key], **value}
            else:
                base[key] = value
        return TrialConfig.model_validate(base)

    return make


# --- services shared by the session's end-to-end tests --------------------------------------------
# Starting an `mlflow server` takes ~18 s on a 2-core machine (two processes import MLflow in turn)
# and an in-process Ray ~8 s; tests that only need *a* server or *a* Ray share one each. Every test
# keeps to its own experiment names, sweep directories and trial ids, so sharing hides nothing.
# Tests that restart or kill a server, or need one on another store (PostgreSQL), start their own.

@pytest.fixture(scope="session")
def mlflow_http(tmp_path_factory):
    """One ``mlflow server`` (SQLite, 127.0.0.1) for the session, as ``tracking.uri: local`` starts it."""
    from orchestrator import tracking

    server = tracking.LocalMlflowServer(tmp_path_factory.mktemp("mlflow-shared"))
    with server:
        pgid = server.proc.pid
        yield server
    assert server.proc is None
    with pytest.raises(ProcessLookupError):  # stopped with the session: the CLI and its uvicorn worker
        os.killpg(pgid, 0)


@pytest.fixture
def ray_local():
    """The session's in-process Ray (2 CPUs), started at first use and shut down at the end of the
    session. A test that stops every Ray on the machine (``ray stop``) calls ``stop_ray_local()``
    first; the next test that asks for Ray starts it again."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield


@pytest.fixture(scope="session", autouse=True)
def _stop_ray_local_at_the_end():
    yield
    stop_ray_local()


def pytest_collection_modifyitems(config, items):
    """End-to-end (``slow``) files first: ``make test`` hands whole files to its two test processes in
    collection order (``--dist loadfile``), so the long ones start early and the many short files
    fill in around them, instead of one long file running on its own at the end."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)  # stable: the order within a file is kept
