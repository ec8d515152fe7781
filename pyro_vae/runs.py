"""Run folders: train a VAE from a JSON-able configuration and write everything to one folder;
fit a Gaussian mixture by EM to a data file and write its run folder.

A run folder holds ``config.json`` (data, model and training settings), ``history.csv``,
``checkpoint.pt`` (weights, optimizer and RNG states; loaded with ``weights_only=True``) and
the figures ``elbo.png``, ``reconstructions.png`` and ``samples.png`` (and for a
:class:`~pyro_vae.mixture_vae.MixtureVAE` of images ``components.png``, samples per component). :func:`load_run` rebuilds
the trained VAE and its held-out data from such a folder. :func:`train_overrides` turns the
settings a user gives (``pyro-vae train``'s options) into the configuration :func:`train_run` takes.
:func:`evaluate_run` (``pyro-vae evaluate``) estimates held-out log p(x) of a trained run and writes
``log_likelihood.csv`` (or ``log_likelihood_ais.csv``) and ``gaps.csv`` into its folder.

:func:`fit_mixture_run` (``pyro-vae em``) writes ``params.json``, ``history.csv`` and, for 2-D
data, ``mixture.png``.
"""

import copy
import hashlib
import json
import logging
import os

import torch

from pyro_vae import checkpoints, storage
from pyro_vae.checks import (as_data_tensor, check_bool, check_choice, check_int, check_positive_int,
                             check_seed, resolve_device)
from pyro_vae.data import (DATASET_NAMES, MNIST_10K_TEST_SEED, SYNTHETIC, binarize, load_split,
                           resolve_data_location, train_test_split)
from pyro_vae.distributed import is_main_process
from pyro_vae.training import fit
from pyro_vae.mixture_vae import MixtureVAE
from pyro_vae.vae import VAE

__all__ = ["DEFAULT_CONFIG", "RUN_FILES", "train_overrides", "train_run", "fit_mixture_run", "MIXTURE_RUN_FILES", "load_run", "load_run_data", "resolve_likelihood",
           "read_config", "config_tag", "clear_run_folder", "write_run_figures", "evaluate_run",
           "EVALUATE_DEFAULTS", "EVALUATION_FILES"]

log = logging.getLogger(__name__)

#: settings of ``pyro-vae train`` when nothing is given
DEFAULT_CONFIG = {
    # split_seed seeds the split; seed seeds synthetic data (source "synthetic")
    "data": {"source": "mnist10k", "binarize": True, "test_fraction": 0.1, "split_seed": 0, "seed": 0},
    # VampPrior, batch 64, lr 2e-3 with cosine decay: held-out log p(x) -93.4 nats on the
    # MNIST-10k protocol after 100 epochs (bench/results_quality.md)
    "model": {"latent_dim": 50, "hidden": [400], "activation": "softplus",
              "prior": "vamp", "likelihood": "auto", "beta": 1.0,
              "guide": "diagonal", "num_flows": None, "network": "mlp"},
    "fit": {"objective": "trace", "num_particles": 1, "epochs": 100, "batch_size": 64,
            "lr": 2e-3, "clip_norm": None, "lr_schedule": "cosine", "kl_warmup": 0},
    "seed": 0,
}

CONFIG_FILE = "config.json"
HISTORY_FILE = "history.csv"
CHECKPOINT_FILE = "checkpoint.pt"
#: the files :func:`evaluate_run` writes into a run folder, per method, and with ``gaps=True``
EVALUATION_FILES = {"is": "log_likelihood.csv", "ais": "log_likelihood_ais.csv", "gaps": "gaps.csv"}
#: the files a run folder may hold: what ``train`` and ``evaluate`` write, and the folder's lock
RUN_FILES = (CONFIG_FILE, HISTORY_FILE, CHECKPOINT_FILE, "elbo.png", "reconstructions.png", "samples.png",
             *EVALUATION_FILES.values(), storage.FolderLock.FILE)

# data settings that are options of pyro_vae.data.load_split
_SPLIT_OPTIONS = ("root", "download", "binarize", "test_fraction", "split_seed", "seed", "n_samples",
                  "n_components", "dim", "separation")


