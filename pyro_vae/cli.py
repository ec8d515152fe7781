"""The ``pyro-vae`` command line: parses arguments and calls the library.

Commands: ``train``, ``evaluate``, ``em``, ``compare``, ``demo``. Errors a user can fix
(bad arguments, unreadable files, invalid data) end with a one-line message on stderr and
exit code 2.
"""

import argparse
import json
import logging
import sys

__all__ = ["main", "build_parser"]

log = logging.getLogger("pyro_vae")


class UsageError(Exception):
    """An error in what the user asked for; reported as one line, exit code 2."""


def _print_json(obj):
    from pyro_vae.storage import _json_default

    sys.stdout.write(json.dumps(obj, default=_json_default) + "\n")


# ---------------------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------------------
def _add_train(sub):
    p = sub.add_parser(
        "train", help="train a VAE and write a run folder",
        description="Train a VAE by SVI and write a run folder (config.json, history.csv, "
        "checkpoint.pt, elbo.png, reconstructions.png, samples.png). Options left out take the "
        "defaults of pyro_vae.runs.DEFAULT_CONFIG (MNIST-10k protocol on ../shared/data/mnist).")
    p.add_argument("--data", help="'mnist10k' (default), 'synthetic', a torchvision name "
                   "(mnist, fashion-mnist, kmnist), or a .csv/.npy/.npz/.pt/IDX file")
    p.add_argument("--root", help="folder of the data files (MNIST IDX files, torchvision root)")
    p.add_argument("--download", action="store_true", default=None,
                   help="allow torchvision to download a named dataset")
    p.add_argument("--binarize", dest="binarize", action="store_true", default=None,
                   help="dynamic binarization of [0,1] data (default for mnist10k)")
    p.add_argument("--no-binarize", dest="binarize", action="store_false")
    p.add_argument("--prior", help="normal, learned_normal, laplace, studentt, mixture, vamp")
    p.add_argument("--likelihood", help="bernoulli, continuous_bernoulli, gaussian, gaussian_shared, "
                   "gaussian_feature, gaussian_decoder, laplace")
    p.add_argument("--objective", choices=["trace", "tracegraph", "meanfield", "iwae"])
    p.add_argument("--num-particles", type=int, help="samples of z per datapoint (K for iwae)")
    p.add_argument("--latent-dim", type=int)
    p.add_argument("--hidden", type=_int_list, help="hidden layer sizes, e.g. 400 or 512,256")
    p.add_argument("--activation", help="softplus, relu, elu, tanh, gelu, silu")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--beta", type=float, help="KL weight (beta-VAE)")
    p.add_argument("--kl-warmup", type=int, help="epochs of linear KL annealing from 0 to beta")
    p.add_argument("--clip-norm", type=float, help="gradient norm clipping")
    p.add_argument("--lr-schedule", choices=["cosine", "exponential"])
    p.add_argument("--patience", type=int, help="early stopping on the held-out ELBO")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", default=None, help="cpu, cuda or auto (default cpu)")
    p.add_argument("--out", default="runs/train", help="run folder (default runs/train)")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print one JSON object with the results")
    p.set_defaults(func=_cmd_train)
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
    data = {"source": args.data, "root": args.root, "download": args.download,
            "binarize": args.binarize}
    if args.data is not None and args.data != "mnist10k" and args.binarize is None:
        data["binarize"] = False
    model = {"latent_dim": args.latent_dim, "hidden": args.hidden, "activation": args.activation,
             "prior": args.prior, "likelihood": args.likelihood, "beta": args.beta}
    fit = {"objective": args.objective, "num_particles": args.num_particles, "epochs": args.epochs,
           "batch_size": args.batch_size, "lr": args.lr, "clip_norm": args.clip_norm,
           "lr_schedule": args.lr_schedule, "kl_warmup": args.kl_warmup, "patience": args.patience}
    config = {
        "data": {k: v for k, v in data.items() if v is not None},
        "model": {k: v for k, v in model.items() if v is not None},
        "fit": {k: v for k, v in fit.items() if v is not None},
    }
    if args.seed is not None:
        config["seed"] = args.seed
    return config


def _cmd_train(args):
    from pyro_vae.runs import train_run

    vae, history = train_run(args.out, _train_overrides(args), resume=args.resume,
                             quiet=args.quiet or args.json, device=args.device)
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
    p = sub.add_parser("evaluate", help="estimate held-out log p(x) of a trained run")
    p.set_defaults(func=_cmd_evaluate)
    return p


def _cmd_evaluate(args):
    raise UsageError("evaluate: not available yet")


# ---------------------------------------------------------------------------------------
# em
# ---------------------------------------------------------------------------------------
def _add_em(sub):
    p = sub.add_parser("em", help="fit a Gaussian mixture by EM")
    p.set_defaults(func=_cmd_em)
    return p


def _cmd_em(args):
    raise UsageError("em: not available yet")


# ---------------------------------------------------------------------------------------
# compare / demo
# ---------------------------------------------------------------------------------------
def _add_compare(sub):
    p = sub.add_parser("compare", help="compare VAEs against EM on Gaussian-mixture data")
    p.set_defaults(func=_cmd_compare)
    d = sub.add_parser("demo", help="the comparison on built-in synthetic data")
    d.set_defaults(func=_cmd_demo)
    return p


def _cmd_compare(args):
    raise UsageError("compare: not available yet")


def _cmd_demo(args):
    raise UsageError("demo: not available yet")


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



def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)  # argparse itself exits with code 2 on bad arguments
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.func(args) or 0
    except (UsageError, ValueError, TypeError, FileNotFoundError, IsADirectoryError,
            PermissionError, NotADirectoryError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        sys.stderr.write(f"pyro-vae {args.command}: error: {msg}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("pyro-vae: interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
