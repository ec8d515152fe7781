"""The ``pyro-vae`` command line: parses arguments and calls the library.

Commands: ``train``, ``evaluate``, ``em``, ``compare``, ``demo``. Errors a user can fix
(bad arguments, unreadable files, invalid data) end with a one-line message on stderr and
exit code 2.
"""

import argparse
import json
import logging
import re
import sys

__all__ = ["main", "build_parser"]

log = logging.getLogger("pyro_vae")


class UsageError(Exception):
    """An error in what the user asked for; reported as one line, exit code 2."""


def _print_json(obj):
    from pyro_vae.storage import json_default

    sys.stdout.write(json.dumps(obj, default=json_default) + "\n")


def _add_common_options(p, func, *, device_default="cpu", device_help="cpu, cuda or auto (default cpu)",
                        quiet_help="no progress bar", json_help="print one JSON object with the results"):
    """The options every command ends with (--device, --quiet, --json), and the function it runs."""
    p.add_argument("--device", default=device_default, help=device_help)
    p.add_argument("--quiet", action="store_true", help=quiet_help)
    p.add_argument("--json", action="store_true", help=json_help)
    p.set_defaults(func=func)


# ---------------------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------------------
def _add_train(sub):
    p = sub.add_parser(
        "train", help="train a VAE and write a run folder",
        description="Train a VAE by SVI and write a run folder (config.json, history.csv, "
        "checkpoint.pt, elbo.png, reconstructions.png, samples.png). Options left out take the "
        "defaults of pyro_vae.runs.DEFAULT_CONFIG: the MNIST-10k protocol on the MNIST test files "
        "in --root, else $PYRO_VAE_MNIST_DIR, else ../shared/data/mnist, shared/data/mnist or "
        "data/mnist under the working directory. config.json stores data paths as absolute paths.")
    p.add_argument("--data", help="'mnist10k' (default), 'synthetic', a torchvision name "
                   "(mnist, fashion-mnist, kmnist), or a .csv/.npy/.npz/.pt/IDX file")
    p.add_argument("--root", help="folder of the data files (MNIST IDX files; torchvision root, "
                   "default $PYRO_VAE_DATA_DIR or ./data)")
    p.add_argument("--data-seed", type=int,
                   help="seed of the synthetic data (--data synthetic; default 0); the split has its "
                   "own seed, and --seed seeds the model and training")
    p.add_argument("--download", action="store_true", default=None,
                   help="allow torchvision to download a named dataset")
    p.add_argument("--binarize", dest="binarize", action="store_true", default=None,
                   help="dynamic binarization of [0,1] data (default for mnist10k)")
    p.add_argument("--no-binarize", dest="binarize", action="store_false")
    p.add_argument("--prior", help="normal, learned_normal, laplace, studentt, mixture, vamp")
    p.add_argument("--pseudo-inputs", type=int, help="pseudo-inputs of the vamp prior (default 50)")
    p.add_argument("--likelihood", help="bernoulli, continuous_bernoulli, gaussian, gaussian_shared, "
                   "gaussian_feature, gaussian_decoder, laplace")
    p.add_argument("--objective", choices=["trace", "tracegraph", "meanfield", "enum", "iwae"])
    p.add_argument("--num-particles", type=int, help="samples of z per datapoint (K for iwae)")
    p.add_argument("--latent-dim", type=int)
    p.add_argument("--hidden", type=_int_list, help="hidden layer sizes, e.g. 400 or 512,256")
    p.add_argument("--activation", help="softplus, relu, elu, tanh, gelu, silu")
    p.add_argument("--guide", choices=["diagonal", "full", "iaf"],
                   help="posterior family q(z|x): diagonal Gaussian (default), full-covariance Gaussian, "
                   "or inverse autoregressive flow")
    p.add_argument("--num-flows", type=int, help="flows of --guide iaf (default 2)")
    p.add_argument("--network", choices=["mlp", "conv"],
                   help="encoder/decoder: fully connected (default) or convolutional (square images)")
    p.add_argument("--model", choices=["vae", "mixture_vae"],
                   help="vae (default), or mixture_vae: a VAE with an explicit discrete component y "
                   "(trained with --objective enum, the exact sum over y, unless told otherwise)")
    p.add_argument("--components", type=int, help="components K of --model mixture_vae (default 10)")
    p.add_argument("--baseline", choices=["none", "decaying", "neural"],
                   help="baseline of --model mixture_vae for --objective tracegraph (default none)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--beta", type=float, help="KL weight (beta-VAE)")
    p.add_argument("--kl-warmup", type=int, help="epochs of linear KL annealing from 0 to beta")
    p.add_argument("--clip-norm", type=float, help="gradient norm clipping")
    p.add_argument("--lr-schedule", choices=["none", "cosine", "exponential"],
                   help="learning-rate schedule (default cosine)")
    p.add_argument("--patience", type=int,
                   help="early stopping on the ELBO of a validation split of the training data")
    p.add_argument("--seed", type=int)
    p.add_argument("--out", default="runs/train", help="run folder (default runs/train)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its checkpoint (the settings must be the stored "
                   "ones; --epochs may grow)")
    p.add_argument("--overwrite", action="store_true",
                   help="delete the run in --out first (a folder holding other files is refused)")
    _add_common_options(p, _cmd_train, device_default=None)
    return p