def load_run_data(data_config):
    """Training and held-out data for a run, by :func:`pyro_vae.data.load_split`.

    ``source="mnist10k"`` follows the MNIST-10k protocol (first 9,000 test digits for training,
    last 1,000 binarized once with seed 1234 for evaluation). ``source="synthetic"`` draws a
    Gaussian mixture (``n_samples``, ``n_components``, ``dim``, ``separation``) from the data
    ``seed``. Any other source goes through :func:`pyro_vae.data.load_data`. Both are split with
    ``test_fraction`` and ``split_seed``; with ``binarize`` the held-out part is binarized once
    with seed 1234 and the training part dynamically during training.

    :param dict data_config: the ``"data"`` settings of a run configuration.
    :returns: ``(train_x, test_x, shape)``: tensors ``(N, D)`` and ``(M, D)``, and the image
        shape or ``None``.
    """
    if not isinstance(data_config, dict) or "source" not in data_config:
        raise ValueError(f"the data settings need a 'source' (e.g. 'mnist10k', 'synthetic' or a file), "
                         f"got {data_config!r}")
    options = {k: data_config[k] for k in _SPLIT_OPTIONS if k in data_config}
    if data_config["source"] == SYNTHETIC and "seed" not in data_config:
        # configurations written before data.seed existed drew synthetic data with split_seed
        options["seed"] = data_config.get("split_seed", 0)
    split = load_split(data_config["source"], **options)
    return split.train_x, split.test_x, split.shape


def resolve_likelihood(name, train_x, binarize):
    """``"auto"``: Bernoulli for binary or binarized data, continuous Bernoulli for data in
    [0, 1], otherwise a Gaussian with a learned scale per feature. Other names pass through."""
    if name != "auto":
        return name
    if binarize or bool(((train_x == 0) | (train_x == 1)).all()):
        return "bernoulli"
    if train_x.min() >= 0 and train_x.max() <= 1:
        return "continuous_bernoulli"
    return "gaussian_feature"


#: what ``config["model"]["kind"]`` can name; a configuration without the key describes a VAE
MODEL_KINDS = ("vae", "mixture_vae")
#: settings of a ``"mixture_vae"`` filled in when the configuration leaves them out
MIXTURE_VAE_DEFAULTS = {"n_components": 10, "baseline": None}


def _complete_model_config(config):
    """Fill in the settings of the model kind the configuration names (in place)."""
    m = config["model"]
    kind = m.get("kind", "vae")
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {kind!r}; choose one of {list(MODEL_KINDS)}")
    if kind == "mixture_vae":
        for key, value in MIXTURE_VAE_DEFAULTS.items():
            m.setdefault(key, value)


def _build_vae(config, train_x):
    m = config["model"]
    likelihood = resolve_likelihood(m["likelihood"], train_x, config["data"].get("binarize"))
    if m.get("kind", "vae") == "mixture_vae":
        return MixtureVAE(train_x.shape[1], m["latent_dim"], m["n_components"], hidden=tuple(m["hidden"]),
                          likelihood=likelihood, activation=m["activation"], baseline=m["baseline"],
                          seed=config.get("seed"))
    return VAE(train_x.shape[1], m["latent_dim"], hidden=tuple(m["hidden"]), prior=m["prior"],
               likelihood=likelihood, activation=m["activation"], beta=m["beta"],
               seed=config.get("seed"), guide=m.get("guide", "diagonal"), num_flows=m.get("num_flows"),
               network=m.get("network", "mlp"))


