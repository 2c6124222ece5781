"""A real two-node Ray cluster on loopback: trials of one sweep run on both nodes.

The head and a worker node are separate ``ray start`` process trees (1 CPU each, 127.0.0.1, ports and
``--temp-dir`` chosen here, token authentication on), ``affsweep run --address`` drives a small sweep
against them, and the results name the Ray node of every trial. Everything started here is found
by its temp dir (in the command lines of the GCS server and raylets) and its process tree, and killed
at the end -- never ``ray stop``, which would stop every Ray instance on the machine.

The helpers (``RayCluster``, ``MlflowServer``, ``sweep_yaml``) are shared with ``test_faults_*.py``.
"""

from __future__ import annotations

import socket

import pandas as pd
import pytest

from tests.support.services import RayCluster, affsweep_run, listening_addresses, processes_of
from tests.support.sweeps import sweep_yaml

# --- the test ---------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.ci
@pytest.mark.timeout(600)
def test_two_node_cluster_runs_trials_on_both_nodes(tmp_path, mlflow_http):
    cluster = RayCluster(tmp_path, cpus=[1, 1])
    server = mlflow_http  # the session's shared server (conftest): any HTTP server both nodes reach
    try:
        cluster.start()
        # (Ray's GCS listens on every interface whatever --node-ip-address says: token auth guards it)
        nodes = cluster.node_ids()
        assert len(nodes) == 2
        assert listening_addresses(server.port) == {"127.0.0.1"}
        yaml = sweep_yaml(tmp_path / "two_nodes.yaml", name="two_nodes", uri=server.uri, storage=tmp_path / "runs",
                          grid={"seed": [0], "method.cost": ["none", "circumplex"]})
        rc, out = affsweep_run(yaml, cluster.address, cluster.env)
        assert rc == 0, out[-4000:]
        assert "trials on other nodes cannot reach it" not in out  # tracking is a shared server here

        table = pd.read_parquet(tmp_path / "runs" / "two_nodes" / "results.parquet")
        assert list(table["status"]) == ["done", "done"]
        # one trial per node: each node has 1 CPU and each trial needs 1
        assert sorted(table["node_id"]) == sorted(nodes)
        assert set(table["hostname"]) == {socket.gethostname()}

        from mlflow.tracking import MlflowClient

        client = MlflowClient(server.uri)
        exp = client.get_experiment_by_name("two_nodes")
        runs = client.search_runs([exp.experiment_id], "tags.`affsweep.kind` = 'trial'")
        assert sorted(r.data.tags["affsweep.node_id"] for r in runs) == sorted(nodes)
        assert sorted(r.data.tags["affsweep.trial_id"] for r in runs) == sorted(table["trial_id"])
    finally:
        cluster.stop()
    assert not processes_of(str(cluster.temp_dir)) and not listening_addresses(cluster.port)