def _int_list(text):
    try:
        values = [int(v) for v in text.replace(" ", "").split(",") if v != ""]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive layer sizes, got {text!r}")
    return values


def _train_overrides(args):
    """The configuration keys given on the command line (the rest keep their defaults)."""
    from pyro_vae.runs import train_overrides

    return train_overrides(
        source=args.data, root=args.root, download=args.download, binarize=args.binarize, data_seed=args.data_seed,
        model_kind=args.model, latent_dim=args.latent_dim, hidden=args.hidden, activation=args.activation,
        prior=args.prior, likelihood=args.likelihood, beta=args.beta, guide=args.guide, num_flows=args.num_flows,
        network=args.network, pseudo_inputs=args.pseudo_inputs, n_components=args.components,
        baseline=args.baseline, objective=args.objective, num_particles=args.num_particles, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, clip_norm=args.clip_norm, lr_schedule=args.lr_schedule,
        kl_warmup=args.kl_warmup, patience=args.patience, seed=args.seed)


def _cmd_train(args):
    from pyro_vae.runs import train_run

    vae, history = train_run(args.out, _train_overrides(args), resume=args.resume, overwrite=args.overwrite,
                             quiet=args.quiet or args.json, device=args.device)
    from pyro_vae.distributed import is_main_process

    if not is_main_process():  # under torchrun, rank 0 reports
        return
    last = history.iloc[-1] if len(history) else None
    result = {
        "out": args.out,
        "epochs": int(last["epoch"]) if last is not None else 0,
        "train_elbo": float(last["train_elbo"]) if last is not None else None,
        "val_elbo": float(last["val_elbo"]) if last is not None else None,
        "seconds": float(history["seconds"].sum()) if len(history) else 0.0,
    }
    if args.json:
        _print_json(result)
    else:
        print(f"trained {result['epochs']} epochs in {result['seconds']:.1f} s: "
              f"train ELBO {result['train_elbo']:.3f}, held-out ELBO {result['val_elbo']:.3f} "
              f"nats per datapoint; run folder {args.out}")