def train_overrides(*, source=None, root=None, download=None, binarize=None, data_seed=None, model_kind=None,
                    latent_dim=None, hidden=None, activation=None, prior=None, likelihood=None, beta=None,
                    guide=None, num_flows=None, network=None, pseudo_inputs=None, n_components=None, baseline=None,
                    objective=None, num_particles=None, epochs=None, batch_size=None, lr=None, clip_norm=None,
                    lr_schedule=None, kl_warmup=None, patience=None, seed=None):
    """The configuration overrides for :func:`train_run` made of the settings given; a setting
    left at ``None`` keeps its value in :data:`DEFAULT_CONFIG` (or a stored run's, on resume).

    Data: ``source``, ``root``, ``download``, ``binarize``, ``data_seed`` (``data.seed``, of
    synthetic data); a source other than ``"mnist10k"`` is not binarized unless ``binarize``
    says so. Model: ``model_kind`` (``"vae"`` or ``"mixture_vae"``), ``latent_dim``, ``hidden``,
    ``activation``, ``likelihood``; for a VAE also ``prior``, ``beta``, ``guide``,
    ``num_flows``, ``network`` and ``pseudo_inputs`` (the number of pseudo-inputs of the
    VampPrior, the default prior: ``prior`` becomes ``["vamp", {"n_pseudo": pseudo_inputs}]``);
    for a mixture_vae ``n_components`` and ``baseline``
    (``"none"``, ``"decaying"`` or ``"neural"``), and the objective defaults to ``"enum"``.
    Training: ``objective``, ``num_particles``, ``epochs``, ``batch_size``, ``lr``,
    ``clip_norm``, ``lr_schedule``, ``kl_warmup``, ``patience``; ``seed``.

    :returns: dict with the layout of :data:`DEFAULT_CONFIG`, holding only the settings given.
    :raises ValueError: a setting of the other model kind, ``n_components`` or
        ``pseudo_inputs`` below 1, or ``pseudo_inputs`` with a prior other than ``"vamp"``.
    """
    if pseudo_inputs is not None:
        if prior not in (None, "vamp", "vampprior"):
            raise ValueError(f"pseudo_inputs is an option of the vamp prior, not of prior={prior!r}")
        prior = ["vamp", {"n_pseudo": check_positive_int(pseudo_inputs, "pseudo_inputs")}]
    data = {"source": source, "root": root, "download": download, "binarize": binarize, "seed": data_seed}
    if source is not None and source != "mnist10k" and binarize is None:
        data["binarize"] = False
    model = {"latent_dim": latent_dim, "hidden": hidden, "activation": activation, "prior": prior,
             "likelihood": likelihood, "beta": beta, "guide": guide, "num_flows": num_flows, "network": network}
    fit_settings = {"objective": objective, "num_particles": num_particles, "epochs": epochs,
                    "batch_size": batch_size, "lr": lr, "clip_norm": clip_norm, "lr_schedule": lr_schedule,
                    "kl_warmup": kl_warmup, "patience": patience}
    config = {"data": {k: v for k, v in data.items() if v is not None},
              "model": {k: v for k, v in model.items() if v is not None},
              "fit": {k: v for k, v in fit_settings.items() if v is not None}}
    if seed is not None:
        config["seed"] = seed
    if model_kind != "mixture_vae":
        for name, value in (("n_components", n_components), ("baseline", baseline)):
            if value is not None:
                raise ValueError(f"{name} belongs to model_kind=mixture_vae")
        if model_kind is not None:
            config["model"]["kind"] = model_kind
        return config
    for name, value in (("prior", prior), ("guide", guide), ("num_flows", num_flows), ("network", network),
                        ("beta", beta)):
        if value is not None:
            raise ValueError(f"{name} is an option of model_kind=vae; the mixture_vae has its own prior (a "
                             "learned mixture) and guide q(y|x) q(z|x,y)")
    config["model"]["kind"] = "mixture_vae"
    if n_components is not None:
        config["model"]["n_components"] = check_positive_int(n_components, "n_components")
    if baseline is not None:
        config["model"]["baseline"] = None if baseline == "none" else baseline
    config["fit"].setdefault("objective", "enum")
    return config


def _merge(base, override):
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def train_run(out_dir, config=None, *, resume=False, overwrite=False, quiet=False, device=None):
    """Train a VAE as described by ``config`` and write the run folder ``out_dir``.

    A run folder holds one run. A folder that already holds files of a run is refused unless
    ``resume`` (continue it; the stored settings must match, only ``fit.epochs`` may grow) or
    ``overwrite`` (delete its run files first; a folder with other files too is refused). The
    folder is locked while training runs: a second writer gets
    :class:`~pyro_vae.storage.FolderInUseError`. Every checkpoint carries a hash of the
    configuration it was written under, which :func:`load_run` and a resume check.

    :param str out_dir: the run folder (created if needed).
    :param dict config: overrides of :data:`DEFAULT_CONFIG` (same nested layout).
    :param bool resume: continue from ``out_dir/checkpoint.pt`` if it exists; the stored
        configuration must match (``fit.epochs`` may be larger).
    :param bool overwrite: clear the run files of ``out_dir`` first.
    :param bool quiet: no progress bar.
    :param device: device to train on (``None``: CPU, ``"auto"``: CUDA when present).
    :returns: ``(vae, history)``.
    :raises ValueError: the folder holds another run, or the settings differ from the stored ones.
    """
    check_bool(resume, "resume")
    check_bool(overwrite, "overwrite")
    if resume and overwrite:
        raise ValueError("resume and overwrite exclude each other: --resume continues the run in the "
                         "folder, --overwrite deletes it")
    device = resolve_device(device, default=None)
    # as config.json will hold it (lists, not tuples), so that comparisons and hashes agree
    config = json.loads(json.dumps(_merge(DEFAULT_CONFIG, config), default=storage.json_default))
    _complete_model_config(config)
    _store_data_location(config["data"])
    if not is_main_process():  # under torchrun only rank 0 writes (and locks) the run folder
        return _train(out_dir, config, resume, quiet, device, main=False)
    with storage.output_folder(out_dir, "run folder"):
        config_path = os.path.join(out_dir, CONFIG_FILE)
        if overwrite:
            clear_run_folder(out_dir)
        elif resume and os.path.exists(config_path):
            config = _resumed_config(config_path, config)
        else:
            present = _run_files(out_dir)
            if present:
                raise ValueError(f"run folder {out_dir} already holds a run ({', '.join(present)}); continue it "
                                 "with --resume (resume=True), replace it with --overwrite (overwrite=True), "
                                 "or choose another --out")
        return _train(out_dir, config, resume, quiet, device, main=True)


