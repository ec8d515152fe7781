"""Tests of pyro_vae.mixture.sources: input conversion, data in chunks, the statistics of a source.

References: the in-memory fit (for chunked fits), explicit sums over all rows (for the
statistics), the same data given as numpy, torch, pandas and lists.
"""

import numpy as np
import pandas as pd
import pytest
import torch

from gaussian_mixtures import F64, LazyChunks, fit_quietly, overlapping_data, random_parameters
from pyro_vae.mixture import COVARIANCE_TYPES, GaussianMixture
from pyro_vae.mixture import gaussian as G
from pyro_vae.mixture import sources


# ----------------------------------------------------------------------------- input conversion
def test_numpy_torch_and_pandas_inputs_give_the_same_fit():
    x = overlapping_data(n=200, d=3)
    fits = [GaussianMixture(3, random_state=0).fit(v) for v in
            (x, x.numpy(), pd.DataFrame(x.numpy(), columns=["a", "b", "c"]), x.tolist())]
    for gm in fits[1:]:
        assert gm.lower_bound_ == fits[0].lower_bound_
        assert torch.equal(torch.as_tensor(gm.means_), fits[0].means_)
    frame = pd.DataFrame(x.numpy())
    torch.testing.assert_close(torch.as_tensor(fits[0].score_samples(frame)), fits[0].score_samples(x))
    # a DataFrame with named columns: the names are kept and checked
    named = fits[2]
    assert list(named.feature_names_in_) == ["a", "b", "c"]
    np.testing.assert_array_equal(named.predict(pd.DataFrame(x.numpy(), columns=["a", "b", "c"])),
                                  named.predict(x.numpy()))
    with pytest.raises(ValueError, match="feature names of X differ"):
        named.predict(pd.DataFrame(x.numpy(), columns=["c", "b", "a"]))


def test_float32_input_is_computed_in_float64_unless_asked():
    x = overlapping_data(n=300, d=3)
    x32 = x.float()
    a = GaussianMixture(3, random_state=0).fit(x32)
    b = GaussianMixture(3, random_state=0).fit(x32.double())
    assert a.means_.dtype == F64 and a.lower_bound_ == b.lower_bound_
    assert torch.equal(a.covariances_, b.covariances_)
    # float32 computation: same iterations, results equal to float32 precision
    w, m, prec = random_parameters(x, 3, "full", seed=1)
    kwargs = dict(max_iter=20, tol=0.0, weights_init=w, means_init=m, precisions_init=prec)
    a = fit_quietly(GaussianMixture(3, **kwargs), x32)
    c = fit_quietly(GaussianMixture(3, dtype=torch.float32, **kwargs), x32)
    assert c.means_.dtype == torch.float32 and c.score_samples(x32).dtype == torch.float32
    assert c.lower_bound_ == pytest.approx(a.lower_bound_, rel=1e-5)
    torch.testing.assert_close(c.score_samples(x32).double(), a.score_samples(x32), rtol=1e-4, atol=1e-4)
    for name in ("float32", np.float32):   # the names scikit-learn users write
        d = fit_quietly(GaussianMixture(3, dtype=name, **kwargs), x32)
        assert d.lower_bound_ == c.lower_bound_


@pytest.mark.parametrize("bad, error, match", [
    (np.array([[0.0, 1.0], [np.nan, 2.0], [1.0, 1.0]]), ValueError, "NaN"),
    (np.array([[0.0, 1.0], [np.inf, 2.0], [1.0, 1.0]]), ValueError, "infinite"),
    (np.arange(5.0), ValueError, r"2-D .*reshape 1-D data with X.reshape\(-1, 1\)"),
    (np.zeros((4, 2, 2)), ValueError, "2-D"),
    (np.zeros((2, 2)), ValueError, "2 samples but n_components=3"),
    (np.zeros((0, 2)), ValueError, r"0 sample\(s\)"),
    (np.zeros((5, 0)), ValueError, r"0 feature\(s\) \(shape=\(5, 0\)\) while a minimum of 1 is required"),
    (pd.DataFrame({"a": [1.0, 2.0, 3.0, 4.0], "b": ["x", "y", "z", "w"]}), ValueError, "non-numeric columns: b"),
    (np.array([["a", "b"], ["c", "d"], ["e", "f"]]), ValueError, "numbers"),
    (np.ones((4, 2)) * (1 + 1j), ValueError, "Complex data not supported"),
    (np.array([[1.0, {"a": 1}], [2.0, 3.0], [4.0, 5.0]], dtype=object), TypeError,
     "must contain numbers: float.. argument must be a string or a( real)? number"),
    (torch.eye(4).to_sparse(), TypeError, "sparse"),
])
def test_bad_data_is_rejected_with_a_message(bad, error, match):
    with pytest.raises(error, match=match):
        GaussianMixture(3).fit(bad)


