"""Datasets: the embedded synthetic world and the real loaders, all returning the index contract."""

from trainers.data.labels import AU_NAMES, LABEL_SPACES, LabelSpace


def synthetic(preset: str, n: int, seed: int, **kwargs):
    from trainers.data.synthetic import synthetic as _synthetic

    return _synthetic(preset, n, seed, **kwargs)


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
