"""EM on data in chunks: the cost of streaming against the in-memory fit, an earlier version and scikit-learn.

Command (from the repository root)::

    PYTHONPATH=. python bench/bench_em_chunked.py --repeats 3 --baseline-ref main

The data and initial parameters are those of ``bench/bench_em.py`` (N=100,000, d=16, K=16,
float64, ``max_iter`` iterations with ``tol=0``). The fits of the same problem alternate:
``GaussianMixture.fit(X)`` in memory, ``GaussianMixture.fit(chunks)`` with the rows split into
chunks of ``--chunk-rows`` (a list of numpy arrays; every iteration is one pass over them), the
same two with the ``GaussianMixture`` of ``pyro_vae/em.py`` at the git revision
``--baseline-ref`` (see ``bench/bench_em.py``; left out by default), and scikit-learn's
``GaussianMixture.fit(X)``. Reported: the median time per iteration over ``--repeats`` fits, the
ratios, and the relative difference of the final lower bound of the chunked fit to the in-memory
one. Written to ``bench/results_em_chunked.md``; ``--quick`` runs a tiny problem to check the script.
"""

import argparse
import os
import platform
import statistics
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from bench_em import initial_parameters, load_baseline, make_data, timed_fit  # noqa: E402

from pyro_vae.mixture import GaussianMixture  # noqa: E402
from pyro_vae.storage import write_text  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--d", type=int, default=16)
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--chunk-rows", type=int, default=10_000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--types", default="full,diag")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--baseline-ref", default="none",
                   help="git revision whose pyro_vae/em.py is timed too, e.g. main before the "
                   "pyro_vae.mixture package was merged (default none)")
    p.add_argument("--quick", action="store_true", help="a tiny problem: checks that the script runs")
    p.add_argument("--out", default=os.path.join(HERE, "results_em_chunked.md"))
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.d, args.k, args.iters, args.repeats, args.chunk_rows = 3000, 4, 3, 3, 1, 700
    command = " ".join(["PYTHONPATH=. python bench/bench_em_chunked.py"]
                       + list(sys.argv[1:] if argv is None else argv))
    torch.set_num_threads(args.threads)
    from sklearn.mixture import GaussianMixture as SkGaussianMixture
    from threadpoolctl import threadpool_limits

    Baseline = load_baseline(args.baseline_ref)
    X = make_data(args.n, args.d, args.k, args.seed)
    chunks = [X[s:s + args.chunk_rows] for s in range(0, args.n, args.chunk_rows)]
    rows = []
    for ct in args.types.split(","):
        w, m, prec = initial_parameters(X, args.k, ct, args.seed)
        kw = dict(n_components=args.k, covariance_type=ct, tol=0.0, max_iter=args.iters,
                  weights_init=w, means_init=m, precisions_init=prec)
        makers = {
            "in memory": (lambda: GaussianMixture(**kw), X),
            "in chunks": (lambda: GaussianMixture(**kw), chunks),
            "scikit-learn": (lambda: SkGaussianMixture(**kw), X),
        }
        if Baseline is not None:
            makers["baseline in memory"] = (lambda: Baseline(**kw), X)
            makers["baseline in chunks"] = (lambda: Baseline(**kw), chunks)
        times = {name: [] for name in makers}
        bounds = {}
        with threadpool_limits(limits=args.threads):
            for _ in range(args.repeats):
                for name, (make, data) in makers.items():
                    gm, seconds = timed_fit(make, data, lambda: None)
                    times[name].append(seconds / args.iters * 1e3)
                    bounds[name] = float(gm.lower_bound_)
        med = {name: statistics.median(v) for name, v in times.items()}
        rel = abs(bounds["in chunks"] - bounds["in memory"]) / abs(bounds["in memory"])
        rows.append((ct, med, rel))
        extra = ""
        if Baseline is not None:
            extra = (f"; baseline in memory {med['baseline in memory']:.1f}, in chunks "
                     f"{med['baseline in chunks']:.1f}")
        print(f"{ct}: in memory {med['in memory']:.1f} ms/iter, in chunks {med['in chunks']:.1f}, "
              f"scikit-learn {med['scikit-learn']:.1f}{extra}; lower bound rel. diff {rel:.1e}", flush=True)

    lines = [
        "# EM on data in chunks",
        "",
        f"Command: `{command}`",
        "",
        f"N={args.n}, d={args.d}, K={args.k}, float64, {args.iters} EM iterations per fit (tol=0) from the "
        f"same initial parameters; chunks of {args.chunk_rows} rows (a list of numpy arrays); "
        f"{args.threads} thread(s) (torch and the numpy BLAS); median of {args.repeats} fits, the "
        f"contenders interleaved. torch {torch.__version__}, Python {platform.python_version()}.",
        "",
    ]
    if Baseline is not None:
        lines += [f"Baseline: `pyro_vae/em.py` at `{args.baseline_ref}`, timed in the same run.", "",
                  "| covariance | in memory ms/iter | in chunks ms/iter | chunks / memory | baseline in memory "
                  "| baseline in chunks | memory: baseline / ours | chunks: baseline / ours | scikit-learn "
                  "ms/iter | scikit-learn / chunks | lower bound rel. diff (chunks vs memory) |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    else:
        lines += ["| covariance | in memory ms/iter | in chunks ms/iter | chunks / memory | scikit-learn ms/iter "
                  "| scikit-learn / chunks | lower bound rel. diff (chunks vs memory) |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
    for ct, med, rel in rows:
        base = ""
        if Baseline is not None:
            base = (f"{med['baseline in memory']:.1f} | {med['baseline in chunks']:.1f} | "
                    f"{med['baseline in memory'] / med['in memory']:.2f}x | "
                    f"{med['baseline in chunks'] / med['in chunks']:.2f}x | ")
        lines.append(f"| {ct} | {med['in memory']:.1f} | {med['in chunks']:.1f} | "
                     f"{med['in chunks'] / med['in memory']:.2f}x | {base}{med['scikit-learn']:.1f} | "
                     f"{med['scikit-learn'] / med['in chunks']:.1f}x | {rel:.1e} |")
    text = "\n".join(lines) + "\n"
    print(text)
    write_text(args.out, text)


if __name__ == "__main__":
    main()
