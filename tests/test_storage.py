import os

import pandas as pd
import pytest
import torch

from pyro_vae import storage


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    path = tmp_path / "a.txt"
    storage.write_text(path, "old")
    with pytest.raises(RuntimeError):
        with storage.atomic_path(path) as tmp:
            with open(tmp, "w") as f:
                f.write("half")
            raise RuntimeError("crash mid-write")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["a.txt"]


def test_json_csv_and_checkpoint_round_trip(tmp_path):
    storage.write_json(tmp_path / "c.json", {"a": torch.tensor([1.0, 2.0]), "b": (1, 2)})
    assert (tmp_path / "c.json").read_text().count("1.0") == 1
    df = pd.DataFrame({"x": [1, 2]})
    storage.write_csv(tmp_path / "d.csv", df)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "d.csv"), df)
    state = {"w": torch.arange(3.0), "meta": {"epoch": 2, "name": "x"}}
    storage.save_checkpoint(tmp_path / "c.pt", state)
    back = storage.load_checkpoint(tmp_path / "c.pt")
    assert torch.equal(back["w"], state["w"]) and back["meta"] == state["meta"]


def test_missing_checkpoint():
    with pytest.raises(FileNotFoundError):
        storage.load_checkpoint("/nonexistent/ck.pt")