def _train(out_dir, config, resume, quiet, device, main):
    train_x, test_x, shape = load_run_data(config["data"])
    vae = _build_vae(config, train_x)
    if isinstance(vae, MixtureVAE):
        vae.unregister()  # a new module: not the tensors of an earlier one of the same name
    if main:
        storage.write_json(os.path.join(out_dir, CONFIG_FILE), config)
    fcfg = dict(config["fit"])
    if fcfg.get("lr_schedule") == "none":
        fcfg["lr_schedule"] = None
    val_x = test_x
    if fcfg.get("patience"):
        # early stopping watches a validation split of the training data, never the test data
        train_x, val_x = train_test_split(train_x, test_fraction=config["data"].get("val_fraction", 0.1),
                                          seed=config["data"].get("split_seed", 0))[:2]
        if config["data"].get("binarize"):
            val_x = binarize(val_x, seed=MNIST_10K_TEST_SEED + 1)
    history = fit(
        vae, train_x, val_data=val_x, binarize=bool(config["data"].get("binarize")),
        seed=config["seed"], device=device, resume=resume, quiet=quiet,
        checkpoint=os.path.join(out_dir, CHECKPOINT_FILE),
        history_path=os.path.join(out_dir, HISTORY_FILE), checkpoint_tag=config_tag(config), **fcfg,
    )
    if main:
        write_run_figures(out_dir, vae, test_x, history, shape, seed=config["seed"])
    return vae, history


def config_tag(config):
    """The hash a run's checkpoints carry: SHA-256 of the canonical JSON of the configuration
    without ``fit.epochs`` (which a resume may extend).

    :param dict config: a full run configuration.
    :returns: str.
    """
    canonical = copy.deepcopy(config)
    canonical.get("fit", {}).pop("epochs", None)
    text = json.dumps(canonical, sort_keys=True, default=storage.json_default)
    return "config-sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _run_files(folder):
    """The files of ``folder`` a run writes (the lock file aside), sorted."""
    return sorted(n for n in os.listdir(folder) if n in RUN_FILES and n != storage.FolderLock.FILE)


def clear_run_folder(folder):
    """Delete the files a run writes from ``folder``; refuse if it holds other files too.

    :param str folder: a run folder.
    :returns: list of the names deleted.
    :raises ValueError: the folder holds files that no run writes (they are named, nothing is
        deleted).
    """
    names = os.listdir(folder)
    foreign = sorted(n for n in names if n not in RUN_FILES and not storage.is_temp_file_name(n))
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise ValueError(f"--overwrite: run folder {folder} also holds files that are not a run's ({shown}); "
                         "nothing was deleted: move them away, or choose another --out")
    removed = []
    for name in _run_files(folder):
        os.remove(os.path.join(folder, name))
        removed.append(name)
    return removed


def _resumed_config(config_path, given):
    """The configuration a resume continues: the stored one (keys added since it was written at
    their defaults) with the given ``fit.epochs``; any other difference is refused by name."""
    stored = read_config(config_path)
    differ = []
    for key, old, new in _leaves(stored, given):
        if key == "fit.epochs" or _same_setting(key, old, new):
            continue
        differ.append(f"{key}: stored {old!r}, given {new!r}")
    if differ:
        raise ValueError(f"--resume: the settings differ from the ones stored in {config_path} "
                         f"({'; '.join(differ)}); resume with the stored settings (only --epochs may "
                         "change) or train into a new --out folder")
    stored["fit"]["epochs"] = given["fit"]["epochs"]
    return stored


def _leaves(a, b, prefix=""):
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        name = prefix + str(key)
        if isinstance(x, dict) and isinstance(y, dict):
            yield from _leaves(x, y, name + ".")
        else:
            yield name, x, y


def _same_setting(key, old, new):
    if old == new:
        return True
    if key in ("data.source", "data.root") and isinstance(old, str) and isinstance(new, str):
        # the same file given by another path (relative, absolute, through a symlink)
        try:
            return os.path.samefile(old, new)
        except OSError:
            return False
    return False