def test_unusual_arrays_are_converted():
    x = overlapping_data(n=60, d=2).numpy()
    ref = GaussianMixture(2, random_state=0).fit(x)
    read_only = x.copy()
    read_only.flags.writeable = False
    for variant in (read_only, x.astype(">f8"), x.astype(object), np.asfortranarray(x)):
        gm = GaussianMixture(2, random_state=0).fit(variant)
        assert gm.lower_bound_ == ref.lower_bound_
    assert sources.as_tensor(np.array([[1, 2]], dtype=np.int32), F64, "cpu", "X").dtype == F64


def test_chunks_are_told_from_one_array():
    x = overlapping_data(n=10, d=2)
    assert sources.chunks_of(x) is None and sources.chunks_of(x.numpy()) is None
    assert sources.chunks_of(x.tolist()) is None                # nested lists of numbers: one array
    assert sources.chunks_of(pd.DataFrame(x.numpy())) is None
    parts = list(x.split(4))
    assert sources.chunks_of(parts) is parts
    assert sources.chunks_of([(x, torch.zeros(10))]) is not None  # (features, labels) pairs
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=3)
    assert sources.chunks_of(loader) is loader
    with pytest.raises(ValueError, match="one-shot iterator"):
        sources.chunks_of(iter(parts))


# ----------------------------------------------------------------------------- statistics
def _sources(x, rows):
    memory = sources.MemorySource(x)
    chunked = sources.ChunkSource(list(x.split(rows)), F64, None)
    chunked.first_pass()
    return memory, chunked


