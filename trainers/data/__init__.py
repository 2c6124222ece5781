"""Datasets: the embedded synthetic world and the real loaders, all returning the index contract."""

from trainers.data.labels import AU_NAMES, LABEL_SPACES, LabelSpace

# imported eagerly (numpy only): a lazy wrapper named like the submodule would be shadowed by it
from trainers.data.synthetic import synthetic  # noqa: E402


def load_affwild2(root, split, **kwargs):
    from trainers.data.affwild2 import load_affwild2 as _load

    return _load(root, split, **kwargs)


def load_affectnet(root, split, **kwargs):
    from trainers.data.affectnet import load_affectnet as _load

    return _load(root, split, **kwargs)


def load_rafdb(root, split, **kwargs):
    from trainers.data.rafdb import load_rafdb as _load

    return _load(root, split, **kwargs)


__all__ = ["AU_NAMES", "LABEL_SPACES", "LabelSpace", "load_affectnet", "load_affwild2", "load_rafdb",
           "synthetic"]
