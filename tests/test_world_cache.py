"""The synthetic world drawn once per node and shared: identical to drawing it, drawn only once."""

import numpy as np
import pandas as pd

from trainers.data import world_cache
from trainers.data.synthetic import synthetic


def test_cached_world_is_the_drawn_world_and_is_drawn_once(tmp_path, monkeypatch):
    drawn = synthetic("affwild2_like", 300, 3, image_size=16)
    first = world_cache.shared_synthetic("affwild2_like", 300, 3, image_size=16, cache_dir=tmp_path)
    calls = []
    import importlib

    module = importlib.import_module("trainers.data.synthetic")  # trainers.data re-exports the function
    monkeypatch.setattr(module, "synthetic", lambda *a, **k: calls.append(a))
    second = world_cache.shared_synthetic("affwild2_like", 300, 3, image_size=16, cache_dir=tmp_path)
    assert calls == []  # the second process maps the first one's files
    for world in (first, second):
        assert list(world.columns) == list(drawn.columns) and world.attrs == drawn.attrs
        pd.testing.assert_frame_equal(world.drop(columns="image"), drawn.drop(columns="image"))
        np.testing.assert_array_equal(np.stack(world["image"].to_list()), np.stack(drawn["image"].to_list()))
    assert isinstance(second["image"].iloc[0], np.memmap)  # a view of the shared file, not a copy
    assert len(list(tmp_path.iterdir())) == 1  # no temporary directory left behind


def test_each_defining_value_has_its_own_world(tmp_path):
    values = [("affwild2_like", 300, 3, 16, None), ("affwild2_like", 301, 3, 16, None),
              ("affwild2_like", 300, 4, 16, None), ("affwild2_like", 300, 3, 24, None),
              ("affectnet_like", 300, 3, 16, None), ("affwild2_like", 300, 3, 16, 0.2)]
    keys = {world_cache.world_key(*v) for v in values}
    assert len(keys) == 6
