"""Data-parallel training under torchrun (2 CPU processes, gloo) against single-process runs.

The multi-process tests launch ``python -m torch.distributed.run`` (torchrun) on this file: run as
a script, it is the worker (``python tests/test_distributed.py SCENARIO OUT_DIR``).
"""

import json
import os
import re
import socket
import subprocess
import sys
import time
import warnings

import pytest
import torch

import pyro
import pyro.distributions as dist

from pyro_vae import distributed as D
from pyro_vae.training import fit
from pyro_vae.vae import VAE

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


# --------------------------------------------------------------------------- shared problems
def _binary_data(n, d=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, d, generator=g, dtype=torch.float64)


def _problem_a(out_dir=None):
    """Equal shares: N = 96, global batch 32 (16 per process), dynamic binarization, learned
    prior scale, KL warm-up, gradient clipping and a cosine schedule: 3 epochs = 9 steps."""
    x = _binary_data(96)
    val = (_binary_data(20, seed=1) > 0.5).double()
    vae = VAE(12, 3, hidden=(10,), prior="learned_normal", likelihood="bernoulli", seed=0).double()
    files = {}
    if out_dir is not None:
        files = {"checkpoint": os.path.join(out_dir, "a.pt"), "history_path": os.path.join(out_dir, "a.csv")}
    h = fit(vae, x, epochs=3, batch_size=32, seed=5, binarize=True, val_data=val, kl_warmup=1,
            clip_norm=5.0, lr=1e-2, lr_schedule="cosine", quiet=True, **files)
    return vae, h


def _problem_b(checkpoint=None, epochs=2, model_seed=0, resume=False):
    """Unequal and empty shares: N = 94, global batch 31 -> shares 16/15, and a last batch of
    one point (rank 1 has none); IWAE with 3 vectorized particles, a mixture prior and a
    Gaussian likelihood with a learned scale per feature (both learnable)."""
    x = _binary_data(94, seed=2)
    vae = VAE(12, 2, hidden=(10,), prior="mixture", likelihood="gaussian_feature", seed=model_seed).double()
    h = fit(vae, x, epochs=epochs, batch_size=31, seed=9, objective="iwae", num_particles=3, lr=1e-2,
            quiet=True, checkpoint=checkpoint, resume=resume)
    return vae, h


def _problem_c():
    """A user's program pair written as Pyro's tutorial writes it (pyro.module, a plate over the
    minibatch, which fit scales by N / B), with a pyro.param scale: N = 90, global batch 32 ->
    shares 16/16 and a last batch of 26 -> 13/13, KL warm-up on the "z" sites."""
    from torch import nn
    from torch.nn import functional as F
    from pyro.distributions import constraints

    pyro.clear_param_store()
    torch.manual_seed(0)
    enc, dec = nn.Linear(12, 4).double(), nn.Linear(2, 12).double()

    def model(x):
        pyro.module("dec", dec)
        s = pyro.param("s", torch.tensor(1.0, dtype=torch.float64), constraint=constraints.positive)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(dec(z), s).to_event(1), obs=x)

    def guide(x):
        pyro.module("enc", enc)
        with pyro.plate("data", x.shape[0]):
            loc, raw = enc(x).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, F.softplus(raw) + 1e-3).to_event(1))

    x = _binary_data(90, seed=3)
    h = fit(model, guide, x, epochs=2, batch_size=32, seed=6, lr=1e-2, val_data=x[:20], kl_warmup=1, quiet=True)
    return {k: v.detach().clone() for k, v in pyro.get_param_store().named_parameters()}, h


def _mixture_rows(n=1000, d=3):
    """Three overlapping clusters for the mixture fits; rank 0 holds the first 700 rows."""
    g = torch.Generator().manual_seed(4)
    centers = torch.randn(3, d, generator=g, dtype=torch.float64) * 2.0
    labels = torch.arange(n) % 3
    return centers[labels] + torch.randn(n, d, generator=g, dtype=torch.float64) + 5.0