def read_config(config_path):
    """Read a run's ``config.json`` and check it, with the keys added since older versions at
    their defaults.

    :param str config_path: the file.
    :returns: the full configuration (dict).
    :raises ValueError: not JSON, or missing or malformed settings; the message names the key.
    """
    try:
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{config_path} is not valid JSON ({e}); restore it or train the run again") from None
    except UnicodeDecodeError:
        raise ValueError(f"{config_path} is not a text file; restore it or train the run again") from None
    bad = None
    if not isinstance(config, dict):
        bad = f"it holds a {type(config).__name__}, not an object of settings"
    else:
        for section, keys in _REQUIRED_KEYS.items():
            if not isinstance(config.get(section), dict):
                bad = f"the section {section!r} is missing or not an object"
                break
            missing = [k for k in keys if k not in config[section]]
            if missing:
                bad = f"it lacks {', '.join(section + '.' + k for k in missing)}"
                break
    if bad is None:
        if config["data"]["source"] == SYNTHETIC and "seed" not in config["data"]:
            # written before data.seed existed: the synthetic data were drawn with split_seed
            config["data"]["seed"] = config["data"].get("split_seed", 0)
        config = _merge(DEFAULT_CONFIG, config)
        _complete_model_config(config)
        data, model = config["data"], config["model"]
        if not isinstance(data["source"], str) or not data["source"]:
            bad = f"data.source must be a dataset name or a file path, got {data['source']!r}"
        elif not isinstance(model["hidden"], list) or not all(
                isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in model["hidden"]):
            bad = f"model.hidden must be a list of positive layer sizes, got {model['hidden']!r}"
    if bad is not None:
        raise ValueError(f"{config_path}: {bad}; restore the file or train the run again")
    return config


# settings every config.json has had; the others take their defaults when missing
_REQUIRED_KEYS = {"data": ("source",), "model": ("latent_dim", "hidden", "prior", "likelihood"),
                  "fit": ("epochs", "batch_size", "lr")}


def _store_data_location(data):
    """Make the data paths of a configuration absolute, so that the run folder's config.json
    finds the data from any working directory."""
    source, root = resolve_data_location(data.get("source"), data.get("root"))
    data["source"] = source
    if root is not None:
        data["root"] = root


def write_run_figures(out_dir, vae, test_x, history, shape, seed=0):
    """Write ``elbo.png``, ``reconstructions.png`` and ``samples.png`` into ``out_dir``."""
    from pyro_vae import plots

    storage.save_figure(plots.plot_history(history), os.path.join(out_dir, "elbo.png"))
    test_x = test_x.to(vae.device)
    if shape is not None:
        x = test_x[:50]
        rec = vae.reconstruct(x)
        pairs = torch.stack([x, rec], 1).reshape(-1, x.shape[1])  # original, reconstruction
        storage.save_figure(plots.plot_image_grid(pairs, shape, nrow=10,
                                                  title="held-out data (odd) and reconstructions (even)"),
                            os.path.join(out_dir, "reconstructions.png"))
        storage.save_figure(plots.plot_image_grid(vae.sample(100, seed=seed), shape, nrow=10,
                                                  title="samples (mean of p(x|z))"),
                            os.path.join(out_dir, "samples.png"))
        if isinstance(vae, MixtureVAE):
            storage.save_figure(plots.plot_component_samples(vae, shape, seed=seed),
                                os.path.join(out_dir, "components.png"))
    else:
        rec = vae.reconstruct(test_x)
        storage.save_figure(plots.plot_samples_2d(test_x, rec, title="held-out data and reconstructions"),
                            os.path.join(out_dir, "reconstructions.png"))
        samples = vae.sample(max(500, test_x.shape[0]), seed=seed, mean=False)
        storage.save_figure(plots.plot_samples_2d(test_x, samples), os.path.join(out_dir, "samples.png"))


def _check_run_folder(run_dir):
    """The run folder as a ``str``, refused if it is missing or unreadable."""
    run_dir = os.fspath(run_dir)
    if not os.path.isdir(run_dir):
        raise FileNotFoundError(f"run folder not found: {run_dir}")
    if not os.access(run_dir, os.R_OK | os.X_OK):
        raise PermissionError(f"run folder {run_dir} is not readable: permission denied; ask for read "
                              f"permission (chmod u+rx {run_dir})")
    return run_dir


def load_run(run_dir, device="cpu"):
    """Rebuild a trained VAE from a run folder.

    :param str run_dir: folder written by :func:`train_run` / ``pyro-vae train``.
    :param device: where the VAE and data go (``"cpu"``, ``"cuda"``, ``"auto"``).
    :returns: ``(vae, config, test_x)`` -- the VAE with the checkpoint's weights (eval mode),
        the run's configuration and its held-out data ``(M, D)``.
    :raises ValueError: a damaged or mismatched config.json or checkpoint (the message names the
        file and what is wrong).
    """
    device = resolve_device(device)
    run_dir = _check_run_folder(run_dir)
    config_path = os.path.join(run_dir, CONFIG_FILE)
    ck_path = os.path.join(run_dir, CHECKPOINT_FILE)
    for p in (config_path, ck_path):
        if not os.path.isfile(p):
            raise FileNotFoundError(f"{p} is missing; is {run_dir} a folder written by 'pyro-vae train'?")
    config = read_config(config_path)
    source = config["data"]["source"]
    if source not in DATASET_NAMES + (SYNTHETIC,) and not os.path.isabs(source) and not os.path.exists(source):
        raise FileNotFoundError(f"{config_path} names the data {source!r} by a path relative to the "
                                "folder training ran in; run from that folder, or write the data's "
                                "absolute path into data.source in config.json")
    train_x, test_x, _ = load_run_data(config["data"])
    try:
        vae = _build_vae(config, train_x)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{config_path}: {e}; restore the file or train the run again") from None
    ck = storage.load_checkpoint(ck_path, map_location=device)
    if isinstance(vae, MixtureVAE):  # trained as a pair of programs: tensors by param-store name
        named = {f"{vae.name}$$${k}": v for k, v in vae.state_dict().items()}
        vae.load_store_state(checkpoints.trained_state(ck, ck_path, named=named, tag=config_tag(config)))
    else:
        vae.load_state_dict(checkpoints.trained_state(ck, ck_path, named=vae.state_dict(), tag=config_tag(config)))
    vae.to(device).eval()
    return vae, config, test_x.to(device)


