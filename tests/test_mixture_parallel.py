"""Tests of pyro_vae.mixture.parallel: blocks side by side on threads, results in block order.

References: the plain sequential list of the same calls; torch's thread count before the call.
"""

import threading
import time

import pytest
import torch

from gaussian_mixtures import fit_quietly, overlapping_data
from pyro_vae.mixture import COVARIANCE_TYPES, GaussianMixture
from pyro_vae.mixture import gaussian as G
from pyro_vae.mixture.parallel import map_blocks


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_results_come_in_block_order_from_several_threads_with_one_kernel_thread_each(two_threads):
    seen = []

    def fn(i):
        seen.append((threading.get_ident(), torch.get_num_threads()))
        time.sleep(0.01 * (i % 3))              # uneven blocks: threads take them as they come
        return torch.full((2,), float(i))

    out = map_blocks(fn, 12, torch.device("cpu"))
    assert [float(t[0]) for t in out] == [float(i) for i in range(12)]
    assert len({ident for ident, _ in seen}) == 2
    assert {threads for _, threads in seen} == {1}
    assert torch.get_num_threads() == 2


def test_an_error_in_a_block_propagates_and_stops_the_rest(two_threads):
    started = []

    def fn(i):
        started.append(i)
        if i == 1:
            raise RuntimeError("block 1 failed")
        time.sleep(0.02)
        return i

    with pytest.raises(RuntimeError, match="block 1 failed"):
        map_blocks(fn, 50, torch.device("cpu"))
    assert len(started) < 50
    assert torch.get_num_threads() == 2


def test_one_thread_runs_every_block_on_the_calling_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        idents = map_blocks(lambda i: threading.get_ident(), 5, "cpu")
    finally:
        torch.set_num_threads(before)
    assert idents == [threading.get_ident()] * 5
    assert map_blocks(lambda i: i, 0, "cpu") == []


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_a_fit_is_bit_identical_on_one_and_two_threads(monkeypatch, covariance_type):
    # blocks are the same and each is computed with single-threaded kernels: the summation
    # order, hence every rounding, does not depend on the number of threads
    x = overlapping_data(n=600, d=3)
    monkeypatch.setattr(G, "GRAM_BLOCK_ELEMENTS", 50 * G.n_gram_features(G.scatter_kind(covariance_type), 3))
    kwargs = dict(covariance_type=covariance_type, init_params="random", random_state=2, max_iter=15,
                  tol=0.0, algorithm="gram")
    before = torch.get_num_threads()
    fits = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            fits.append(fit_quietly(GaussianMixture(3, **kwargs), x))
    finally:
        torch.set_num_threads(before)
    one, two = fits
    assert one.lower_bound_ == two.lower_bound_
    for name in ("weights_", "means_", "covariances_"):
        assert torch.equal(getattr(one, name), getattr(two, name)), name
