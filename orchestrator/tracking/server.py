"""``tracking.uri: local``: an ``mlflow server`` on 127.0.0.1 for the sweep's lifetime.

A SQLite store under the sweep directory (``<sweep dir>/mlflow/mlflow.db``, artifacts beside it):
concurrent trials in Ray workers write over HTTP to this single writer, instead of each opening the
SQLite file. Environment variables are passed to the server process, never logged.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

__all__ = ["LocalMlflowServer"]


# --- the local server -------------------------------------------------------------------------------

class LocalMlflowServer:
    """``mlflow server`` on 127.0.0.1:<free port> with ``<root>/mlflow.db`` and ``<root>/artifacts``.

    A context manager: the server is stopped on exit, also on Ctrl-C and errors. It runs in its own
    process group (so a Ctrl-C at the terminal reaches the driver first, which then still logs the
    sweep's final state before stopping the server) and its log goes to ``<root>/server.log``.
    """

    def __init__(self, root: str | Path, startup_timeout: float = 240.0):
        self.root = Path(root).resolve()
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None

    @property
    def store_uri(self) -> str:
        return f"sqlite:///{self.root / 'mlflow.db'}"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ui_command(self) -> str:
        return f"mlflow ui --backend-store-uri {self.store_uri} --artifacts-destination {self.artifacts}"

    def start(self) -> str:
        self.root.mkdir(parents=True, exist_ok=True)
        for _ in range(3):  # a free port can be taken between probing and binding: try another
            self.port = _free_port()
            cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", self.store_uri,
                   "--artifacts-destination", str(self.artifacts), "--host", "127.0.0.1",
                   "--port", str(self.port), "--workers", "1"]
            env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
            with open(self.root / "server.log", "ab") as log:
                self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                             stdin=subprocess.DEVNULL, start_new_session=True)
            if self._wait_until_up():
                return self.uri
            self.stop()
        tail = (self.root / "server.log").read_text(errors="replace").strip().splitlines()[-3:]
        raise RuntimeError(f"the local MLflow server did not start (log {self.root / 'server.log'}: "
                           f"{' | '.join(tail)})")

    def _wait_until_up(self) -> bool:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                    if r.status == 200:
                        return True
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.25)
        return False

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
            try:
                os.killpg(proc.pid, sig)  # the server's own group: the CLI and its uvicorn worker
            except ProcessLookupError:
                return
            try:
                proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def __enter__(self) -> LocalMlflowServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