def _mixture_fits(part, rank_zero_rows=700):
    """The fits both the workers (each on its part) and the test (on all rows) run."""
    from pyro_vae.mixture import COVARIANCE_TYPES, ConvergenceWarning, GaussianMixture, sources

    warnings.simplefilter("ignore", ConvergenceWarning)   # max_iter is part of the comparison
    out = {}
    init_rows, sources.INIT_ROWS = sources.INIT_ROWS, rank_zero_rows   # initialize on rank 0's 700 rows
    try:
        for ct in COVARIANCE_TYPES:
            gm = GaussianMixture(3, covariance_type=ct, init_params="random", random_state=3, tol=1e-9,
                                 max_iter=200)
            out[ct] = _mixture_state(gm.fit(part))
    finally:
        sources.INIT_ROWS = init_rows
    w = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    m = _mixture_rows()[[0, 1, 2]]
    prec = torch.eye(3, dtype=torch.float64).expand(3, 3, 3).contiguous()
    gm = GaussianMixture(3, weights_init=w, means_init=m, precisions_init=prec, tol=0.0, max_iter=20)
    out["given"] = _mixture_state(gm.fit(part))
    return out


def _mixture_state(gm):
    return {"weights": gm.weights_, "means": gm.means_, "covariances": gm.covariances_,
            "lower_bound": torch.tensor(gm.lower_bound_, dtype=torch.float64), "n_iter": torch.tensor(gm.n_iter_)}


def _history_values(h):
    return torch.tensor(h.drop(columns=["seconds"]).to_numpy(dtype=float))


def _flat(module):
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()])


def _assert_prior_and_likelihood_learned(state, init, names):
    # the learnable parameters of the prior and likelihood moved away from their initial values
    extras = sorted(k for k in state if k.startswith(("prior.", "likelihood.")))
    assert extras == sorted(names)
    for k in extras:
        assert (state[k] - init[k]).abs().max() > 1e-4, k


def _max_diff(a, b):
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


# --------------------------------------------------------------------------- in-process checks
def test_single_process_needs_no_process_group(monkeypatch):
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    assert not D.launched_by_torchrun() and D.get_rank() == 0 and D.get_world_size() == 1
    assert D.is_main_process()
    assert D.init_process_group("cpu") is False and not D.is_initialized()
    assert D.broadcast_object({"a": 1}) == {"a": 1}
    D.shutdown()  # no group was created here: nothing to destroy
    t = torch.ones(3)
    assert D.all_reduce_sum(t) is t and torch.equal(t, torch.ones(3))


def test_bad_environment_gets_clear_errors(monkeypatch):
    monkeypatch.setenv(D.TIMEOUT_ENV, "soon")
    with pytest.raises(ValueError, match="PYRO_VAE_DIST_TIMEOUT.*seconds"):
        D.init_process_group("cpu")
    monkeypatch.setenv(D.TIMEOUT_ENV, "-3")
    with pytest.raises(ValueError, match="positive number of seconds"):
        D.init_process_group("cpu")
    monkeypatch.delenv(D.TIMEOUT_ENV)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    with pytest.raises(ValueError, match="MASTER_ADDR.*torchrun"):
        D.init_process_group("cpu")
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE.*integer"):
        D.get_world_size()


# --------------------------------------------------------------------------- torchrun launches
def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(args, out_dir, env=None, timeout=240, nproc=2):
    """Run ``args`` (a script and its arguments) under torchrun with ``nproc`` CPU processes."""
    full_env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MPLBACKEND="Agg",
                    PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        full_env.pop(k, None)
    full_env.update(env or {})
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}",
           "--master-addr=127.0.0.1", f"--master-port={_free_port()}", *args]
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=str(out_dir), env=full_env, capture_output=True, text=True,
                          timeout=timeout)
    return proc, time.time() - t0


def _load_rank(out_dir, rank):
    return torch.load(os.path.join(out_dir, f"rank{rank}.pt"), weights_only=False)


