"""Run a sweep on a Ray cluster: ``ray submit CLUSTER.yaml orchestrator/submit.py -- SWEEP.yaml``.

``ray submit`` copies this file to the head node and runs it there with the arguments after ``--``;
it runs ``affsweep run SWEEP.yaml`` against the cluster's Ray (``--address auto``), so trials are
scheduled on every node. The sweep YAML path is read on the head node (mount the repository, e.g.
with the cluster YAML's ``file_mounts``), and the sweep's ``storage`` must be a directory every node
can write (a shared file system); with several nodes set ``tracking.uri`` to a shared MLflow server,
since ``local`` serves on the head's 127.0.0.1 only. Any other ``affsweep run`` option may follow.

``ray submit`` runs this script from the head's home directory; a relative sweep path that is not
found there but is found in the repository that holds ``orchestrator`` (a clone, as on a
workstation: ``docker/workstation.yaml``) is run from that repository, so its ``storage: runs``
lands in the clone as with ``make demo``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from orchestrator.cli import main as cli_main

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv or argv[0].startswith("-"):
        print("usage: ray submit CLUSTER.yaml orchestrator/submit.py -- SWEEP.yaml [affsweep run options]",
              file=sys.stderr)
        return 2
    sweep = Path(argv[0])
    if not sweep.is_absolute() and not sweep.is_file():
        import orchestrator

        repo = Path(orchestrator.__file__).resolve().parents[1]
        if (repo / sweep).is_file():
            os.chdir(repo)
    if "--address" not in argv:
        argv += ["--address", "auto"]
    return cli_main(["run", *argv])


if __name__ == "__main__":
    sys.exit(main())
