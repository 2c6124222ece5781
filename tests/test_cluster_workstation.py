"""``docker/workstation.yaml`` for real: ``ray up`` over SSH to this machine, ``ray submit`` a sweep,
``ray down``.

An ``sshd`` of the test's own (Debian's ``openssh-server``, installed when absent, like the PostgreSQL
test's server) listens on 127.0.0.1:<free port> with a throwaway host key, and accepts only a
throwaway client key whose ``AuthorizedKeysFile`` is in the test's temp dir; its ``SetEnv HOME`` gives
the remote side a temporary home, so the Ray user's ``~/.bashrc`` that the cluster file appends to,
Ray's ``~/ray_bootstrap_*`` files and its token are all in the temp dir. The launcher side also runs
with a temporary ``HOME``; the SSH port reaches Ray's ``ssh``/``rsync`` calls through an ``ssh``
wrapper first on ``PATH`` (Ray's cluster file has no port field; a user sets one in ``~/.ssh/config``).
Nothing in the real ``~/.ssh`` or shell start-up files is read for writing or changed.

``ray up`` and ``ray down`` run the cluster file's ``ray stop``, which stops *every* Ray of this
user on the machine: run this test alone (the project's heavy lock, or CI's sequential run).
Everything the test started (sshd, the cluster's Ray processes, SSH control masters) is found by pid
or by its temp dir and killed at the end, and checked gone.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest

from orchestrator.expand import load_sweep
from tests.support.ray_local import stop_ray_local
from tests.support.services import REPO, free_ports, kill_all, listening_addresses, processes
from tests.support.sweeps import sweep_yaml

VENV_BIN = Path(sys.executable).parent
RAY = str(VENV_BIN / "ray")


def _apt_install(*packages: str) -> str | None:
    """Install Debian packages; None on success, else why not."""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return f"needs root and apt-get: `apt-get install -y {' '.join(packages)}`"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages]
    if subprocess.run(install, env=env, capture_output=True, timeout=600).returncode == 0:
        return None
    subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=600)
    done = subprocess.run(install, env=env, capture_output=True, text=True, timeout=600)
    return None if done.returncode == 0 else f"apt-get failed: {done.stderr.strip()[-300:]}"


def sshd_and_rsync() -> str:
    """The sshd binary (Ray's launcher also needs rsync), installing the packages when absent."""
    missing = [pkg for pkg, path in (("openssh-server", "/usr/sbin/sshd"), ("rsync", shutil.which("rsync")))
               if not path or not Path(path).exists()]
    if missing:
        why = _apt_install(*missing)
        if why:
            pytest.skip(f"{' and '.join(missing)} not installed and cannot be: {why}")
    if not Path("/usr/sbin/sshd").exists() or not shutil.which("rsync") or not shutil.which("ssh"):
        pytest.skip("sshd, ssh or rsync still missing after installing openssh-server and rsync")
    return "/usr/sbin/sshd"


def processes_under(marker: str, env_marker: str) -> set[int]:
    """Processes whose command line contains ``marker`` or whose environment contains ``env_marker``
    (everything started in the remote session inherits its temporary HOME), and their descendants."""
    procs = processes()
    found = set()
    for pid, (_, cmd) in procs.items():
        if pid == os.getpid():
            continue
        if marker in cmd:
            found.add(pid)
            continue
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if env_marker.encode() in environ:
            found.add(pid)
    grew = True
    while grew:
        more = {pid for pid, (ppid, _) in procs.items() if ppid in found} - found
        grew, found = bool(more), found | more
    return found


class Sshd:
    """sshd on 127.0.0.1:<port>, its config, host key and authorized keys all under ``root``."""

    def __init__(self, root: Path, user: str):
        self.root, self.user = root, user
        self.port = free_ports(1)[0]
        self.key = root / "id_ed25519"
        self.remote_home = root / "remote-home"
        self.proc: subprocess.Popen | None = None

    def start(self, sshd: str, timeout: float = 120) -> Sshd:
        self.remote_home.mkdir()
        for key in (self.key, self.root / "host_key"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "affsweep-test", "-f", str(key)],
                           check=True, capture_output=True, timeout=60)
        shutil.copyfile(f"{self.key}.pub", self.root / "authorized_keys")
        config = self.root / "sshd_config"
        config.write_text(f"""\
Port {self.port}
ListenAddress 127.0.0.1
HostKey {self.root / 'host_key'}
PidFile {self.root / 'sshd.pid'}
AuthorizedKeysFile {self.root / 'authorized_keys'}
AllowUsers {self.user}
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
SetEnv HOME={self.remote_home}
""")
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation directory
        self.log = open(self.root / "sshd.log", "ab")  # noqa: SIM115 -- closed in stop()
        self.proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(config)], stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"sshd exited: {(self.root / 'sshd.log').read_text()[-2000:]}"
            if listening_addresses(self.port):
                return self
            time.sleep(0.2)
        raise AssertionError(f"sshd did not listen: {(self.root / 'sshd.log').read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None:
            with_children = {self.proc.pid} | {pid for pid, (ppid, _) in processes().items() if ppid == self.proc.pid}
            kill_all(with_children)
            self.proc.wait(timeout=30)
            self.log.close()


def render(template: str, values: dict[str, str]) -> str:
    """What docs/cluster.md's ``envsubst '$AFFSWEEP_...'`` does: only the AFFSWEEP_* variables."""
    if shutil.which("envsubst"):
        done = subprocess.run(["envsubst", " ".join(f"${k}" for k in values)], input=template, text=True,
                              capture_output=True, env={**os.environ, **values}, check=True, timeout=60)
        return done.stdout
    return re.sub(r"\$\{(AFFSWEEP_\w+)\}", lambda m: values[m[1]], template)


@pytest.mark.slow
@pytest.mark.ci
@pytest.mark.alone  # its `ray stop` stops every Ray on the machine
@pytest.mark.timeout(1500)
def test_ray_up_submit_down_on_a_workstation_over_ssh(tmp_path):
    sshd = sshd_and_rsync()
    import getpass

    user = getpass.getuser()
    root = Path(tempfile.mkdtemp(prefix="affsweep-ws-", dir="/tmp"))  # short: Ray's sockets and ssh's ControlPath
    server = Sshd(root, user)
    cluster = f"affsweep-ws-{secrets.token_hex(4)}"
    bindir, local_home = root / "bin", root / "local-home"
    bindir.mkdir()
    local_home.mkdir()
    try:
        server.start(sshd)
        (bindir / "ssh").write_text(f'#!/bin/sh\nexec {shutil.which("ssh")} -p {server.port} "$@"\n')
        (bindir / "ssh").chmod(0o755)
        values = {"AFFSWEEP_HEAD_IP": "127.0.0.1", "AFFSWEEP_SSH_USER": user, "AFFSWEEP_SSH_KEY": str(server.key),
                  "AFFSWEEP_DIR": str(REPO)}
        config = root / "workstation.local.yaml"
        config.write_text(render((REPO / "docker" / "workstation.yaml").read_text(), values))
        assert "${AFFSWEEP" not in config.read_text()

        yaml = sweep_yaml(tmp_path / "ws.yaml", name="ws", uri="local", storage=tmp_path / "runs",
                          grid={"seed": [0], "method.cost": ["none", "circumplex"]}, epochs=1, retries=0)
        plan = load_sweep(yaml)
        env = {**os.environ, "HOME": str(local_home), "PATH": f"{bindir}:{VENV_BIN}:{os.environ['PATH']}",
               "RAY_USAGE_STATS_ENABLED": "0"}
        for var in ("RAY_ADDRESS", "PYTHONPATH", "VIRTUAL_ENV"):
            env.pop(var, None)

        def ray(*args: str, timeout: float) -> str:
            done = subprocess.run([RAY, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
                                  stdin=subprocess.DEVNULL)
            out = done.stdout + done.stderr
            assert done.returncode == 0, f"ray {' '.join(args)} exited {done.returncode}:\n{out[-6000:]}"
            return out

        stop_ray_local()  # the cluster file's `ray stop` would kill this process's Ray (conftest's ray_local)
        ray("up", "-y", "--no-config-cache", "-n", cluster, str(config), timeout=600)
        bashrc = (server.remote_home / ".bashrc").read_text()
        assert f"source {REPO}/.venv/bin/activate;" in bashrc  # the remote shell's python is the venv's
        out = ray("submit", "--no-config-cache", "-n", cluster, str(config), "orchestrator/submit.py", "--",
                  str(yaml), timeout=900)
        sweep_dir = tmp_path / "runs" / "ws"
        table = pd.read_parquet(sweep_dir / "results.parquet")
        assert sorted(table["trial_id"]) == sorted(t.trial_id for t in plan.trials), out[-4000:]  # each exactly once
        assert set(table["status"]) == {"done"}
        assert (sweep_dir / "report.html").is_file() and (sweep_dir / "report.md").is_file()
        assert "2/2 trials done" in out
        ray("down", "-y", "-n", cluster, str(config), timeout=600)
    finally:
        for _ in range(5):  # whatever of ours is left: Ray's processes, ssh control masters, sshd's sessions
            pids = processes_under(str(root), f"HOME={server.remote_home}")
            if not pids:
                break
            kill_all(pids)
            time.sleep(1)
        server.stop()
        left = processes_under(str(root), f"HOME={server.remote_home}")
        ray_tmp = Path(tempfile.gettempdir()) / "ray"
        for suffix in ("state", "lock"):
            (ray_tmp / f"cluster-{cluster}.{suffix}").unlink(missing_ok=True)
        shutil.rmtree(root, ignore_errors=True)
    assert not left, f"processes of the test survived: {left}"
    assert server.proc.poll() is not None and not listening_addresses(server.port)
    with pytest.raises(ProcessLookupError):
        os.kill(server.proc.pid, 0)


def test_workstation_yaml_validates_against_rays_schema_and_holds_no_secret():
    import json

    import jsonschema
    import ray
    import yaml

    from tests.support.leaks import leaks

    text = (REPO / "docker" / "workstation.yaml").read_text()
    assert not leaks(text)
    values = {"AFFSWEEP_HEAD_IP": "127.0.0.1", "AFFSWEEP_SSH_USER": "me", "AFFSWEEP_SSH_KEY": "/k",
              "AFFSWEEP_DIR": "/repo"}
    rendered = render(text, values)
    assert set(re.findall(r"\$\{(AFFSWEEP_\w+)\}", text)) == set(values)  # the four variables docs/cluster.md names
    assert "$RAY_HEAD_IP" in rendered  # Ray's own variable is left for Ray
    config = yaml.safe_load(rendered)
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    assert config["provider"] == {"type": "local", "head_ip": "127.0.0.1", "worker_ips": []}
    assert config["auth"] == {"ssh_user": "me", "ssh_private_key": "/k"}
    starts = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    assert all("/repo/.venv/bin/ray " in c for c in starts)  # Ray from the project's venv
    assert "--dashboard-host=127.0.0.1" in " ".join(config["head_start_ray_commands"])


def test_submit_reads_a_relative_sweep_path_in_the_clone(tmp_path, monkeypatch):
    """`ray submit` runs submit.py from the head's home: `-- sweeps/X.yaml` means the clone's file."""
    import orchestrator.cli
    from orchestrator import submit

    seen = {}
    monkeypatch.setattr(orchestrator.cli, "main", lambda argv: seen.update(argv=argv, cwd=os.getcwd()) or 0)
    monkeypatch.chdir(tmp_path)
    assert submit.main(["--", "sweeps/demo.yaml", "--resume"]) == 0
    assert seen == {"argv": ["run", "sweeps/demo.yaml", "--resume", "--address", "auto"], "cwd": str(REPO)}
    (tmp_path / "sweeps").mkdir()
    (tmp_path / "sweeps" / "demo.yaml").write_text("name: mine\n")
    monkeypatch.chdir(tmp_path)
    submit.main(["sweeps/demo.yaml"])
    assert seen["cwd"] == str(tmp_path)  # a file where the command runs wins
