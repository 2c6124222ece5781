"""MLflow on a real database: a PostgreSQL server (Debian's package, installed when absent), an
``mlflow server`` using it as the backend store, and a sweep with concurrent trials writing to it.
Every run and every metric value must arrive exactly once (checked in the database itself), and no
secret from the environment may land in a param or a tag. Everything started here is stopped here."""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pytest

from orchestrator.expand import load_sweep
from tests.support.services import REPO, MlflowServer, free_ports, listening_addresses
from tests.support.sweeps import sweep_yaml


def postgres_bin() -> Path:
    """The directory of Debian's PostgreSQL server binaries, installing the package if needed."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            pytest.skip("PostgreSQL is not installed and cannot be (needs root and apt-get: "
                        "`apt-get install -y postgresql`)")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "postgresql"]
        if subprocess.run(install, env=env, capture_output=True, timeout=600).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=600)
            done = subprocess.run(install, env=env, capture_output=True, text=True, timeout=600)
            if done.returncode != 0:
                pytest.skip(f"apt-get could not install postgresql: {done.stderr.strip()[-300:]}")
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not found:
            pytest.skip("postgresql installed, but no /usr/lib/postgresql/*/bin/initdb")
    return Path(found[-1]).parent


class Postgres:
    """A throwaway cluster in a temp dir on 127.0.0.1:<free port>, password auth over TCP."""

    def __init__(self, bindir: Path):
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="affsweep-pg-", dir="/tmp"))  # short: holds the unix socket
        self.data, self.port = self.root / "data", free_ports(1)[0]
        self.user, self.password = "mlflow", secrets.token_hex(16)
        self.as_owner: list[str] = []
        if os.geteuid() == 0:  # initdb and postgres refuse to run as root
            self.as_owner = ["runuser", "-u", "postgres", "--"]
            shutil.chown(self.root, "postgres")

    def _run(self, *cmd: str, timeout: float = 120) -> None:
        done = subprocess.run([*self.as_owner, *cmd], capture_output=True, text=True, timeout=timeout,
                              cwd=self.root, stdin=subprocess.DEVNULL)
        assert done.returncode == 0, f"{cmd[0]}: {done.stdout[-1500:]}{done.stderr[-1500:]}"

    def start(self) -> Postgres:
        pwfile = self.root / "pw"
        pwfile.write_text(self.password)
        if self.as_owner:
            shutil.chown(pwfile, "postgres")
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", self.user, f"--pwfile={pwfile}",
                  "--auth-local=scram-sha-256", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync")
        pwfile.unlink()
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c fsync=off"
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.root / "log"),
                  "-w", "-t", "60", "start")
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user=self.user, password=self.password,
                                dbname="postgres")
        try:
            conn.autocommit = True  # CREATE DATABASE cannot run in a transaction
            conn.cursor().execute("CREATE DATABASE mlflow")
        finally:
            conn.close()
        return self

    def query(self, sql: str) -> list[tuple]:
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user=self.user, password=self.password,
                                dbname="mlflow")
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
                return cur.fetchall()
        finally:
            conn.close()

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            subprocess.run([*self.as_owner, str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w",
                            "stop"], capture_output=True, timeout=120, cwd=self.root)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.ci
@pytest.mark.timeout(600)
def test_sweep_against_mlflow_on_postgresql_logs_everything_exactly_once(tmp_path):
    pytest.importorskip("psycopg2", reason="psycopg2-binary (the dev extra) is needed to reach PostgreSQL")
    db = Postgres(postgres_bin())
    # the password reaches libpq through PGPASSWORD: not in the store URI, a command line or a log
    server = MlflowServer(tmp_path / "mlflow", backend_store_uri=f"postgresql+psycopg2://{db.user}@127.0.0.1:{db.port}/mlflow")
    canary = f"canary-{secrets.token_hex(8)}"
    try:
        db.start()
        assert listening_addresses(db.port) == {"127.0.0.1"}
        server.start(env={"PGPASSWORD": db.password}, timeout=240)
        yaml = sweep_yaml(tmp_path / "pg.yaml", name="pg", uri=server.uri, storage=tmp_path / "runs",
                          grid={"seed": [0], "method.cost": ["none", "circumplex"]}, epochs=2)
        plan = load_sweep(yaml)
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AIR_NEW_OUTPUT": "0",
               "AFFSWEEP_TEST_SECRET": canary, "AWS_SECRET_ACCESS_KEY": canary}
        env.pop("RAY_ADDRESS", None)
        # both trials at once (2 CPUs, 1 each), each writing to the one server over HTTP
        run = subprocess.run([sys.executable, "-m", "orchestrator", "run", str(yaml)], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=480)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

        ids = sorted(t.trial_id for t in plan.trials)
        table = pd.read_parquet(tmp_path / "runs" / "pg" / "results.parquet")
        assert sorted(table["trial_id"]) == ids and set(table["status"]) == {"done"}
        # in the database: one run per trial (+ the sweep's parent and 2 condition summaries) ...
        trial_runs = db.query("SELECT value FROM tags WHERE key = 'affsweep.trial_id'")
        assert sorted(v for (v,) in trial_runs) == ids
        kinds = dict(db.query("SELECT value, count(*) FROM tags WHERE key = 'affsweep.kind' GROUP BY value"))
        assert kinds == {"sweep": 1, "trial": 2, "summary": 2}
        assert db.query("SELECT count(*) FROM runs")[0][0] == 5
        # ... every trial has each epoch's metrics once, and no metric value arrived twice
        per_epoch = db.query("""SELECT t.value, m.step FROM metrics m JOIN tags t ON t.run_uuid = m.run_uuid
                                WHERE t.key = 'affsweep.trial_id' AND m.key = 'epoch' ORDER BY 1, 2""")
        assert per_epoch == [(i, s) for i in ids for s in (1, 2)]
        dup = db.query("SELECT run_uuid, key, step, count(*) FROM metrics GROUP BY 1, 2, 3 HAVING count(*) > 1")
        assert dup == []
        assert db.query("SELECT count(*) FROM latest_metrics WHERE key = 'p_mtl'")[0][0] >= 2
        # environment variables (and the database password) are never logged
        logged = db.query("SELECT value FROM params UNION ALL SELECT value FROM tags")
        assert logged and not [v for (v,) in logged if v and (canary in v or db.password in v)]
    finally:
        server.stop()
        db.stop()
    assert not listening_addresses(db.port) and not listening_addresses(server.port)