def test_first_pass_gives_size_mean_and_mean_square():
    x = overlapping_data(n=100, d=3) + 5.0
    memory, chunked = _sources(x, 33)
    for s in (memory, chunked):
        assert s.n == 100 and s.d == 3
        torch.testing.assert_close(s.origin, x.mean(0), rtol=1e-14, atol=0)
        torch.testing.assert_close(s.mean_square, (x ** 2).mean(0), rtol=1e-14, atol=0)
    torch.testing.assert_close(torch.cat(list(chunked)), x - x.mean(0), rtol=0, atol=1e-14)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_statistics_of_a_source_equal_explicit_sums(covariance_type):
    x = overlapping_data(n=120, d=3) + 2.0
    memory, chunked = _sources(x, 50)
    xc = x - x.mean(0)
    params = G.MixtureParams(*random_parameters(xc, 3, covariance_type, seed=4)[:2], None, None)
    params.prec_chol = G.prec_chol_from_precisions(random_parameters(xc, 3, covariance_type, 4)[2],
                                                   covariance_type)
    wlp = G.weighted_log_prob_centered(xc, params, covariance_type)
    resp = torch.softmax(wlp, 1)
    total = float(torch.logsumexp(wlp, 1).sum())
    nk, sums = resp.sum(0), resp.T @ xc
    means = sums / G.effective_counts(nk)[:, None]
    scatter = torch.stack([((resp[:, k, None] * (xc - means[k])).T @ (xc - means[k])) for k in range(3)])
    kind = G.scatter_kind(covariance_type)
    if kind == "vector":
        scatter = torch.diagonal(scatter, dim1=-2, dim2=-1)
    q = G.gram_log_prob_coefficients(params, covariance_type)
    for s in (memory, chunked):
        got_total, got_nk, got_sums, got_scatter = s.centered_statistics(params, covariance_type)
        assert got_total == pytest.approx(total, rel=1e-13)
        torch.testing.assert_close(got_nk, nk, rtol=1e-13, atol=1e-13)
        torch.testing.assert_close(got_sums, sums, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(got_scatter, scatter, rtol=1e-11, atol=1e-11)
        gram_total, stats = s.gram_statistics(q, kind)
        assert gram_total == pytest.approx(total, rel=1e-11)
        got_nk, got_sums, got_scatter = G.moments_from_gram(stats, kind, 3)
        torch.testing.assert_close(got_nk, nk, rtol=1e-11, atol=1e-11)
        torch.testing.assert_close(got_scatter, scatter, rtol=1e-9, atol=1e-9)


def test_centered_scatter_is_recomputed_when_a_mean_moves_far(monkeypatch):
    g = torch.Generator().manual_seed(8)
    # a tight cluster at 1e3 and a wide component that starts 300 from it (3000 times its spread)
    x = torch.cat([torch.randn(100, 2, generator=g, dtype=F64), 1e3 + 1e-4 * torch.randn(100, 2, generator=g, dtype=F64)])
    source = sources.MemorySource(x)
    xc = x - x.mean(0)
    means = torch.stack([xc[:100].mean(0), xc[100:].mean(0) - 300.0])
    params = G.MixtureParams(torch.tensor([0.5, 0.5], dtype=F64), means, None,
                             torch.tensor([[1.0, 1.0], [1e-2, 1e-2]], dtype=F64))
    _, nk, sums, scatter = source.centered_statistics(params, "diag")
    resp = torch.softmax(G.weighted_log_prob_centered(xc, params, "diag"), 1)
    new = sums / G.effective_counts(nk)[:, None]
    exact = torch.stack([(resp[:, k, None] * (xc - new[k]) ** 2).sum(0) for k in range(2)])
    assert float(exact[1].min()) < 1e-5                    # the far component took the tight cluster
    torch.testing.assert_close(scatter, exact, rtol=1e-10, atol=0)
    # without the second pass, the update from the incoming means would cancel badly
    monkeypatch.setattr(sources, "_MOVE_RATIO", float("inf"))
    _, _, _, one_pass = source.centered_statistics(params, "diag")
    assert float(((one_pass - exact) / exact).abs().max()) > 1e-6


# ----------------------------------------------------------------------------- data in chunks
def test_chunked_and_uncached_computation_equals_the_default(monkeypatch):
    x = overlapping_data(n=500, d=3)
    w, m, prec = random_parameters(x, 3, "full", seed=7)
    inits = dict(weights_init=w, means_init=m, precisions_init=prec, max_iter=15, tol=0.0)
    results = {}
    for ct in ("full", "diag"):
        if ct == "diag":
            inits["precisions_init"] = torch.diagonal(prec, dim1=-2, dim2=-1).clone()
        results[ct] = fit_quietly(GaussianMixture(3, covariance_type=ct, **inits), x)
    monkeypatch.setattr(G, "CHUNK_ELEMENTS", 40)                # many chunks, some of uneven size
    monkeypatch.setattr(G, "GRAM_BLOCK_ELEMENTS", 40)           # many gram blocks per chunk
    monkeypatch.setattr(sources, "FEATURE_CACHE_BYTES", 0)      # gram features recomputed per chunk
    for ct in ("full", "diag"):
        if ct == "diag":
            inits["precisions_init"] = torch.diagonal(prec, dim1=-2, dim2=-1).clone()
        else:
            inits["precisions_init"] = prec
        for algorithm in ("gram", "centered"):
            chunked = fit_quietly(GaussianMixture(3, covariance_type=ct, algorithm=algorithm, **inits), x)
            assert chunked.lower_bound_ == pytest.approx(results[ct].lower_bound_, rel=1e-13)
            torch.testing.assert_close(chunked.covariances_, results[ct].covariances_, rtol=1e-11, atol=1e-13)
            torch.testing.assert_close(chunked.score_samples(x), results[ct].score_samples(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_cached_features_in_many_blocks_equal_one_block(monkeypatch, covariance_type):
    # the in-memory features are kept whole and passed to the E and M steps block by block
    x = overlapping_data(n=500, d=3)
    kwargs = dict(covariance_type=covariance_type, init_params="random", random_state=1, max_iter=20,
                  tol=0.0, algorithm="gram")
    monkeypatch.setattr(G, "GRAM_BLOCK_ELEMENTS", 1 << 30)     # one block of all 500 rows
    whole = fit_quietly(GaussianMixture(3, **kwargs), x)
    monkeypatch.setattr(G, "GRAM_BLOCK_ELEMENTS", 7 * G.n_gram_features(G.scatter_kind(covariance_type), 3))
    blocks = fit_quietly(GaussianMixture(3, **kwargs), x)        # blocks of 7 rows, the last of 3
    assert blocks.lower_bound_ == pytest.approx(whole.lower_bound_, rel=1e-13)
    for name in ("weights_", "means_", "covariances_"):
        torch.testing.assert_close(getattr(blocks, name), getattr(whole, name), rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("algorithm", ["auto", "centered"])
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_fit_in_chunks_equals_the_in_memory_fit(covariance_type, algorithm):
    # shifted and scaled overlapping clusters, random initial responsibilities: many iterations
    x = overlapping_data(n=900, d=3) * 3.0 + 10.0
    kwargs = dict(covariance_type=covariance_type, init_params="random", random_state=3, tol=1e-10,
                  max_iter=300, algorithm=algorithm)
    ref = fit_quietly(GaussianMixture(3, **kwargs), x)
    assert ref.n_iter_ > 15
    lazy = LazyChunks(x, rows=128)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, torch.zeros(900)), batch_size=200)
    for chunks, array in ((list(x.split(250)), torch.Tensor), (lazy, np.ndarray), (loader, torch.Tensor)):
        gm = fit_quietly(GaussianMixture(3, **kwargs), chunks)
        assert isinstance(gm.means_, array)    # chunks of numpy arrays: numpy attributes
        assert gm.n_iter_ == ref.n_iter_ and gm.converged_ == ref.converged_
        assert gm.lower_bound_ == pytest.approx(ref.lower_bound_, rel=1e-12)
        for name in ("weights_", "means_", "covariances_"):
            torch.testing.assert_close(torch.as_tensor(getattr(gm, name)), getattr(ref, name), rtol=0, atol=1e-10)
        np.testing.assert_allclose(gm.history_["log_likelihood"], ref.history_["log_likelihood"],
                                   rtol=1e-12, atol=0)
    # one pass to count and center, one per EM iteration (the initialization reads the first rows)
    assert lazy.passes == 2 + ref.n_iter_


def test_fit_in_chunks_rejects_bad_chunks():
    x = overlapping_data(n=60, d=2)
    with pytest.raises(ValueError, match="one-shot iterator.*list of arrays, a DataLoader"):
        GaussianMixture(2).fit(c for c in x.split(20))
    with pytest.raises(ValueError, match="chunk 1 of X has 3 features but the data has 2"):
        GaussianMixture(2).fit([x[:30], torch.zeros(5, 3, dtype=F64)])
    bad = x.clone()
    bad[45, 1] = float("nan")
    with pytest.raises(ValueError, match="chunk 2 of X contains NaN"):
        GaussianMixture(2).fit(list(bad.split(20)))
    with pytest.raises(ValueError, match="chunk 1 of X must be 2-D"):
        GaussianMixture(2).fit([x, np.zeros((2, 2, 2))])
    with pytest.raises(ValueError, match="X is empty"):
        GaussianMixture(2).fit([x[:0], x[:0]])
    with pytest.raises(ValueError, match="1 samples but n_components=2"):
        GaussianMixture(2).fit([x[:1], x[:0]])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_fit_matches_cpu():
    x = overlapping_data(n=300, d=3)
    cpu = GaussianMixture(3, random_state=0).fit(x)
    gpu = GaussianMixture(3, random_state=0).fit(x.cuda())
    assert gpu.means_.is_cuda
    assert gpu.lower_bound_ == pytest.approx(cpu.lower_bound_, rel=1e-9)
    chunked = GaussianMixture(3, random_state=0, device="cuda").fit(list(x.split(100)))
    assert chunked.means_.is_cuda
    assert chunked.lower_bound_ == pytest.approx(cpu.lower_bound_, rel=1e-9)
