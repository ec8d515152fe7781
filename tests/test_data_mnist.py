import os

import pytest
import torch

from data_files import MNIST_DIR, write_fake_mnist
from pyro_vae.data import MNIST_10K_TEST_SEED, find_mnist_dir, load_data, load_mnist_10k

needs_mnist = pytest.mark.skipif(not os.path.isdir(MNIST_DIR), reason="real MNIST folder absent")


@pytest.fixture
def no_mnist_env(monkeypatch):
    monkeypatch.delenv("PYRO_VAE_MNIST_DIR", raising=False)


# ---------------------------------------------------------------------------------------
# where the files are found
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("relative", [os.path.join("..", "shared", "data", "mnist"),
                                      os.path.join("shared", "data", "mnist"),
                                      os.path.join("data", "mnist")])
def test_mnist_folder_is_found_relative_to_the_working_directory(tmp_path, monkeypatch, no_mnist_env, relative):
    work = tmp_path / "repo"
    work.mkdir()
    folder = write_fake_mnist(os.path.normpath(os.path.join(work, relative)))
    monkeypatch.chdir(work)
    assert os.path.samefile(find_mnist_dir(), folder)
    assert os.path.isabs(find_mnist_dir())


def test_mnist_folder_from_the_argument_or_the_environment_variable(tmp_path, monkeypatch, no_mnist_env):
    given = write_fake_mnist(str(tmp_path / "given"))
    env = write_fake_mnist(str(tmp_path / "env"))
    write_fake_mnist(str(tmp_path / "data" / "mnist"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYRO_VAE_MNIST_DIR", env)
    assert find_mnist_dir() == env  # the variable wins over the working directory
    assert find_mnist_dir(given) == given  # and the argument over both
    # an explicit folder without the files is an error, not a reason to look elsewhere
    monkeypatch.setenv("PYRO_VAE_MNIST_DIR", str(tmp_path / "nothing"))
    with pytest.raises(FileNotFoundError, match=r"nothing \(from \$PYRO_VAE_MNIST_DIR\)"):
        find_mnist_dir()


def test_no_folder_outside_the_working_directory_is_searched(tmp_path, monkeypatch, no_mnist_env):
    """From a folder without the files, nothing is found, even where the machine has MNIST."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as e:
        find_mnist_dir()
    message = str(e.value)
    for how in ("root=<folder>", "--root", "PYRO_VAE_MNIST_DIR=<folder>", "../shared/data/mnist",
                "download=True"):
        assert how in message
    assert os.path.join(str(tmp_path), "data", "mnist") in message


def test_mnist_10k_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="PYRO_VAE_MNIST_DIR"):
        load_mnist_10k(tmp_path)


def test_mnist_10k_refuses_other_files(tmp_path):
    write_fake_mnist(str(tmp_path), n=3)
    with pytest.raises(ValueError, match=r"expected the 10,000 MNIST test digits.*\(3, 28, 28\)"):
        load_mnist_10k(tmp_path)


# ---------------------------------------------------------------------------------------
# real MNIST digits and the MNIST-10k protocol
# ---------------------------------------------------------------------------------------
@needs_mnist
def test_real_mnist_test_digits():
    d = load_data(MNIST_DIR, train=False)
    assert d.x.shape == (10000, 784) and d.shape == (28, 28) and d.x.dtype == torch.float32
    assert d.x.min() == 0 and d.x.max() == 1
    assert d.labels.shape == (10000,) and sorted(d.labels.unique().tolist()) == list(range(10))
    # the first test digit is a 7, the second a 2 (the published file)
    assert d.labels[:2].tolist() == [7, 2]
    assert torch.equal(d.x, load_data(os.path.join(MNIST_DIR, "t10k-images-idx3-ubyte.gz")).x)


@needs_mnist
def test_mnist_10k_protocol():
    assert os.path.samefile(find_mnist_dir(MNIST_DIR), MNIST_DIR)
    train_x, test_x, train_y, test_y = load_mnist_10k(MNIST_DIR)
    assert train_x.shape == (9000, 784) and test_x.shape == (1000, 784)
    assert train_y.shape == (9000,) and test_y.shape == (1000,)
    assert train_x.min() >= 0 and train_x.max() <= 1
    # grey levels are kept in training
    assert ((train_x > 0) & (train_x < 1)).any()
    assert set(test_x.unique().tolist()) == {0.0, 1.0}
    full = load_data(MNIST_DIR, train=False)
    assert torch.equal(train_x, full.x[:9000]) and torch.equal(test_y, full.labels[9000:])
    assert MNIST_10K_TEST_SEED == 1234
    expected = torch.bernoulli(full.x[9000:], generator=torch.Generator().manual_seed(1234))
    assert torch.equal(test_x, expected)
    again = load_mnist_10k(MNIST_DIR)
    assert torch.equal(again[1], test_x)
    held = load_data("mnist10k", root=MNIST_DIR, train=False)
    assert torch.equal(held.x, test_x) and held.shape == (28, 28)
