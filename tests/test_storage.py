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


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_written_files_get_the_mode_a_plain_open_would(tmp_path, umask):
    old = os.umask(umask)
    try:
        storage.write_text(tmp_path / "atomic.txt", "x")
        with open(tmp_path / "plain.txt", "w") as f:
            f.write("x")
    finally:
        os.umask(old)
    mode = lambda p: os.stat(p).st_mode & 0o777  # noqa: E731
    assert mode(tmp_path / "atomic.txt") == mode(tmp_path / "plain.txt") == 0o666 & ~umask