#: what :func:`evaluate_run` uses for a setting left at ``None`` (of the method, or of ``gaps``, it belongs to)
EVALUATE_DEFAULTS = {"num_samples": 1000, "num_steps": 1000, "num_chains": 16, "num_leapfrog_steps": 10,
                     "gap_points": 100, "gap_steps": 500}


def evaluate_run(run_dir, *, method="is", num_samples=None, num_steps=None, num_chains=None,
                 num_leapfrog_steps=None, gaps=False, gap_points=None, gap_steps=None, particle_batch_size=None,
                 data=None, device="cpu", seed=0, progress=True):
    """Estimate log p(x) of every held-out datapoint of a run folder and write the tables into it
    (``pyro-vae evaluate``).

    ``method="is"``: importance sampling with the encoder as proposal
    (:func:`~pyro_vae.importance.log_likelihood`, ``num_samples`` samples per datapoint), written
    to ``log_likelihood.csv``; with ``gaps`` also the approximation and amortization gaps of the
    first ``gap_points`` datapoints (:func:`~pyro_vae.gaps.inference_gaps`, ``gap_steps``
    optimization steps, ``num_samples`` samples), written to ``gaps.csv``. ``method="ais"``:
    annealed importance sampling from the encoder (:func:`~pyro_vae.ais.ais_log_likelihood`,
    ``num_steps`` steps, ``num_chains`` chains, ``num_leapfrog_steps`` per HMC transition), written
    to ``log_likelihood_ais.csv``. Each table has one row per datapoint, numbered in the column
    ``datapoint``. A setting of the other method (or a gap setting without ``gaps``) is refused
    rather than ignored; one left at ``None`` takes its value in :data:`EVALUATE_DEFAULTS`.

    A :class:`~pyro_vae.mixture_vae.MixtureVAE` run has a discrete latent: it is evaluated by
    importance sampling without gaps. The run folder is locked while the evaluation runs (a
    training or another evaluation of it gets :class:`~pyro_vae.storage.FolderInUseError`), and
    the tables are written atomically.

    :param str run_dir: a run folder written by :func:`train_run` (``pyro-vae train``).
    :param str method: ``"is"`` or ``"ais"``.
    :param int num_samples: importance samples K per datapoint (``"is"``; default 1000).
    :param int num_steps: annealing steps per chain (``"ais"``; default 1000).
    :param int num_chains: AIS chains per datapoint (``"ais"``; default 16).
    :param int num_leapfrog_steps: leapfrog steps per HMC transition (``"ais"``; default 10).
    :param bool gaps: also compute the inference gaps (``"is"``, a VAE run).
    :param int gap_points: the first this many datapoints go into the gaps (default 100).
    :param int gap_steps: optimization steps of each datapoint's q*(z|x) (default 500).
    :param int particle_batch_size: particles per vectorized pass (``"is"``; default all).
    :param data: evaluate on these data instead of the run's held-out data: a file of
        :func:`pyro_vae.data.load_data` (rows are datapoints), or a tensor or numpy array
        ``(N, D)`` (images ``(N, H, W)`` are flattened), with the run's D features.
    :param device: where the model and data go (``"cpu"``, ``"cuda"``, ``"auto"``).
    :param int seed: seed of all random draws.
    :param bool progress: show a progress bar.
    :returns: dict: ``run_dir``, ``method`` and the summary of the estimate
        (:meth:`ImportanceEstimate.to_dict <pyro_vae.importance.ImportanceEstimate.to_dict>` or
        :meth:`AISEstimate.to_dict <pyro_vae.ais.AISEstimate.to_dict>`: ``num_datapoints``,
        ``mean``, ``stderr``, ``mean_mc_stderr``, ``mean_ess``, ...); with ``gaps`` also
        ``gaps`` (``{column: {"mean": m, "stderr": s}}``) and ``gap_datapoints``; ``files``,
        the paths written.
    :raises TypeError: a setting of the wrong type.
    :raises ValueError: a setting out of range or of the other method, a MixtureVAE run with
        ``gaps`` or ``"ais"``, data the run's model cannot take, or a damaged run folder.
    """
    from pyro_vae.gaps import inference_gaps
    from pyro_vae.importance import log_likelihood

    method = check_choice(method, "method", ("is", "ais"))
    gaps = check_bool(gaps, "gaps")
    given = {"num_samples": num_samples, "num_steps": num_steps, "num_chains": num_chains,
             "num_leapfrog_steps": num_leapfrog_steps, "gap_points": gap_points, "gap_steps": gap_steps,
             "particle_batch_size": particle_batch_size}
    if method == "ais":
        used = ("num_steps", "num_chains", "num_leapfrog_steps")
        misplaced = [n for n in ("gaps", "num_samples", "particle_batch_size", "gap_points", "gap_steps")
                     if (gaps if n == "gaps" else given[n] is not None)]
        if misplaced:
            raise ValueError(f"{misplaced[0]} belongs to importance sampling (method 'is'); leave it out with "
                             "method 'ais'")
    else:
        used = ("num_samples", "gap_points", "gap_steps") if gaps else ("num_samples",)
        misplaced = [n for n in ("num_steps", "num_chains", "num_leapfrog_steps") if given[n] is not None]
        if misplaced:
            raise ValueError(f"{misplaced[0]} belongs to annealed importance sampling (method 'ais'); leave it "
                             "out with method 'is'")
        misplaced = [n for n in ("gap_points", "gap_steps") if given[n] is not None and not gaps]
        if misplaced:
            raise ValueError(f"{misplaced[0]} sets the inference gaps; leave it out, or ask for the gaps too")
    settings = {name: check_int(EVALUATE_DEFAULTS[name] if given[name] is None else given[name], name,
                                minimum=0 if name == "gap_steps" else 1) for name in used}
    if particle_batch_size is not None:
        particle_batch_size = check_positive_int(particle_batch_size, "particle_batch_size")
    seed = check_seed(seed, allow_none=False)
    progress = check_bool(progress, "progress")
    device = resolve_device(device)

    run_dir = _check_run_folder(run_dir)
    if not os.access(run_dir, os.W_OK):
        raise PermissionError(f"run folder {run_dir} is not writable: the evaluation writes its tables into it; "
                              f"make it writable (chmod u+w {run_dir}) or evaluate a copy of the folder")
    with storage.output_folder(run_dir, "run folder"):
        model, _, x = load_run(run_dir, device=device)
        if not isinstance(model, VAE):
            if gaps:
                raise ValueError("gaps optimizes a Gaussian q(z|x) per datapoint, for runs of a VAE; a mixture_vae "
                                 "run is evaluated by importance sampling without gaps (leave gaps out)")
            if method == "ais":
                raise ValueError("method 'ais' moves continuous latents by HMC, and a mixture_vae has a discrete "
                                 "component; use method 'is'")
        if data is not None:
            x = _evaluation_data(data, model, model.device)

        if method == "ais":
            from pyro_vae.ais import ais_log_likelihood

            est = ais_log_likelihood(model.model, model.guide, x, settings["num_steps"], settings["num_chains"],
                                     num_leapfrog_steps=settings["num_leapfrog_steps"], seed=seed, progress=progress)
        else:
            est = log_likelihood(model.model, model.guide, x, settings["num_samples"], seed=seed,
                                 particle_batch_size=particle_batch_size, progress=progress)
        frame = est.to_frame()
        frame.insert(0, "datapoint", range(len(frame)))
        files = [os.path.join(run_dir, EVALUATION_FILES[method])]
        storage.write_csv(files[0], frame)
        result = {"run_dir": run_dir, "method": method, **est.to_dict(), "files": files}
        if gaps:
            table = inference_gaps(model, x[:settings["gap_points"]], num_samples=settings["num_samples"],
                                   steps=settings["gap_steps"], particle_batch_size=particle_batch_size, seed=seed)
            table.insert(0, "datapoint", range(len(table)))
            files.append(os.path.join(run_dir, EVALUATION_FILES["gaps"]))
            storage.write_csv(files[1], table)
            result["gaps"] = table.attrs["summary"]
            result["gap_datapoints"] = len(table)
    return result


