import builtins
import os

import numpy as np
import pandas as pd
import pytest
import torch

from pyro_vae.data import Data, default_root, load_data


@pytest.fixture
def table():
    rng = np.random.default_rng(0)
    return rng.normal(size=(7, 3))


# ---------------------------------------------------------------------------------------
# in-memory sources
# ---------------------------------------------------------------------------------------
def test_tensor_and_array_sources_keep_values(table):
    d = load_data(table, dtype=torch.float64)
    assert isinstance(d, Data) and d.labels is None and d.shape is None and len(d) == 7
    assert torch.equal(d.x, torch.from_numpy(table))
    t = torch.from_numpy(table)
    assert torch.equal(load_data(t, dtype=torch.float64).x, t)
    assert load_data(t).x.dtype == torch.float32


def test_array_columns_and_label_column(table):
    a = np.concatenate([table, np.array([[0, 1, 2, 0, 1, 2, 0]]).T], axis=1)
    d = load_data(a, label_column=3, dtype=torch.float64)
    assert torch.equal(d.x, torch.from_numpy(table))
    assert d.labels.dtype == torch.long and d.labels.tolist() == [0, 1, 2, 0, 1, 2, 0]
    d2 = load_data(a, columns=[2, 0], dtype=torch.float64)
    assert torch.equal(d2.x, torch.from_numpy(table[:, [2, 0]]))


def test_dataframe_numeric_columns_and_text_labels():
    frame = pd.DataFrame({"a": [1.0, 2.0, 3.0], "b": [4, 5, 6], "kind": ["y", "x", "y"]})
    d = load_data(frame, label_column="kind", dtype=torch.float64)
    assert torch.equal(d.x, torch.tensor([[1.0, 4], [2, 5], [3, 6]], dtype=torch.float64))
    assert d.labels.tolist() == [1, 0, 1] and d.label_names == ("x", "y")
    with pytest.raises(ValueError, match="'kind'.*not numeric.*columns="):
        load_data(frame)
    assert load_data(frame, columns=["b"]).x.reshape(-1).tolist() == [4, 5, 6]


def test_uint8_pixels_are_scaled_and_scale_options():
    px = torch.tensor([[0, 51, 255], [255, 102, 0]], dtype=torch.uint8)
    assert torch.allclose(load_data(px).x, px.float() / 255)
    assert torch.equal(load_data(px, scale=None).x, px.float())
    x = torch.tensor([[1.0, 10.0], [3.0, 10.0], [2.0, 10.0]])
    # non-image float data are left alone by "auto"
    assert torch.equal(load_data(x).x, x)
    assert torch.equal(load_data(x, scale="minmax").x, torch.tensor([[0.0, 0], [1, 0], [0.5, 0]]))
    assert torch.equal(load_data(x, scale=2).x, x / 2)
    with pytest.raises(ValueError, match="scale must be"):
        load_data(x, scale="log")


def test_big_endian_arrays_are_converted():
    a = np.arange(6, dtype=">i4").reshape(3, 2)
    d = load_data(a, dtype=torch.float64)
    assert torch.equal(d.x, torch.arange(6, dtype=torch.float64).reshape(3, 2))
    d = load_data(np.arange(6, dtype=">f8").reshape(3, 2), label_column=1, dtype=torch.float64)
    assert d.x.reshape(-1).tolist() == [0.0, 2.0, 4.0] and d.labels.tolist() == [1, 3, 5]


@pytest.mark.parametrize("bad, message", [
    (np.zeros(5), r"1-D.*reshape\(-1, 1\)"),
    (np.zeros((2, 3, 4)), r"3-D.*reshape\(len\(x\), -1\)"),
    (np.zeros((0, 3)), "empty"),
    (np.array([[1.0, np.nan], [0.0, 1.0]]), r"NaN or infinite.*rows 0"),
    (np.array([[1.0, 2.0], [np.inf, 1.0]]), r"NaN or infinite.*rows 1"),
    (np.array([["a", "b"]]), "not numeric"),
])
def test_bad_arrays(bad, message):
    with pytest.raises(ValueError, match=message):
        load_data(bad)


def test_values_too_large_for_the_dtype_are_called_too_large(tmp_path):
    with pytest.raises(ValueError, match=r"1e\+300.*too large for torch.float32"):
        load_data(np.array([[1e300, 1.0], [0.0, 1.0]]))
    p = tmp_path / "big.csv"
    p.write_text("a,b\n1e300,1\n0,1\n")
    with pytest.raises(ValueError, match=r"big.csv.*too large"):
        load_data(p)
    # float64 holds them
    assert load_data(p, dtype=torch.float64).x[0, 0] == 1e300
    # scaling that overflows is caught too
    with pytest.raises(ValueError, match="scale='minmax' overflowed.*too large to scale"):
        load_data(np.array([[1e308], [-1e308]]), scale="minmax", dtype=torch.float64)


# ---------------------------------------------------------------------------------------
# paths
# ---------------------------------------------------------------------------------------
def test_unknown_extension_and_missing_file(tmp_path):
    p = tmp_path / "data.xlsx"
    p.write_text("x")
    with pytest.raises(ValueError, match=r"unknown file type '\.xlsx'.*\.csv.*\.npy.*\.npz.*\.pt.*IDX"):
        load_data(p)
    with pytest.raises(FileNotFoundError, match="no file or folder"):
        load_data(tmp_path / "missing.csv")


@pytest.mark.parametrize("suffix, write", [
    (".csv", lambda p: p.write_text("a,b\n1,2\n")),
    (".npy", lambda p: np.save(p, np.ones((2, 2)))),
    (".pt", lambda p: torch.save(torch.ones(2, 2), p)),
])
def test_unreadable_file_gets_permission_advice(tmp_path, monkeypatch, suffix, write):
    """The operating system's refusal (simulated: the tests may run as root, who reads anything)
    becomes advice about permissions, not a parse error."""
    p = tmp_path / f"secret{suffix}"
    write(p)
    real_open = builtins.open

    def refuse(file, *args, **kwargs):
        if os.fspath(file) == str(p):
            raise PermissionError(13, "Permission denied", str(p))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", refuse)
    with pytest.raises(PermissionError, match=r"cannot read .*secret.*: permission denied; check the file's permissions"):
        load_data(p)


def test_named_dataset_without_files_asks_for_download(tmp_path, monkeypatch):
    """Without the files and with download=False, nothing touches the network: the error
    names the option that would download them."""
    import socket

    def no_network(*args, **kwargs):
        raise AssertionError("load_data tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    for name in ("mnist", "fashion-mnist", "kmnist"):
        with pytest.raises(FileNotFoundError, match="pass download=True"):
            load_data(name, root=tmp_path, download=False)


def test_default_root_is_the_environment_variable_or_data_under_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("PYRO_VAE_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    assert default_root() == os.path.join(os.getcwd(), "data")
    monkeypatch.setenv("PYRO_VAE_DATA_DIR", str(tmp_path / "elsewhere"))
    assert default_root() == str(tmp_path / "elsewhere")