def test_fit_under_torchrun_equals_single_process_fit(tmp_path):
    proc, _ = _torchrun([__file__, "fit", str(tmp_path)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = _load_rank(tmp_path, 0), _load_rank(tmp_path, 1)

    # problem A (equal shares): same parameters and history as one process with batch 32
    vae, h = _problem_a()
    init = VAE(12, 3, hidden=(10,), prior="learned_normal", likelihood="bernoulli", seed=0).double()
    ref = vae.state_dict()
    assert _max_diff(r0["a_state"], ref) < 1e-6
    assert _max_diff(r0["a_state"], init.state_dict()) > 1e-2          # the comparison is not vacuous
    _assert_prior_and_likelihood_learned(r0["a_state"], init.state_dict(), ["prior.loc", "prior.raw_scale"])
    torch.testing.assert_close(r0["a_history"], _history_values(h), rtol=0, atol=1e-6)
    # identical parameters on both processes after every one of the 9 steps
    assert len(r0["a_steps"]) == len(r1["a_steps"]) == 9
    for p0, p1 in zip(r0["a_steps"], r1["a_steps"]):
        assert torch.equal(p0, p1)
    assert torch.equal(r0["a_history"], r1["a_history"])

    # problem B (unequal and empty shares, IWAE, learned prior and likelihood), with a resume
    # from rank 0's checkpoint into replicas that start from different weights
    vae_b, h_b = _problem_b(epochs=2)
    assert _max_diff(r0["b_state"], vae_b.state_dict()) < 1e-6
    init_b = VAE(12, 2, hidden=(10,), prior="mixture", likelihood="gaussian_feature", seed=0).double()
    _assert_prior_and_likelihood_learned(r0["b_state"], init_b.state_dict(),
                                         ["likelihood.raw_scale", "prior.logits", "prior.means", "prior.raw_scales"])
    assert _max_diff(r1["b_state"], r0["b_state"]) == 0
    torch.testing.assert_close(r0["b_history"], _history_values(h_b), rtol=0, atol=1e-6, equal_nan=True)
    assert len(r0["b_steps"]) == len(r1["b_steps"]) == 4        # epoch 2 only: epoch 1 was resumed
    for p0, p1 in zip(r0["b_steps"], r1["b_steps"]):
        assert torch.equal(p0, p1)

    for r in (r0, r1):
        assert "different training data" in r["mismatch"] and "same data" in r["mismatch"]
        if r["threads_before"] is not None:  # Linux: gloo's threads are gone after shutdown()
            assert any("gloo" in t for t in r["threads_before"]), r["threads_before"]
            assert not any("gloo" in t for t in r["threads_after"]), r["threads_after"]

    # problem C (a user's program pair): the same parameters as one process
    params_c, h_c = _problem_c()
    assert sorted(params_c) == ["dec$$$bias", "dec$$$weight", "enc$$$bias", "enc$$$weight", "s"]
    assert _max_diff(r0["c_params"], params_c) < 1e-6
    assert _max_diff(r1["c_params"], r0["c_params"]) == 0
    torch.testing.assert_close(r0["c_history"], _history_values(h_c), rtol=0, atol=1e-6)

    # only rank 0 wrote, each file once per epoch
    assert r1["writes"] == []
    names = [os.path.basename(p) for p in r0["writes"]]
    assert sorted(names) == sorted(["a.pt", "a.csv"] * 3 + ["b.pt"] * 2)
    assert sorted(os.listdir(tmp_path / "out")) == ["a.csv", "a.pt", "b.pt"]


@pytest.mark.slow
def test_pyro_vae_train_under_torchrun_writes_one_run_folder_and_resumes(tmp_path):
    run = tmp_path / "run"
    args = ["--data", "synthetic", "--latent-dim", "2", "--hidden", "16", "--batch-size", "64",
            "--epochs", "2", "--out", str(run), "--quiet", "--json"]
    # first launch: rank 0 dies right after writing the checkpoint of epoch 1
    proc, _ = _torchrun([__file__, "cli-crash", str(tmp_path), *args], tmp_path)
    assert proc.returncode != 0 and "rank 0 crashes" in proc.stdout, proc.stderr[-3000:]
    # second launch resumes from it
    proc2, _ = _torchrun([__file__, "cli", str(tmp_path), *args, "--resume"], tmp_path)
    assert proc2.returncode == 0, proc2.stderr[-3000:]
    reports = [json.loads(line) for line in proc2.stdout.splitlines() if line.startswith("{")]
    assert len(reports) == 1 and reports[0]["epochs"] == 2       # one report: rank 0's
    assert sorted(os.listdir(run)) == [".pyro-vae.lock", "checkpoint.pt", "config.json", "elbo.png",
                                       "history.csv", "reconstructions.png", "samples.png"]
    # rank 1 never wrote a file; rank 0 wrote each file once
    r0, r1 = _load_rank(tmp_path, 0), _load_rank(tmp_path, 1)
    assert r1["writes"] == []
    names = sorted(os.path.basename(p) for p in r0["writes"])
    assert names == ["checkpoint.pt", "config.json", "elbo.png", "history.csv", "reconstructions.png",
                     "samples.png"]
    # the resumed 2-process run equals an uninterrupted single-process run of the same settings
    from pyro_vae.runs import load_run, read_config, train_run

    cfg = read_config(str(run / "config.json"))  # the settings the command line gave the run
    vae_ref, h_ref = train_run(str(tmp_path / "ref"), cfg, quiet=True)
    vae, _, _ = load_run(str(run))
    assert _max_diff(vae.state_dict(), vae_ref.state_dict()) < 1e-5
    import pandas as pd

    hist = pd.read_csv(run / "history.csv")
    torch.testing.assert_close(_history_values(hist), _history_values(h_ref), rtol=1e-5, atol=1e-5)


def test_mixture_fit_under_torchrun_equals_single_process_fit(tmp_path):
    proc, _ = _torchrun([__file__, "em", str(tmp_path)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = _load_rank(tmp_path, 0), _load_rank(tmp_path, 1)
    from pyro_vae.mixture import GaussianMixture

    x = _mixture_rows()
    # one process, the same rows in chunks (rank 0's 700 in chunks of 128, then rank 1's 300)
    ref = _mixture_fits(list(x[:700].split(128)) + [x[700:]])
    for name, want in ref.items():
        assert int(want["n_iter"]) > 5, name             # EM did real work
        for r in (r0, r1):
            got = r[name]
            assert int(got["n_iter"]) == int(want["n_iter"]), name
            for key in ("weights", "means", "covariances", "lower_bound"):
                torch.testing.assert_close(got[key], want[key], rtol=1e-10, atol=1e-10, msg=name)
        for key in want:                                   # identical on both processes
            assert torch.equal(r0[name][key], r1[name][key]), (name, key)
    # from given parameters, the in-memory fit of all rows in one process is the reference too
    g = ref["given"]
    gm = GaussianMixture(3, weights_init=[0.2, 0.3, 0.5], means_init=x[[0, 1, 2]],
                         precisions_init=torch.eye(3, dtype=torch.float64).expand(3, 3, 3), tol=0.0,
                         max_iter=20).fit(x)
    assert float(r0["given"]["lower_bound"]) == pytest.approx(gm.lower_bound_, rel=1e-12)
    torch.testing.assert_close(r0["given"]["covariances"], gm.covariances_, rtol=0, atol=1e-10)
    torch.testing.assert_close(g["covariances"], gm.covariances_, rtol=0, atol=1e-10)
    # a process without data takes part in the fit of the other's rows
    alone = GaussianMixture(2, random_state=0, tol=1e-9).fit(x[:700])
    torch.testing.assert_close(r1["empty"]["means"], alone.means_, rtol=0, atol=1e-10)
    assert torch.equal(r0["empty"]["means"], r1["empty"]["means"])


def _last_time(text, tag):
    found = re.findall(rf"{tag} at ([0-9.]+)", text)
    assert found, f"no '{tag}' marker in the output:\n{text[-3000:]}"
    return float(found[-1])


def test_a_rank_that_dies_fails_the_job_quickly(tmp_path):
    proc, _ = _torchrun([__file__, "die", str(tmp_path)], tmp_path)
    end = time.time()
    assert proc.returncode != 0
    died = _last_time(proc.stdout + proc.stderr, "rank 1 exits")
    assert end - died < 30, f"the job took {end - died:.0f} s to fail after rank 1 died"
    # torchrun names the failed rank and its exit code
    assert re.search(r"rank\s*:\s*1 \(local_rank: 1\)\s*\n\s*exitcode\s*:\s*1 ", proc.stderr), proc.stderr[-3000:]
    assert not os.path.exists(tmp_path / "out" / "done")


@pytest.mark.slow
def test_a_stalled_rank_times_out_with_a_clear_message(tmp_path):
    proc, _ = _torchrun([__file__, "stall", str(tmp_path)], tmp_path, env={D.TIMEOUT_ENV: "3"})
    end = time.time()
    assert proc.returncode != 0
    stalled = _last_time(proc.stdout + proc.stderr, "rank 1 stalls")
    assert end - stalled < 3 + 30, f"the job took {end - stalled:.0f} s to fail after rank 1 stalled"
    assert "distributed all_reduce of the gradients failed on rank 0 of 2" in proc.stderr, proc.stderr[-3000:]
    assert "stalled for longer than 3 s" in proc.stderr and D.TIMEOUT_ENV in proc.stderr


# --------------------------------------------------------------------------- the worker
def _record_writes():
    """Record every file the package writes (all writers go through storage.atomic_path)."""
    from pyro_vae import storage

    written = []
    inner = storage.atomic_path

    def recording(path):
        written.append(os.fspath(path))
        return inner(path)

    storage.atomic_path = recording
    return written


def _record_steps():
    """Record the flat parameters after every Adam step."""
    steps = []
    inner = torch.optim.Adam.step

    def step(self, *args, **kwargs):
        out = inner(self, *args, **kwargs)
        steps.append(torch.cat([p.detach().reshape(-1).clone() for g in self.param_groups for p in g["params"]]))
        return out

    torch.optim.Adam.step = step
    return steps


def _thread_names():
    tasks = f"/proc/{os.getpid()}/task"
    if not os.path.isdir(tasks):
        return None
    names = []
    for tid in os.listdir(tasks):
        try:
            with open(os.path.join(tasks, tid, "comm")) as f:
                names.append(f.read().strip())
        except OSError:  # the thread ended meanwhile
            pass
    return sorted(names)


def _worker(scenario, out_dir, argv):
    rank = int(os.environ["RANK"])
    out = os.path.join(out_dir, "out")
    result = {"writes": _record_writes()}
    steps = _record_steps()
    if scenario == "fit":
        vae, h = _problem_a(out)
        result.update(a_state=vae.state_dict(), a_history=_history_values(h), a_steps=list(steps))
        ck = os.path.join(out, "b.pt")
        _problem_b(checkpoint=ck, epochs=1)
        steps.clear()
        vae, h = _problem_b(checkpoint=ck, epochs=2, model_seed=100 + rank, resume=True)
        result.update(b_state=vae.state_dict(), b_history=_history_values(h), b_steps=list(steps))
        params_c, h_c = _problem_c()
        result.update(c_params=params_c, c_history=_history_values(h_c))
        try:  # the processes are given different data: every one of them refuses
            fit(VAE(12, 2, hidden=(4,), seed=0), (_binary_data(40 + rank) > 0.5).float(), epochs=1, quiet=True)
        except ValueError as e:
            result["mismatch"] = str(e)
        # what runs at exit: the group is destroyed with gloo's threads, none is left to the
        # interpreter's finalization (where a live gloo thread can abort the process)
        result["threads_before"] = _thread_names()
        D.shutdown()
        result["threads_after"] = _thread_names()
    elif scenario in ("cli", "cli-crash"):
        from pyro_vae import storage
        from pyro_vae.cli import main

        if scenario == "cli-crash" and rank == 0:
            save = storage.save_checkpoint

            def save_then_crash(path, state):
                save(path, state)
                print("rank 0 crashes", flush=True)
                os._exit(3)

            storage.save_checkpoint = save_then_crash
        code = main(["train", *argv])
        if code:
            sys.exit(code)
    elif scenario == "em":
        from pyro_vae.mixture import GaussianMixture

        x = _mixture_rows()
        # rank 0 passes its rows in chunks, rank 1 in memory
        result.update(_mixture_fits(list(x[:700].split(128)) if rank == 0 else x[700:]))
        empty = [x[:350], x[350:700]] if rank == 0 else []
        result["empty"] = _mixture_state(GaussianMixture(2, random_state=0, tol=1e-9).fit(empty))
    elif scenario in ("die", "stall"):
        inner = torch.optim.Adam.step

        def step(self, *args, **kwargs):
            out_ = inner(self, *args, **kwargs)
            if rank == 1:
                print(f"rank 1 {'exits' if scenario == 'die' else 'stalls'} at {time.time():.3f}", flush=True)
                if scenario == "die":
                    os._exit(1)
                time.sleep(600)
            return out_

        torch.optim.Adam.step = step
        _problem_a()
        os.makedirs(out, exist_ok=True)
        open(os.path.join(out, "done"), "w").close()
    else:
        raise SystemExit(f"unknown scenario {scenario}")
    torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))


if __name__ == "__main__":
    _worker(sys.argv[1], sys.argv[2], sys.argv[3:])