def _evaluation_data(data, model, device):
    """The data :func:`evaluate_run` was given, as a float32 tensor ``(N, D)`` on ``device``,
    checked against the run's model."""
    from pyro_vae.data import load_data

    if isinstance(data, (str, os.PathLike)):
        name = f"data {os.fspath(data)}"
        data = load_data(data).x
    else:
        name = "data"
    x = as_data_tensor(data, name, dtype=torch.float32, device=device)
    x = x.reshape(x.shape[0], -1)
    if x.shape[1] != model.data_dim:
        raise ValueError(f"{name} has {x.shape[1]} features per datapoint; the run's model needs {model.data_dim}")
    model.likelihood.validate_data(x)
    return x


#: the files :func:`fit_mixture_run` writes
MIXTURE_RUN_FILES = ("params.json", "history.csv", "mixture.png")
# the mixture plot shows the first rows of the data
_PLOTTED_ROWS = 20_000


def fit_mixture_run(out_dir, data, *, chunk_rows=None, n_components=2, covariance_type="full", init_params="kmeans",
                    n_init=1, max_iter=100, tol=1e-3, reg_covar=1e-6, random_state=0, device="cpu"):
    """Fit a Gaussian mixture by EM to the rows of a data file and write the run folder ``out_dir``.

    The folder holds ``params.json`` (the returned results, with weights, means and
    covariances), ``history.csv`` (:attr:`GaussianMixture.history_`) and, for 2-D data,
    ``mixture.png`` (the first 20,000 rows and the components' ellipses). Warnings of the fit
    (:class:`~pyro_vae.mixture.ConvergenceWarning`) are issued as usual.

    :param str out_dir: the run folder (created if needed; refused if it is a file, before any
        computing).
    :param str data: a data file of :func:`pyro_vae.data.load_data` (CSV, .npy, .npz, .pt),
        one row per sample, read in float64.
    :param int chunk_rows: read a CSV file this many rows at a time
        (:class:`pyro_vae.data.CsvChunks`) instead of loading it whole.
    :param n_components, covariance_type, init_params, n_init, max_iter, tol, reg_covar, random_state, device:
        those of :class:`~pyro_vae.mixture.GaussianMixture`.
    :returns: ``(gm, result, files)``: the fitted :class:`~pyro_vae.mixture.GaussianMixture`; a
        dict with ``data``, ``n_samples``, ``n_features``, ``n_components``,
        ``covariance_type``, ``log_likelihood`` (summed over the rows),
        ``log_likelihood_per_sample``, ``lower_bound``, ``bic``, ``aic``, ``n_parameters``,
        ``n_iter``, ``converged``, ``seed``, ``weights`` ``(K,)``, ``means`` ``(K, D)`` and
        ``covariances`` (CPU tensors); the paths written.
    :raises ValueError: ``chunk_rows`` with a file other than CSV, or what
        :class:`~pyro_vae.mixture.GaussianMixture` refuses.
    """
    from pyro_vae.data import CsvChunks, load_data
    from pyro_vae.mixture import GaussianMixture
    from pyro_vae.mixture.sources import first_rows

    with storage.output_folder(out_dir, "output folder"):  # usable before anything is computed
        device = resolve_device(device)
        if chunk_rows is None:
            x = load_data(data, dtype=torch.float64, scale=None).x.to(device)
        else:
            if not os.fspath(data).lower().endswith(".csv"):
                raise ValueError("chunk_rows reads CSV files; convert the data to CSV, or leave it out to load "
                                 "the whole file")
            x = CsvChunks(data, chunk_rows)
        gm = GaussianMixture(n_components=n_components, covariance_type=covariance_type, tol=tol,
                             reg_covar=reg_covar, max_iter=max_iter, n_init=n_init, init_params=init_params,
                             random_state=random_state, device=device).fit(x)
        log_likelihood = gm.score_samples(x)      # one pass over the data; BIC and AIC follow from its sum
        n, total = log_likelihood.shape[0], float(log_likelihood.sum())
        result = {
            "data": os.fspath(data), "n_samples": n, "n_features": gm.n_features_in_, "n_components": gm.n_components,
            "covariance_type": gm.covariance_type, "log_likelihood": total,
            "log_likelihood_per_sample": total / n, "lower_bound": gm.lower_bound_,
            **gm.information_criteria(total, n), "n_parameters": gm.n_parameters(), "n_iter": gm.n_iter_,
            "converged": gm.converged_, "seed": random_state, "weights": gm.weights_.cpu(),
            "means": gm.means_.cpu(), "covariances": gm.covariances_.cpu(),
        }
        files = [os.path.join(out_dir, name) for name in MIXTURE_RUN_FILES[:2]]
        storage.write_json(files[0], result)
        storage.write_csv(files[1], gm.history_)
        if gm.n_features_in_ == 2:
            from pyro_vae.plots import plot_mixture_2d

            shown = x[:_PLOTTED_ROWS] if chunk_rows is None else first_rows(x, _PLOTTED_ROWS)
            files.append(os.path.join(out_dir, MIXTURE_RUN_FILES[2]))
            storage.save_figure(plot_mixture_2d(shown.cpu(), gm), files[2])
    return gm, result, files
