"""Images kept in device memory: same metrics as the loader, a clean fallback naming what it needs."""

import pandas as pd
import torch

from trainers.data import device_resident
from trainers.engine import fit

TIMES = {"train_seconds", "images_per_second"}


def test_device_resident_images_give_the_loaders_metrics(tiny_trial, tmp_path, capsys):
    on, off = tiny_trial(data_on_device="on"), tiny_trial(data_on_device="off")
    assert on.trial_id == off.trial_id
    a = fit(on, tmp_path / "on", progress=False).metrics
    assert "data_on_device" not in capsys.readouterr().err  # it fitted: no fallback line
    b = fit(off, tmp_path / "off", progress=False).metrics
    assert {k: v for k, v in a.items() if k not in TIMES} == {k: v for k, v in b.items() if k not in TIMES}


def test_batches_are_the_stores_batches(tiny_trial):
    from trainers.engine import prepare_data

    store = prepare_data(tiny_trial()).train_images
    resident = device_resident.device_resident(store, "on", torch.device("cpu"))
    assert resident is device_resident.device_resident(store, "on", torch.device("cpu"))  # one copy per process
    idx = [5, 0, 17, 5]
    assert torch.equal(resident.take(idx), store.take(idx))
    assert resident.take(idx).shape == store.take(idx).shape == (4, 3, 24, 24)


def test_falls_back_to_the_loader_saying_how_much_it_needs(tiny_trial, tmp_path, monkeypatch, capsys):
    from trainers.data.pipeline import ImageStore
    from trainers.engine import prepare_data

    monkeypatch.setattr(device_resident, "free_bytes", lambda device: 1000)
    store = ImageStore(prepare_data(tiny_trial()).train_index, 24)  # a fresh store: nothing resident yet
    lines = []
    assert device_resident.device_resident(store, "on", torch.device("cpu"), lines.append) is None
    need = len(store) * 24 * 24 * 3 / 2**20  # uint8 (N, 24, 24, 3)
    assert lines == [f"data_on_device: the images need {need:.1f} MiB on cpu, more than 50% of the 0.0 MiB "
                     "free; using the loader"]
    jpeg = ImageStore(pd.DataFrame({"path": ["a.jpg"]}), 8)
    assert device_resident.device_resident(jpeg, "on", torch.device("cpu"), lines.append) is None
    assert "dataset.cache: true" in lines[-1]
    assert device_resident.device_resident(store, "auto", torch.device("cpu"), lines.append) is None  # CPU: auto=off