# ---------------------------------------------------------------------------------------
# evaluate
# ---------------------------------------------------------------------------------------
def _add_evaluate(sub):
    p = sub.add_parser(
        "evaluate", help="estimate held-out log p(x) of a trained run",
        description="Estimate log p(x) of every held-out datapoint of a run folder written by "
        "'pyro-vae train' by importance sampling with the encoder as proposal (--method is); write "
        "log_likelihood.csv (one row per datapoint) into the run folder and print the mean with "
        "its standard error. With --gaps also split the inference gap into approximation and "
        "amortization gaps (gaps.csv). --method ais estimates log p(x) by annealed importance "
        "sampling with HMC from the encoder to the posterior instead (log_likelihood_ais.csv): "
        "tighter, and much slower.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="run folder written by 'pyro-vae train'")
    p.add_argument("--method", choices=["is", "ais"], default="is",
                   help="is: importance sampling (default); ais: annealed importance sampling")
    p.add_argument("--num-samples", type=int,
                   help="importance samples K per datapoint for --method is (default 1000; 5000 for "
                   "the MNIST-10k protocol)")
    p.add_argument("--num-steps", type=int,
                   help="annealing steps per chain for --method ais (default 1000)")
    p.add_argument("--num-chains", type=int,
                   help="AIS chains per datapoint for --method ais (default 16)")
    p.add_argument("--num-leapfrog-steps", type=int,
                   help="leapfrog steps per HMC transition for --method ais (default 10)")
    p.add_argument("--data", help="evaluate on this data file (.csv/.npy/.npz/.pt/IDX, rows = datapoints) "
                   "instead of the run's held-out data")
    p.add_argument("--gaps", action="store_true",
                   help="also compute approximation / amortization gaps (writes gaps.csv)")
    p.add_argument("--gap-points", type=int,
                   help="datapoints (the first ones) used for --gaps (default 100)")
    p.add_argument("--gap-steps", type=int,
                   help="optimization steps of each datapoint's Gaussian for --gaps (default 500)")
    p.add_argument("--particle-batch-size", type=int, help="particles per vectorized pass (memory)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random draws (default 0)")
    _add_common_options(p, _cmd_evaluate)
    return p


def _cmd_evaluate(args):
    from pyro_vae.runs import evaluate_run

    result = evaluate_run(
        args.run_dir, method=args.method, num_samples=args.num_samples, num_steps=args.num_steps,
        num_chains=args.num_chains, num_leapfrog_steps=args.num_leapfrog_steps, gaps=args.gaps,
        gap_points=args.gap_points, gap_steps=args.gap_steps, particle_batch_size=args.particle_batch_size,
        data=args.data, device=args.device, seed=args.seed, progress=not (args.quiet or args.json))
    if args.json:
        _print_json(result)
        return
    r = result
    if r["method"] == "ais":
        print(f"log p(x) = {r['mean']:.3f} +- {r['stderr']:.3f} nats per datapoint by AIS (standard "
              f"error over {r['num_datapoints']} datapoints; {r['num_chains']} chains x {r['num_steps']} "
              f"steps of {r['num_leapfrog_steps']} leapfrog steps, Monte Carlo standard error "
              f"{r['mean_mc_stderr']:.3f}, mean ESS {r['mean_ess']:.1f}, HMC acceptance "
              f"{r['mean_acceptance_rate']:.2f})")
    else:
        print(f"log p(x) = {r['mean']:.3f} +- {r['stderr']:.3f} nats per datapoint (standard error over "
              f"{r['num_datapoints']} datapoints; K = {r['num_samples']}, Monte Carlo standard error "
              f"{r['mean_mc_stderr']:.3f}, ELBO {r['mean_elbo']:.3f}, mean ESS {r['mean_ess']:.1f})")
    if "gaps" in r:
        print(f"gaps over the first {r['gap_datapoints']} datapoints (mean +- standard error, nats):")
        for name in ("log_px", "elbo_optimized", "elbo_amortized", "approximation_gap",
                     "amortization_gap", "inference_gap"):
            print(f"  {name:<18} {r['gaps'][name]['mean']:10.3f} +- {r['gaps'][name]['stderr']:.3f}")
    print("wrote " + ", ".join(r["files"]))


# ---------------------------------------------------------------------------------------
# em
# ---------------------------------------------------------------------------------------
def _add_em(sub):
    p = sub.add_parser(
        "em", help="fit a Gaussian mixture by EM",
        description="Fit a Gaussian mixture to the rows of a data file by exact EM and write a run "
        "folder: params.json (weights, means, covariances, converged, iterations, "
        "log-likelihood, BIC), history.csv (log-likelihood per iteration) and, for 2-D data, "
        "mixture.png (data and component ellipses at 2 standard deviations).")
    p.add_argument("--data", required=True,
                   help="CSV file with numeric columns, one row per sample (also .npy/.npz/.pt)")
    p.add_argument("--components", type=int, default=2, help="number of components K (default 2)")
    p.add_argument("--covariance", choices=["full", "tied", "diag", "spherical"], default="full",
                   help="covariance type (default full)")
    p.add_argument("--init", choices=["kmeans", "kmeans++", "random", "random_from_data"],
                   default="kmeans", help="initialization (default kmeans)")
    p.add_argument("--n-init", type=int, default=1, help="initializations; the best is kept (default 1)")
    p.add_argument("--max-iter", type=int, default=100, help="maximum EM iterations (default 100)")
    p.add_argument("--tol", type=float, default=1e-3,
                   help="stop when the mean log-likelihood improves by less (default 1e-3)")
    p.add_argument("--reg-covar", type=float, default=1e-6,
                   help="added to covariance diagonals (default 1e-6)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initialization (default 0)")
    p.add_argument("--chunk-rows", type=int, default=None, metavar="N",
                   help="read a CSV file N rows at a time, for files larger than memory: every EM "
                   "iteration reads the file again, and a data-dependent initialization uses the "
                   "first 100,000 rows (default: load the whole file)")
    p.add_argument("--out", default="em_run", help="run folder (default em_run)")
    _add_common_options(p, _cmd_em, quiet_help="print only the summary (no warnings)")
    return p


def _cmd_em(args):
    import warnings

    from pyro_vae.mixture import ConvergenceWarning
    from pyro_vae.runs import fit_mixture_run

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        gm, result, files = fit_mixture_run(
            args.out, args.data, chunk_rows=args.chunk_rows, n_components=args.components,
            covariance_type=args.covariance, init_params=args.init, n_init=args.n_init, max_iter=args.max_iter,
            tol=args.tol, reg_covar=args.reg_covar, random_state=args.seed, device=args.device)
    if args.json:
        summary = {k: v for k, v in result.items() if k not in ("weights", "means", "covariances")}
        _print_json({**summary, "out": args.out, "files": files})
        return
    if not args.quiet:
        for w in caught:
            if issubclass(w.category, ConvergenceWarning):
                sys.stderr.write(f"pyro-vae em: warning: {w.message}\n")
    print(f"Gaussian mixture, K={args.components} ({args.covariance}) on {result['n_samples']} samples x "
          f"{result['n_features']} features: log-likelihood {result['log_likelihood']:.4f} "
          f"({result['log_likelihood_per_sample']:.4f} per sample), BIC {result['bic']:.2f}, {gm.n_iter_} "
          f"iterations, {'converged' if gm.converged_ else 'not converged'}")
    print("wrote " + ", ".join(files))


# ---------------------------------------------------------------------------------------
# compare / demo
# ---------------------------------------------------------------------------------------
def _add_compare(sub):
    p = sub.add_parser(
        "compare", help="compare VAEs against EM on Gaussian-mixture data",
        description="Fit a Gaussian mixture by EM, the same mixture by SVI with an amortized q(c|x) "
        "(gmm_svi), and three VAEs (standard-normal prior; mixture prior; explicit component, "
        "mixture_vae) on the same data; score all on held-out data. EM vs gmm_svi is what inference "
        "costs, gmm_svi vs the VAEs what the model costs. Writes comparison.csv and PNG plots "
        "(costs.png shows the split) to --out.")
    p.add_argument("--data", help="CSV file of numeric columns (default: a synthetic mixture)")
    p.add_argument("--label-column", help="column of true component labels in --data (for the ARI)")
    _add_comparison_options(p, "runs/compare")
    d = sub.add_parser(
        "demo", help="the comparison on a built-in synthetic 2-D mixture (no download)",
        description="VAE versus EM on a synthetic 2-D mixture of 3 Gaussians; about a minute on 2 CPU cores.")
    _add_comparison_options(d, "runs/demo")
    return p


def _add_comparison_options(p, out_default):
    """The options ``compare`` and ``demo`` share."""
    p.add_argument("--components", type=int, default=3, help="mixture components K (default 3)")
    p.add_argument("--covariance", default="full", choices=["full", "diag", "tied", "spherical"])
    p.add_argument("--epochs", type=int, default=100, help="VAE training epochs (default 100)")
    p.add_argument("--num-samples", type=int, default=1000,
                   help="importance samples per held-out point for the VAEs (default 1000)")
    p.add_argument("--method", choices=["is", "ais"], default="is",
                   help="held-out log p(x) of the VAE rows by importance sampling or annealed importance "
                        "sampling (default is; the mixture_vae row, with a discrete latent, always by is)")
    p.add_argument("--num-steps", type=int, default=100, help="AIS annealing steps with --method ais (default 100)")
    p.add_argument("--num-chains", type=int, default=16, help="AIS chains per point with --method ais (default 16)")
    p.add_argument("--n-samples", type=int, default=4000, help="synthetic data size (default 4000)")
    p.add_argument("--dim", type=int, default=2, help="synthetic data dimension (default 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=out_default, help=f"output folder (default {out_default})")
    _add_common_options(p, _cmd_compare, device_default=None, device_help="cpu, cuda or auto",
                        quiet_help="no progress bars", json_help="print one JSON object with the table")


def _cmd_compare(args):
    from pyro_vae import storage

    with storage.output_folder(args.out, "output folder"):  # usable before anything is computed
        return _compare(args)


def _compare(args):
    from pyro_vae.compare import format_table, run_comparison, save_comparison

    data, labels = None, None
    if getattr(args, "data", None):
        from pyro_vae.data import load_data

        loaded = load_data(args.data, label_column=args.label_column)
        data, labels = loaded.x, loaded.labels
    comp = run_comparison(data, args.components, labels=labels, covariance_type=args.covariance,
                          epochs=args.epochs, num_samples=args.num_samples, seed=args.seed,
                          n_samples=args.n_samples, dim=args.dim, device=args.device,
                          quiet=args.quiet or args.json, log_px_method=args.method, ais_steps=args.num_steps,
                          ais_chains=args.num_chains)
    paths = save_comparison(comp, args.out)
    if args.json:
        _print_json({"out": args.out, "files": paths, "table": comp.table.to_dict(orient="records")})
    else:
        print(format_table(comp.table))
        print(f"wrote {len(paths)} files to {args.out}")


# ---------------------------------------------------------------------------------------
def build_parser():
    parser = argparse.ArgumentParser(
        prog="pyro-vae",
        description="VAEs in Pyro with declarable priors and likelihoods, EM for Gaussian "
        "mixtures, and log p(x) by importance sampling.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more detail")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add_train(sub)
    _add_evaluate(sub)
    _add_em(sub)
    _add_compare(sub)
    return parser



# library argument names that differ from the option a user types, per command
_FLAG_OF = {
    "train": {"model_kind": "--model", "n_components": "--components", "source": "--data"},
    "em": {"n_components": "--components", "covariance_type": "--covariance", "init_params": "--init",
           "random_state": "--seed", "rows": "--chunk-rows"},
    "compare": {"n_components": "--components", "covariance_type": "--covariance", "ais_steps": "--num-steps",
                "ais_chains": "--num-chains"},
    "demo": {"n_components": "--components", "covariance_type": "--covariance", "ais_steps": "--num-steps",
             "ais_chains": "--num-chains"},
}


def _as_flags(message, args):
    """A library message that starts with an argument name (``num_samples must be ...``) starts
    with the command-line option instead (``--num-samples must be ...``)."""
    flags = {dest: "--" + dest.replace("_", "-") for dest in vars(args)
             if dest not in ("func", "command", "run_dir", "verbose")}
    flags.update(_FLAG_OF.get(args.command, {}))
    first = re.match(r"[A-Za-z_]+", message)
    if first is not None and first.group(0) in flags and message[len(first.group(0)):][:1] in (" ", "="):
        message = flags[first.group(0)] + message[len(first.group(0)):]
    # "n_components=5" inside the message reads "--components 5"
    return re.sub(r"\b([a-z]+_[a-z_]+)=", lambda m: flags[m.group(1)] + " " if m.group(1) in flags else m.group(0),
                  message)


def _check_launch(command):
    """Only ``train`` runs under torchrun; the other commands would repeat their work per process."""
    from pyro_vae.distributed import launched_by_torchrun

    if command != "train" and launched_by_torchrun():
        raise UsageError(
            f"'pyro-vae {command}' runs in one process, but WORLD_SIZE > 1 says it was started by "
            "torchrun with several; run it without torchrun (only 'pyro-vae train' is data-parallel; "
            "to fit a mixture on several processes, call GaussianMixture.fit on each process's part)")


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)  # argparse itself exits with code 2 on bad arguments
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    from pyro_vae.storage import FolderInUseError

    try:
        _check_launch(args.command)
        if getattr(args, "device", None) is not None:
            from pyro_vae.checks import resolve_device

            resolve_device(args.device)  # refused before any work, whatever the command
        return args.func(args) or 0
    except (UsageError, ValueError, TypeError, FileNotFoundError, FileExistsError, IsADirectoryError,
            PermissionError, NotADirectoryError, FloatingPointError,  # incl. a diverged training
            FolderInUseError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        sys.stderr.write(f"pyro-vae {args.command}: error: {_as_flags(msg, args)}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("pyro-vae: interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
