"""Processes and services the end-to-end tests start and stop themselves: a Ray cluster of ``ray start``
process trees on 127.0.0.1, an ``mlflow server``, ``affsweep run`` in its own process group, and the
process-table helpers that find (by temp dir or pid) and kill only what a test started -- never
``ray stop``, which would stop every Ray instance on the machine."""

from __future__ import annotations

import http.client
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
RAY = str(Path(sys.executable).with_name("ray"))

class _ServerDied(Exception):
    """The mlflow server process exited while starting (e.g. its port was taken)."""


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def listening_addresses(port: int) -> set[str]:
    """Local IPv4/6 addresses with a socket listening on ``port`` (from /proc/net/tcp{,6})."""
    found = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            addr, p = local.rsplit(":", 1)
            if int(p, 16) == port and state == "0A":  # LISTEN
                found.add(socket.inet_ntoa(bytes.fromhex(addr)[::-1]) if len(addr) == 8 else addr)
    return found


# --- processes --------------------------------------------------------------------------------------

def processes() -> dict[int, tuple[int, str]]:
    """pid -> (ppid, command line) for every process readable now."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        out[int(entry.name)] = (ppid, cmd)
    return out


def processes_of(marker: str) -> set[int]:
    """Processes whose command line contains ``marker`` (a temp dir of ours) and all their descendants
    (Ray workers rename themselves ``ray::...`` but stay children of their raylet)."""
    procs = processes()
    found = {pid for pid, (_, cmd) in procs.items() if marker in cmd and pid != os.getpid()}
    grew = True
    while grew:
        more = {pid for pid, (ppid, _) in procs.items() if ppid in found} - found
        grew = bool(more)
        found |= more
    return found


def kill_all(pids: set[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


class RayCluster:
    """``ray start --head`` plus ``len(cpus) - 1`` worker nodes on 127.0.0.1, in ``root``."""

    def __init__(self, root: Path, cpus: list[int]):
        self.root, self.cpus = Path(root), cpus
        # short: Ray's unix sockets live under it (107-byte limit); removed by stop()
        self.temp_dir = Path(tempfile.mkdtemp(prefix="affsweep-ray-", dir="/tmp"))
        self.port: int | None = None
        # token authentication, with a token made here for this cluster only
        self.env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token",
                    "RAY_AUTH_TOKEN": secrets.token_hex(32)}
        self.env.pop("RAY_ADDRESS", None)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _start_node(self, head: bool, cpus: int) -> None:
        ports = free_ports(4)
        cmd = [RAY, "start", "--node-ip-address", "127.0.0.1", "--num-cpus", str(cpus), "--num-gpus", "0",
               "--dashboard-agent-listen-port", str(ports[0]), "--dashboard-agent-grpc-port", str(ports[1]),
               "--runtime-env-agent-port", str(ports[2]), "--metrics-export-port", str(ports[3]),
               "--disable-usage-stats"]
        if head:
            cmd += ["--head", "--port", str(self.port), "--temp-dir", str(self.temp_dir), "--include-dashboard",
                    "false"]
        else:
            cmd += ["--address", self.address]
        done = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=120,
                              stdin=subprocess.DEVNULL)
        assert done.returncode == 0, f"{' '.join(cmd)}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"

    def start(self) -> RayCluster:
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_ports(1)[0]
        for i, cpus in enumerate(self.cpus):
            self._start_node(head=i == 0, cpus=cpus)
        return self

    def node_ids(self) -> list[str]:
        """The alive nodes' ids, asked from a separate driver process."""
        code = ("import ray; ray.init(address='{a}', log_to_driver=False); "
                "print(' '.join(n['NodeID'] for n in ray.nodes() if n['Alive'])); ray.shutdown()")
        out = subprocess.run([PYTHON, "-c", code.format(a=self.address)], env=self.env, capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout.split()

    def stop(self) -> None:
        for _ in range(5):  # a raylet may spawn a worker while we collect: sweep until none is left
            pids = processes_of(str(self.temp_dir))
            if not pids:
                break
            kill_all(pids)
            time.sleep(1)
        assert not processes_of(str(self.temp_dir)), "Ray processes of the test survived"
        shutil.rmtree(self.temp_dir, ignore_errors=True)


class MlflowServer:
    """``mlflow server`` on 127.0.0.1, restartable on the same port and store (to cut it off mid-sweep)."""

    def __init__(self, root: Path, backend_store_uri: str | None = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.store_uri = backend_store_uri or f"sqlite:///{self.root / 'mlflow.db'}"
        self.port = free_ports(1)[0]
        self.proc: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 180, env: dict | None = None, attempts: int = 3) -> MlflowServer:
        """Start on a port chosen now (a port chosen earlier may since have gone to a Ray process);
        if the server cannot bind it after all, try another port."""
        for attempt in range(attempts):
            if attempt or self.port is None:
                self.port = free_ports(1)[0]
            try:
                return self._start_once(timeout, env)
            except _ServerDied:
                if attempt == attempts - 1:
                    log = (self.root / "server.log").read_text()[-2000:]
                    raise AssertionError(f"mlflow server did not start: {log}") from None
        raise AssertionError("unreachable")

    def _start_once(self, timeout: float, env: dict | None) -> MlflowServer:
        self.env = env if env is not None else getattr(self, "env", {})
        cmd = [PYTHON, "-m", "mlflow", "server", "--backend-store-uri", self.store_uri, "--artifacts-destination",
               str(self.root / "artifacts"), "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **self.env}
        with open(self.root / "server.log", "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise _ServerDied
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, OSError, http.client.HTTPException):  # not (yet) our server
                time.sleep(0.25)
        raise AssertionError(f"mlflow server did not start: {(self.root / 'server.log').read_text()[-2000:]}")

    def stop(self, kill: bool = False) -> None:
        """SIGTERM (a clean shutdown), or SIGKILL with ``kill`` (a crash)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        for sig in (signal.SIGKILL,) if kill else (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)  # the server's own group: the CLI and its uvicorn worker
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=15)
                break
            except subprocess.TimeoutExpired:
                continue
        deadline = time.monotonic() + 15
        while listening_addresses(self.port) and time.monotonic() < deadline:
            time.sleep(0.2)


def affsweep_run(yaml: Path, address: str, env: dict, *, resume: bool = False, wait: bool = True,
                 timeout: float = 480):
    """``affsweep run YAML --address ADDR`` as a user runs it (its own process group)."""
    cmd = [PYTHON, "-m", "orchestrator", "run", str(yaml), "--address", address] + (["--resume"] if resume else [])
    env = {**env, "RAY_AIR_NEW_OUTPUT": "0", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    if not wait:
        return proc
    out = finish(proc, timeout)
    return proc.returncode, out


def finish(proc, timeout: float = 480) -> str:
    """The output of a driver started with ``wait=False``; killed (its whole group) on timeout."""
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return out
