"""Data: anything -> float tensors ``(N, D)``.

* :func:`load_data` reads tensors, numpy arrays, pandas DataFrames, ``.csv``, ``.npy``,
  ``.npz``, ``.pt`` and IDX files (raw or ``.gz``), folders of MNIST-style IDX files, and the
  torchvision datasets ``"mnist"``, ``"fashion-mnist"`` and ``"kmnist"`` (downloaded only with
  ``download=True``). Images are flattened to ``(N, H * W)`` and pixel values scaled to [0, 1].
* :class:`CsvChunks` reads a CSV file a block of rows at a time, again on every pass, for data
  larger than memory (e.g. :meth:`pyro_vae.GaussianMixture.fit`).
* :func:`load_mnist_10k` implements the MNIST-10k protocol on the real MNIST test digits.
* :func:`binarize` (a Bernoulli draw, for dynamic binarization) and :func:`threshold` (static
  binarization).
* :func:`train_test_split`: a seeded holdout split.
* :func:`make_gaussian_mixture`: synthetic Gaussian-mixture data whose generating density
  (:meth:`MixtureData.log_prob`) is known exactly.

**Dynamic binarization.** Grey levels ``x`` in [0, 1] are read as Bernoulli probabilities and a
fresh binary image is drawn for every minibatch, so the model sees a different binarization of
each digit in every epoch (a standard regulariser for Bernoulli likelihoods). With one
``torch.Generator`` kept for the whole training run, the draws are reproducible::

    gen = torch.Generator().manual_seed(seed)
    for xb in minibatches:
        xb = binarize(xb, generator=gen)   # new 0/1 draw each time

Held-out data are binarized **once** with a fixed seed, so every model is scored on the same
binary images.
"""

import csv
import dataclasses
import gzip
import logging
import math
import os
import re
import tempfile
from typing import Optional

import numpy as np
import torch

__all__ = [
    "Data",
    "MixtureData",
    "load_data",
    "CsvChunks",
    "load_mnist_10k",
    "find_mnist_dir",
    "read_idx",
    "default_root",
    "binarize",
    "threshold",
    "train_test_split",
    "make_gaussian_mixture",
    "DATASET_NAMES",
    "FILE_TYPES",
    "MNIST_10K_TEST_SEED",
]

log = logging.getLogger(__name__)

#: dataset names :func:`load_data` understands besides files and folders
DATASET_NAMES = ("mnist", "fashion-mnist", "fashionmnist", "kmnist", "mnist10k")

#: file types :func:`load_data` reads
FILE_TYPES = (".csv", ".npy", ".npz", ".pt", "IDX (e.g. t10k-images-idx3-ubyte or .idx, raw or .gz)")

#: seed of the one-off binarization of the MNIST-10k held-out digits
MNIST_10K_TEST_SEED = 1234

_TORCHVISION_NAMES = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST",
                      "fashionmnist": "FashionMNIST", "kmnist": "KMNIST"}
_IDX_NAME = re.compile(r"(idx[1-9]-ubyte|\.idx[1-9]?)$", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class Data:
    """A loaded dataset.

    :ivar torch.Tensor x: the data, floating point, shape ``(N, D)``.
    :ivar labels: class labels ``(N,)`` (``torch.long``) or ``None``.
    :ivar shape: image shape ``(H, W)`` for image data (``D == H * W``), else ``None``.
    :ivar str name: where the data came from (file name or dataset name and split).
    :ivar label_names: for labels read from text, the name of each label code
        (``label_names[k]`` is the text of code ``k``); otherwise ``None``.
    """

    x: torch.Tensor
    labels: Optional[torch.Tensor] = None
    shape: Optional[tuple] = None
    name: str = ""
    label_names: Optional[tuple] = None

    def __len__(self):
        return self.x.shape[0]


# ---------------------------------------------------------------------------------------
# load_data
# ---------------------------------------------------------------------------------------
def load_data(source, *, root=None, download=False, train=None, columns=None, label_column=None,
              dtype=torch.float32, scale="auto"):
    """Load data from almost anything into a float tensor ``(N, D)``.

    ``source`` may be

    * a ``torch.Tensor`` or numpy array ``(N, D)`` (kept on its device);
    * a pandas DataFrame (numeric columns);
    * a path to a ``.csv`` file (read with pandas; a header row is detected: if every cell of the
      first line is a number, the file has no header and columns are numbered ``0, 1, ...``),
      a ``.npy`` file, a ``.npz`` file (array ``x`` or ``X``, or its only array; labels from
      ``y``, ``labels`` or ``targets`` when present), a ``.pt`` file (a tensor, or a dict with
      ``"x"`` and optionally ``"y"``/``"labels"``; loaded with ``weights_only=True``), or an IDX
      file, raw or gzipped, such as ``t10k-images-idx3-ubyte.gz`` (labels are read from the
      matching ``...-labels-idx1-ubyte`` file next to it when present);
    * a folder holding MNIST-style IDX files (``train-images-idx3-ubyte[.gz]``,
      ``t10k-images-idx3-ubyte[.gz]`` and their label files);
    * ``"mnist"``, ``"fashion-mnist"`` (or ``"fashionmnist"``), ``"kmnist"``: the torchvision
      dataset under ``root``. IDX files directly in ``root`` are used too. Nothing is downloaded
      unless ``download=True``;
    * ``"mnist10k"``: the MNIST-10k protocol (see :func:`load_mnist_10k`): the 9,000 grey-level
      training digits, or with ``train=False`` the 1,000 held-out digits binarized once.

    Images ``(N, H, W)`` are flattened to ``(N, H * W)``; all other inputs must already be 2-D.

    :param source: the data, a path, or a dataset name (see above).
    :param str root: folder of a named dataset (default ``$PYRO_VAE_DATA_DIR`` or
        ``~/.cache/pyro-vae``); for ``"mnist10k"`` the folder of the MNIST test files.
    :param bool download: let torchvision download a named dataset that is missing.
    :param train: which split of a named dataset or IDX folder: ``True`` the training files,
        ``False`` the test (``t10k``) files, ``None`` (default) the training files when they are
        present and otherwise the test files.
    :param columns: columns to keep (names for DataFrames/CSV, integer positions for arrays);
        default all numeric columns except ``label_column``.
    :param label_column: a column holding class labels (name, or position for arrays); it is
        returned as ``labels`` and removed from ``x``. Text labels are coded ``0..K-1`` in sorted
        order and their texts kept in ``label_names``.
    :param torch.dtype dtype: floating dtype of ``x`` (default ``torch.float32``).
    :param scale: ``"auto"`` (default): divide by 255 when the data are images (IDX, torchvision)
        or a ``uint8`` array whose values exceed 1, else leave the values alone; ``None``: leave
        the values alone; ``"minmax"``: map each column linearly onto [0, 1] (constant columns
        become 0); a positive number: divide by it.
    :returns: a :class:`Data` with ``x`` ``(N, D)``, ``labels`` ``(N,)`` or ``None``, the image
        shape or ``None``, and a name.
    :raises FileNotFoundError: a missing file, or a named dataset whose files are absent while
        ``download=False``.
    :raises ValueError: unreadable or invalid data (the message says what to change).
    """
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating torch dtype such as torch.float32, got {dtype!r}")
    _check_scale(scale)
    if train is not None and not isinstance(train, bool):
        raise TypeError(f"train must be True, False or None, got {train!r}")

    image = False
    shape = None
    label_names = None
    if isinstance(source, torch.Tensor) or isinstance(source, np.ndarray):
        name = f"{type(source).__name__} {tuple(source.shape)}"
        x, labels = _from_array(source, columns, label_column, name)
    elif _is_dataframe(source):
        name = "DataFrame"
        x, labels, label_names = _from_frame(source, columns, label_column, name)
    elif isinstance(source, (str, os.PathLike)):
        text = os.fspath(source)
        key = text.strip().lower()
        if key == "mnist10k" and not os.path.exists(text):
            train_x, test_x, train_y, test_y = load_mnist_10k(root)
            if train is False:
                return Data(test_x.to(dtype), test_y, (28, 28), "mnist10k (held-out, binarized)")
            return Data(train_x.to(dtype), train_y, (28, 28), "mnist10k (train)")
        if key in _TORCHVISION_NAMES and not os.path.exists(text):
            x, labels, name = _load_torchvision(key, root, download, train)
            image = True
        else:
            if not os.path.exists(text):
                raise FileNotFoundError(
                    f"no file or folder {text!r}; give a path to a {', '.join(FILE_TYPES)} file, "
                    f"a folder of IDX files, or one of the names {', '.join(DATASET_NAMES)}")
            name = os.path.basename(os.path.normpath(text))
            if os.path.isdir(text):
                x, labels, name = _load_idx_folder(text, train)
                image = True
            else:
                kind = _file_kind(text)
                if kind == "idx":
                    x, labels = _load_idx_with_labels(text)
                    image = x.dim() == 3
                elif kind == "csv":
                    x, labels, label_names = _from_frame(_read_csv(text), columns, label_column, name)
                else:
                    raw, labels = {"npy": _read_npy, "npz": _read_npz, "pt": _read_pt}[kind](text)
                    x, array_labels = _from_array(raw, columns, label_column, name)
                    if array_labels is not None:
                        labels = array_labels
                    image = False
                if kind == "idx" and x.dim() != 3:
                    x, _ = _from_array(x, columns, label_column, name)
    else:
        raise TypeError(f"source must be a tensor, numpy array, pandas DataFrame, path or dataset "
                        f"name, got {type(source).__name__}")

    if image:
        if x.dim() != 3:
            raise ValueError(f"{name}: expected images (N, H, W), got shape {tuple(x.shape)}")
        shape = tuple(int(s) for s in x.shape[1:])
        x = x.reshape(x.shape[0], -1)

    x = _finish(x, name, dtype, scale, image)
    if labels is not None:
        labels = torch.as_tensor(labels).reshape(-1).to(device=x.device, dtype=torch.long)
        if labels.shape[0] != x.shape[0]:
            raise ValueError(f"{name}: {labels.shape[0]} labels for {x.shape[0]} rows; "
                             "the label file or column must have one entry per row")
    return Data(x, labels, shape, name, label_names)


def _check_scale(scale):
    if scale is None or scale == "auto" or scale == "minmax":
        return
    if isinstance(scale, str) or isinstance(scale, bool) or not isinstance(scale, (int, float)) \
            or not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale must be 'auto', None, 'minmax' or a positive number, got {scale!r}")


def _is_dataframe(obj):
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - pandas is a dependency
        return False
    return isinstance(obj, pd.DataFrame)


def _from_array(a, columns, label_column, name):
    """A 2-D tensor or array -> (tensor, labels or None), selecting columns."""
    if isinstance(a, np.ndarray):
        if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
            raise ValueError(f"{name}: array of dtype {a.dtype} is not numeric; convert it to numbers")
        t = torch.from_numpy(np.ascontiguousarray(a))
    else:
        t = a
    if t.is_complex():
        raise ValueError(f"{name}: complex data are not supported; pass real numbers")
    _check_dims(t, name)
    labels = None
    n_cols = t.shape[1]
    if label_column is not None:
        j = _position(label_column, n_cols, name, "label_column")
        labels = t[:, j]
        if labels.is_floating_point():
            if not torch.isfinite(labels).all() or (labels != labels.round()).any():
                raise ValueError(f"{name}: label column {label_column} must hold whole numbers")
        keep = [k for k in range(n_cols) if k != j]
    else:
        keep = list(range(n_cols))
    if columns is not None:
        keep = [_position(c, n_cols, name, "columns") for c in _as_list(columns)]
        if label_column is not None and j in keep:
            raise ValueError(f"{name}: column {label_column} is both a data column and the label column")
    if keep != list(range(n_cols)):
        t = t[:, keep]
    return t, labels


def _position(c, n_cols, name, what):
    if isinstance(c, bool) or not isinstance(c, (int, np.integer)):
        raise ValueError(f"{name}: {what} of an array must be integer positions, got {c!r}")
    if not -n_cols <= c < n_cols:
        raise ValueError(f"{name}: {what} position {c} is out of range for {n_cols} columns")
    return int(c) % n_cols


def _as_list(columns):
    if isinstance(columns, (str, int, np.integer)):
        return [columns]
    return list(columns)


def _check_dims(t, name):
    if t.dim() == 2:
        return
    if t.dim() == 1:
        raise ValueError(
            f"{name}: got a 1-D array of shape {tuple(t.shape)}; data must be 2-D (N, D): "
            "reshape with x.reshape(-1, 1) for N points of one feature, or x.reshape(1, -1) for "
            "one point")
    if t.dim() == 0:
        raise ValueError(f"{name}: got a scalar; data must be a 2-D array (N, D)")
    raise ValueError(
        f"{name}: got a {t.dim()}-D array of shape {tuple(t.shape)}; data must be 2-D (N, D): "
        "flatten images with x.reshape(len(x), -1)")


def _from_frame(frame, columns, label_column, name):
    """A DataFrame -> (tensor (N, D), labels or None, label_names or None)."""
    import pandas as pd

    if label_column is not None and label_column not in frame.columns:
        raise ValueError(f"{name}: no label column {label_column!r}; columns are "
                         f"{_names(frame.columns)}")
    labels = label_names = None
    if label_column is not None:
        col = frame[label_column]
        if col.isna().any():
            rows = np.flatnonzero(col.isna().to_numpy())
            raise ValueError(f"{name}: label column {label_column!r} is empty in rows "
                             f"{_rows(rows)}; fill or drop those rows")
        if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
            values = col.to_numpy(dtype=np.float64)
            if (values != np.round(values)).any():
                raise ValueError(f"{name}: label column {label_column!r} must hold whole numbers "
                                 "or text, not fractions")
            labels = torch.from_numpy(values.astype(np.int64))
        else:
            codes, uniques = pd.factorize(col.astype(str), sort=True)
            labels = torch.from_numpy(codes.astype(np.int64))
            label_names = tuple(str(u) for u in uniques)
    if columns is not None:
        wanted = _as_list(columns)
        missing = [c for c in wanted if c not in frame.columns]
        if missing:
            raise ValueError(f"{name}: no columns {_names(missing)}; columns are {_names(frame.columns)}")
        if label_column is not None and label_column in wanted:
            raise ValueError(f"{name}: column {label_column!r} is both a data column and the label column")
        frame = frame[wanted]
    elif label_column is not None:
        frame = frame.drop(columns=[label_column])
    bad = [c for c in frame.columns
           if not (pd.api.types.is_numeric_dtype(frame[c]) or pd.api.types.is_bool_dtype(frame[c]))]
    if bad:
        raise ValueError(
            f"{name}: columns {_names(bad)} are not numeric; choose the numeric ones with "
            "columns=[...] (CLI: a CSV with numeric columns only) or name a class column with "
            "label_column=...")
    if frame.shape[1] == 0:
        raise ValueError(f"{name}: no data columns left; the table needs at least one numeric column")
    values = frame.to_numpy(dtype=np.float64, copy=True)
    nan_rows = np.flatnonzero(np.isnan(values).any(axis=1))
    if nan_rows.size:
        raise ValueError(f"{name}: missing values (NaN) in {nan_rows.size} rows, e.g. data rows "
                         f"{_rows(nan_rows)} (0-based); fill or drop them (e.g. frame.dropna())")
    return torch.from_numpy(values), labels, label_names


def _names(cols):
    cols = list(cols)
    shown = ", ".join(repr(c) for c in cols[:10])
    return shown + (f", ... ({len(cols)} in all)" if len(cols) > 10 else "")


def _rows(rows):
    rows = [int(r) for r in rows]
    return ", ".join(str(r) for r in rows[:5]) + (", ..." if len(rows) > 5 else "")


def _finish(x, name, dtype, scale, image):
    """Scale, convert to ``dtype`` and check values."""
    if x.dim() != 2:
        _check_dims(x, name)
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name}: the data are empty (shape {tuple(x.shape)}); need at least one "
                         "row and one column")
    is_uint8 = x.dtype == torch.uint8
    if x.dtype == torch.bool:
        x = x.to(torch.uint8)
    if not x.is_floating_point():
        x = x.to(torch.float64)
    bad = ~torch.isfinite(x)
    if bad.any():
        rows = torch.nonzero(bad.any(dim=1)).reshape(-1).tolist()
        raise ValueError(f"{name}: {len(rows)} rows hold NaN or infinite values, e.g. rows "
                         f"{_rows(rows)} (0-based); remove or fill them before loading")
    if scale == "auto":
        if (image or is_uint8) and float(x.max()) > 1:
            if float(x.min()) < 0 or float(x.max()) > 255:
                raise ValueError(f"{name}: image values span [{float(x.min())}, {float(x.max())}], "
                                 "not 0..255; pass scale=None to keep them or scale=<number>")
            x = x / 255.0
    elif scale == "minmax":
        lo = x.min(dim=0).values
        span = x.max(dim=0).values - lo
        x = (x - lo) / torch.where(span > 0, span, torch.ones_like(span))
    elif scale is not None:
        x = x / float(scale)
    return x.to(dtype)


# ---------------------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------------------
def _file_kind(path):
    base = os.path.basename(path)
    lower = base.lower()
    stem = lower[:-3] if lower.endswith(".gz") else lower
    if _IDX_NAME.search(stem):
        return "idx"
    if lower.endswith(".gz"):
        raise ValueError(f"{base}: of gzipped files only IDX files are read (names like "
                         "t10k-images-idx3-ubyte.gz); accepted types: " + ", ".join(FILE_TYPES))
    ext = os.path.splitext(lower)[1]
    if ext in (".csv", ".npy", ".npz", ".pt"):
        return ext[1:]
    raise ValueError(f"{base}: unknown file type {ext or '(no extension)'!r}; accepted types: "
                     + ", ".join(FILE_TYPES))


class CsvChunks:
    """The rows of a CSV file, ``rows`` at a time; every iteration reads the file again.

    The header row is detected and columns are chosen as by :func:`load_data`. Only one block
    is in memory at a time, so a file larger than memory can be passed over repeatedly, as EM
    does (:meth:`pyro_vae.GaussianMixture.fit` takes this object directly).

    :param str path: a ``.csv`` file.
    :param int rows: rows per block (>= 1).
    :param columns: data columns (names, or indices without a header); default all numeric.
    :param label_column: a column left out of the data.
    :yields: float64 tensors of shape ``(rows, D)`` (the last block may be shorter).
    """

    def __init__(self, path, rows, columns=None, label_column=None):
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no such file")
        if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
            raise ValueError(f"rows must be a positive integer, got {rows!r}")
        self.path, self.rows, self.columns, self.label_column = path, rows, columns, label_column
        self._header = _csv_header(path)

    def __iter__(self):
        import pandas as pd

        base = os.path.basename(self.path)
        start = 0
        try:
            reader = pd.read_csv(self.path, header=self._header, chunksize=self.rows)
            for frame in reader:
                name = f"{base} (data rows {start} to {start + len(frame) - 1})"
                start += len(frame)
                yield _from_frame(frame, self.columns, self.label_column, name)[0]
        except (pd.errors.ParserError, UnicodeDecodeError) as e:
            raise ValueError(f"{base}: cannot parse the CSV ({str(e).strip().splitlines()[0]}); every "
                             "row needs the same number of comma-separated fields") from None


def _csv_header(path):
    """``0`` if the first row of the CSV is a header (not all numbers), else ``None``."""
    base = os.path.basename(path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            first = next(csv.reader(f), None)
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{base}: cannot read the file as CSV text ({e}); check the path and "
                         "that it is a comma-separated text file") from None
    if first is None:
        raise ValueError(f"{base}: the file is empty; a CSV needs rows of numbers")
    return None if first and all(_is_number(c) for c in first) else 0


def _read_csv(path):
    import pandas as pd

    base = os.path.basename(path)
    header = _csv_header(path)
    try:
        frame = pd.read_csv(path, header=header)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"{base}: cannot parse the CSV ({str(e).strip().splitlines()[0]}); every "
                         "row needs the same number of comma-separated fields") from None
    if frame.shape[0] == 0:
        raise ValueError(f"{base}: the CSV has a header but no data rows")
    return frame


def _is_number(text):
    try:
        float(text)
    except ValueError:
        return False
    return True


def _read_npy(path):
    base = os.path.basename(path)
    try:
        a = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise ValueError(f"{base}: cannot read as a .npy array ({e}); save it with numpy.save "
                         "(object arrays are not accepted)") from None
    return a, None


def _read_npz(path):
    base = os.path.basename(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, KeyError) as e:
        raise ValueError(f"{base}: cannot read as a .npz archive ({e}); save it with "
                         "numpy.savez(path, x=...)") from None
    for key in ("x", "X"):
        if key in arrays:
            x = arrays[key]
            break
    else:
        if len(arrays) != 1:
            raise ValueError(f"{base}: holds arrays {sorted(arrays)}; name the data array 'x' "
                             "(numpy.savez(path, x=..., y=...))")
        x = next(iter(arrays.values()))
    labels = next((arrays[k] for k in ("y", "labels", "targets") if k in arrays), None)
    return x, labels


def _read_pt(path):
    base = os.path.basename(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        raise ValueError(f"{base}: cannot load as a tensor file with weights_only=True "
                         f"({type(e).__name__}); save a tensor or a dict of tensors with "
                         "torch.save") from None
    labels = None
    if isinstance(obj, dict):
        if "x" not in obj:
            raise ValueError(f"{base}: a dict without key 'x' (keys: {sorted(map(str, obj))}); "
                             "save torch.save({'x': data, 'y': labels}, path)")
        labels = next((obj[k] for k in ("y", "labels", "targets") if k in obj), None)
        obj = obj["x"]
    if not isinstance(obj, torch.Tensor):
        raise ValueError(f"{base}: holds a {type(obj).__name__}, not a tensor; save a tensor (N, D)")
    return obj, labels


def read_idx(path):
    """Read one IDX file (raw or ``.gz``) with torchvision's reader.

    :param str path: the file.
    :returns: the tensor stored in it, with its stored dtype and shape (1 to 3 dimensions).
    :raises ValueError: when the file is not a valid IDX file.
    """
    from torchvision.datasets.mnist import read_sn3_pascalvincent_tensor

    path = os.fspath(path)
    base = os.path.basename(path)
    tmp = None
    try:
        if path.lower().endswith(".gz"):
            try:
                with gzip.open(path, "rb") as f:
                    payload = f.read()
            except (OSError, EOFError) as e:
                raise ValueError(f"{base}: cannot decompress ({e}); the file is not valid gzip") from None
            fd, tmp = tempfile.mkstemp(suffix="-idx")
            with os.fdopen(fd, "wb") as f:
                f.write(payload)
            target = tmp
        else:
            target = path
        try:
            return read_sn3_pascalvincent_tensor(target, strict=True).clone()
        except (AssertionError, RuntimeError, ValueError, KeyError, IndexError, TypeError):
            raise ValueError(f"{base}: not a valid IDX file (bad header or size); IDX files start "
                             "with bytes 0x00 0x00, a type code and the number of dimensions, "
                             "then one 4-byte size per dimension") from None
    finally:
        if tmp is not None:
            os.remove(tmp)


def _labels_path(images_path):
    folder, base = os.path.split(images_path)
    if "images-idx3" not in base:
        return None
    for cand in (base.replace("images-idx3", "labels-idx1"),):
        for name in (cand, cand[:-3] if cand.endswith(".gz") else cand + ".gz"):
            p = os.path.join(folder, name)
            if os.path.isfile(p):
                return p
    return None


def _load_idx_with_labels(path):
    x = read_idx(path)
    labels = None
    lp = _labels_path(path)
    if lp is not None and x.dim() == 3:
        labels = read_idx(lp)
        if labels.dim() != 1 or labels.shape[0] != x.shape[0]:
            raise ValueError(f"{os.path.basename(lp)}: expected {x.shape[0]} labels for "
                             f"{os.path.basename(path)}, got shape {tuple(labels.shape)}")
    return x, labels


def _find_split(folder, prefix):
    """Path of ``{prefix}-images-idx3-ubyte[.gz]`` in ``folder`` or None."""
    for name in (f"{prefix}-images-idx3-ubyte", f"{prefix}-images-idx3-ubyte.gz"):
        p = os.path.join(folder, name)
        if os.path.isfile(p):
            return p
    return None


def _pick_split(folders, train):
    """(images path, split name) for the split asked for, or (None, None)."""
    prefixes = {True: ["train"], False: ["t10k"], None: ["train", "t10k"]}[train]
    for prefix in prefixes:
        for folder in folders:
            p = _find_split(folder, prefix)
            if p is not None:
                if train is None and prefix == "t10k":
                    log.warning("no training files in %s; using the test split (t10k)", folder)
                return p, prefix
    return None, None


def _load_idx_folder(folder, train):
    path, split = _pick_split([folder], train)
    if path is None:
        want = {True: "train", False: "t10k", None: "train or t10k"}[train]
        raise FileNotFoundError(
            f"{folder}: no {want}-images-idx3-ubyte[.gz] file; a data folder must hold MNIST-style "
            "IDX files (pass train=False for the t10k test files)")
    x, labels = _load_idx_with_labels(path)
    return x, labels, f"{os.path.basename(os.path.normpath(folder))} ({split})"


def default_root():
    """The default folder of named datasets: ``$PYRO_VAE_DATA_DIR`` or ``~/.cache/pyro-vae``."""
    return os.path.expanduser(os.environ.get("PYRO_VAE_DATA_DIR") or "~/.cache/pyro-vae")


def _load_torchvision(key, root, download, train):
    import torchvision.datasets as tvd

    cls_name = _TORCHVISION_NAMES[key]
    root = os.path.expanduser(os.fspath(root)) if root is not None else default_root()
    # IDX files directly in root, or already in torchvision's layout root/<Class>/raw
    folders = [root, os.path.join(root, cls_name, "raw")]
    path, split = _pick_split(folders, train)
    if path is not None:
        x, labels = _load_idx_with_labels(path)
        return x, labels, f"{key} ({split})"
    want_train = train is not False
    split = "train" if want_train else "t10k"
    cls = getattr(tvd, cls_name)
    try:
        ds = cls(root, train=want_train, download=bool(download))
    except RuntimeError as e:
        if download:
            raise ValueError(f"{key}: download or extraction failed ({e})") from None
        raise FileNotFoundError(
            f"{key}: the {split} files are not under {root}; pass download=True (CLI: --download) "
            "to fetch them, or root=<folder> holding the IDX files") from None
    return ds.data, ds.targets, f"{key} ({split})"


# ---------------------------------------------------------------------------------------
# MNIST-10k protocol
# ---------------------------------------------------------------------------------------
def _mnist_dir_candidates():
    here = os.path.dirname(os.path.abspath(__file__))
    env = os.environ.get("PYRO_VAE_MNIST_DIR")
    cands = [env] if env else []
    cands += [os.path.join(os.getcwd(), "..", "shared", "data", "mnist"),
              "/work/shared/data/mnist",
              os.path.join(here, "..", "..", "shared", "data", "mnist")]
    return [os.path.normpath(c) for c in cands]


def find_mnist_dir(root=None):
    """The folder holding the MNIST test files ``t10k-images-idx3-ubyte[.gz]``.

    With ``root=None`` the first existing of ``$PYRO_VAE_MNIST_DIR``, ``../shared/data/mnist``
    (relative to the working directory), ``/work/shared/data/mnist`` and
    ``../../shared/data/mnist`` (relative to this package's folder).

    :raises FileNotFoundError: when no candidate holds the files.
    """
    cands = [os.path.expanduser(os.fspath(root))] if root is not None else _mnist_dir_candidates()
    for c in cands:
        if _find_split(c, "t10k") is not None:
            return c
    raise FileNotFoundError(
        "MNIST test files (t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]) not found in "
        + ", ".join(cands) + "; set PYRO_VAE_MNIST_DIR or pass root=<folder>, or fetch them with "
        "load_data('mnist', train=False, download=True) (CLI: --data mnist --download)")


def load_mnist_10k(root=None):
    """The MNIST-10k protocol on the 10,000 real MNIST test digits.

    The digits are read from the IDX files in ``root`` (see :func:`find_mnist_dir` for the
    default), scaled to [0, 1], and split in file order:

    * training: the first 9,000 digits, grey levels in [0, 1], meant for dynamic binarization
      (a fresh :func:`binarize` draw per minibatch);
    * held-out: the last 1,000 digits, binarized once with
      ``torch.bernoulli(x, generator=torch.Generator().manual_seed(1234))``, so every call returns
      the same binary images.

    :param str root: folder of ``t10k-images-idx3-ubyte[.gz]`` and ``t10k-labels-idx1-ubyte[.gz]``.
    :returns: ``(train_x, test_x, train_labels, test_labels)``: float32 tensors ``(9000, 784)``
        and ``(1000, 784)``, long tensors ``(9000,)`` and ``(1000,)``.
    :raises FileNotFoundError: when the files are not found.
    """
    folder = find_mnist_dir(root)
    images = _find_split(folder, "t10k")
    x, labels = _load_idx_with_labels(images)
    if x.shape != (10000, 28, 28) or labels is None:
        raise ValueError(f"{folder}: expected the 10,000 MNIST test digits with their label file, "
                         f"got images {tuple(x.shape)} and {'no' if labels is None else 'a'} label file")
    x = x.reshape(10000, 784).to(torch.float32) / 255.0
    labels = labels.long()
    test_x = torch.bernoulli(x[9000:], generator=torch.Generator().manual_seed(MNIST_10K_TEST_SEED))
    return x[:9000].contiguous(), test_x, labels[:9000].contiguous(), labels[9000:].contiguous()


# ---------------------------------------------------------------------------------------
# binarization and splits
# ---------------------------------------------------------------------------------------
def binarize(x, seed=None, generator=None):
    """Draw binary data with ``P(1) = x`` (dynamic binarization).

    ``binarize(x, seed=s)`` equals ``torch.bernoulli(x, generator=torch.Generator().manual_seed(s))``
    for CPU tensors. For per-minibatch draws during training, pass one ``generator`` that lives
    for the whole run (see the module docstring).

    :param torch.Tensor x: probabilities in [0, 1], any shape.
    :param int seed: seed of a fresh generator on ``x``'s device.
    :param torch.Generator generator: generator to draw from (on ``x``'s device); by default
        (neither ``seed`` nor ``generator``) torch's global generator is used.
    :returns: a tensor of ``x``'s shape, dtype (float32 if ``x`` is not floating) and device,
        holding 0.0 and 1.0.
    :raises ValueError: when a value lies outside [0, 1] or both ``seed`` and ``generator`` are given.
    """
    x = _as_float_tensor(x, "binarize")
    if seed is not None and generator is not None:
        raise ValueError("binarize: pass seed or generator, not both")
    if not ((x >= 0) & (x <= 1)).all():
        raise ValueError(f"binarize: values must be probabilities in [0, 1], got range "
                         f"[{float(x.min())}, {float(x.max())}] (NaN counts as outside); scale the "
                         "data first, e.g. load_data(..., scale='auto') divides pixels by 255")
    if seed is not None:
        generator = torch.Generator(device=x.device).manual_seed(int(seed))
    return torch.bernoulli(x, generator=generator)


def threshold(x, level=0.5):
    """Static binarization: 1 where ``x > level``, else 0.

    :param torch.Tensor x: data, any shape.
    :param float level: the threshold.
    :returns: a tensor of ``x``'s shape and (floating) dtype holding 0.0 and 1.0.
    """
    x = _as_float_tensor(x, "threshold")
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not math.isfinite(level):
        raise ValueError(f"threshold: level must be a finite number, got {level!r}")
    return (x > level).to(x.dtype)


def _as_float_tensor(x, who):
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{who}: expected a tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        x = x.to(torch.float32)
    return x


def train_test_split(x, test_fraction=0.1, seed=0, labels=None):
    """Split rows into a training and a held-out part with a seeded random permutation.

    The permutation is ``torch.randperm(N, generator=torch.Generator().manual_seed(seed))``;
    its first ``round(N * test_fraction)`` (at least 1) entries are the held-out rows, the rest
    the training rows, each in permutation order.

    :param torch.Tensor x: data ``(N, ...)``.
    :param float test_fraction: share of rows held out, in (0, 1).
    :param int seed: seed of the permutation.
    :param torch.Tensor labels: optional ``(N,)`` labels split the same way.
    :returns: ``(train_x, test_x)``, or ``(train_x, test_x, train_labels, test_labels)`` when
        ``labels`` is given.
    :raises ValueError: for a fraction outside (0, 1), fewer than 2 rows, or mismatched labels.
    """
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"train_test_split: expected a tensor, got {type(x).__name__}")
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)) \
            or not 0 < test_fraction < 1:
        raise ValueError(f"train_test_split: test_fraction must be between 0 and 1 (exclusive), "
                         f"got {test_fraction!r}; e.g. 0.1 holds out 10% of the rows")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"train_test_split: seed must be an integer, got {seed!r}")
    n = x.shape[0] if x.dim() > 0 else 0
    if n < 2:
        raise ValueError(f"train_test_split: need at least 2 rows to hold some out, got {n}")
    n_test = min(max(1, int(round(n * test_fraction))), n - 1)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    test_idx, train_idx = perm[:n_test].to(x.device), perm[n_test:].to(x.device)
    if labels is None:
        return x[train_idx], x[test_idx]
    if isinstance(labels, np.ndarray):
        labels = torch.from_numpy(labels)
    labels = torch.as_tensor(labels)
    if labels.dim() != 1 or labels.shape[0] != n:
        raise ValueError(f"train_test_split: labels must have shape ({n},), got {tuple(labels.shape)}")
    l_train, l_test = train_idx.to(labels.device), test_idx.to(labels.device)
    return x[train_idx], x[test_idx], labels[l_train], labels[l_test]


# ---------------------------------------------------------------------------------------
# synthetic Gaussian mixtures
# ---------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class MixtureData:
    """Samples of a Gaussian mixture with its exact parameters.

    The parameters are float64; ``x`` has the dtype asked of :func:`make_gaussian_mixture`
    (float32 by default). Everything is on the CPU.

    :ivar torch.Tensor x: samples ``(N, d)``.
    :ivar torch.Tensor labels: component of each sample ``(N,)``, long.
    :ivar torch.Tensor weights: mixing weights ``(K,)``, float64, summing to 1.
    :ivar torch.Tensor means: component means ``(K, d)``, float64.
    :ivar torch.Tensor covariances: component covariances ``(K, d, d)``, float64.
    :ivar int seed: the seed the data were made with.
    """

    x: torch.Tensor
    labels: torch.Tensor
    weights: torch.Tensor
    means: torch.Tensor
    covariances: torch.Tensor
    seed: int = 0

    @property
    def n_components(self):
        return self.weights.shape[0]

    @property
    def dim(self):
        return self.means.shape[1]

    def __len__(self):
        return self.x.shape[0]

    def distribution(self, device=None):
        """The generating mixture as a ``torch.distributions.MixtureSameFamily`` (float64)."""
        w, m, c = (t.to(device) if device is not None else t
                   for t in (self.weights, self.means, self.covariances))
        return torch.distributions.MixtureSameFamily(
            torch.distributions.Categorical(probs=w),
            torch.distributions.MultivariateNormal(m, covariance_matrix=c))

    def log_prob(self, x):
        """Exact log density of the generating mixture at each row.

        :param torch.Tensor x: points ``(M, d)`` (tensor or array, any device).
        :returns: float64 tensor ``(M,)`` on ``x``'s device.
        """
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(x)
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"log_prob: expected a tensor (M, {self.dim}), got {type(x).__name__}")
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"log_prob: expected points of shape (M, {self.dim}), got {tuple(x.shape)}")
        return self.distribution(x.device).log_prob(x.to(torch.float64))

    def sample(self, n_samples, seed):
        """Fresh samples from the same mixture.

        :param int n_samples: number of points.
        :param int seed: seed of the draw.
        :returns: ``(x, labels)``: ``(n_samples, d)`` in ``self.x``'s dtype and ``(n_samples,)``.
        """
        _check_int(n_samples, "n_samples", 1)
        gen = torch.Generator().manual_seed(int(seed))
        x, labels = _draw(self.weights, self.means, self.covariances, n_samples, gen)
        return x.to(self.x.dtype), labels

    def split(self, test_fraction=0.1, seed=0):
        """Holdout split of ``x`` and ``labels`` (see :func:`train_test_split`).

        :returns: ``(train_x, test_x, train_labels, test_labels)``.
        """
        return train_test_split(self.x, test_fraction=test_fraction, seed=seed, labels=self.labels)


_COVARIANCES = ("random", "full", "diag", "spherical", "identity")


def make_gaussian_mixture(n_samples=2000, n_components=3, dim=2, separation=4.0, seed=0,
                          covariance="random", weights="uniform", dtype=torch.float32):
    """Draw data from a random Gaussian mixture with well separated components.

    All randomness comes from one ``torch.Generator`` seeded with ``seed``, so the result is a
    function of the arguments.

    * **Covariances** have standard deviations between 0.5 and 1 along every principal axis:
      ``"random"`` (alias ``"full"``): ``Q diag(v) Qᵀ`` with a random rotation ``Q`` and
      variances ``v ~ Uniform(0.25, 1)``; ``"diag"``: ``diag(v)``; ``"spherical"``: ``v I`` with
      one ``v ~ Uniform(0.25, 1)`` per component; ``"identity"``: ``I``.
    * **Means** are placed one at a time, uniformly in a centred cube, rejecting a candidate
      closer than ``separation`` to an earlier mean (the cube grows when candidates keep being
      rejected). So every pair of means is at least ``separation`` apart: at least
      ``separation`` standard deviations of any component in any direction, and roughly that
      far for the closest pairs.
    * **Weights**: ``"uniform"`` (``1/K`` each), ``"dirichlet"`` (a draw from Dirichlet(5, ..., 5),
      moderately unequal), or a sequence of ``K`` non-negative numbers (normalised to sum to 1).
    * **Labels** are drawn from the weights, then ``x = mean[label] + L[label] @ eps`` with
      ``L`` the Cholesky factor of the covariance and ``eps ~ N(0, I)``.

    :param int n_samples: number of points N.
    :param int n_components: number of components K.
    :param int dim: dimension d.
    :param float separation: minimum distance between means, in units of the largest
        standard deviation (which is at most 1).
    :param int seed: seed.
    :param str covariance: ``"random"``, ``"full"``, ``"diag"``, ``"spherical"`` or ``"identity"``.
    :param weights: ``"uniform"``, ``"dirichlet"`` or ``K`` numbers.
    :param torch.dtype dtype: dtype of ``x`` (parameters are always float64).
    :returns: a :class:`MixtureData`.
    """
    _check_int(n_samples, "n_samples", 1)
    _check_int(n_components, "n_components", 1)
    _check_int(dim, "dim", 1)
    _check_int(seed, "seed", None)
    if isinstance(separation, bool) or not isinstance(separation, (int, float)) \
            or not math.isfinite(separation) or separation < 0:
        raise ValueError(f"make_gaussian_mixture: separation must be a number >= 0, got {separation!r}")
    if covariance not in _COVARIANCES:
        raise ValueError(f"make_gaussian_mixture: covariance must be one of {', '.join(_COVARIANCES)}, "
                         f"got {covariance!r}")
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"make_gaussian_mixture: dtype must be a floating torch dtype, got {dtype!r}")
    K, d = int(n_components), int(dim)
    gen = torch.Generator().manual_seed(int(seed))
    f64 = torch.float64

    # covariances
    if covariance == "identity":
        covs = torch.eye(d, dtype=f64).expand(K, d, d).clone()
    elif covariance == "spherical":
        v = 0.25 + 0.75 * torch.rand(K, generator=gen, dtype=f64)
        covs = v[:, None, None] * torch.eye(d, dtype=f64)
    else:
        v = 0.25 + 0.75 * torch.rand(K, d, generator=gen, dtype=f64)
        if covariance == "diag":
            covs = torch.diag_embed(v)
        else:
            q = _random_rotation(K, d, gen)
            covs = q @ torch.diag_embed(v) @ q.transpose(-1, -2)
            covs = 0.5 * (covs + covs.transpose(-1, -2))

    means = _place_means(K, d, float(separation), gen)

    # weights
    if isinstance(weights, str):
        if weights == "uniform":
            w = torch.full((K,), 1.0 / K, dtype=f64)
        elif weights == "dirichlet":
            # Dirichlet(5, ..., 5) as normalised Gamma(5, 1) draws from the seeded generator
            g = _gamma(torch.full((K,), 5.0, dtype=f64), gen)
            w = g / g.sum()
        else:
            raise ValueError(f"make_gaussian_mixture: weights must be 'uniform', 'dirichlet' or "
                             f"{K} numbers, got {weights!r}")
    else:
        w = torch.as_tensor(np.asarray(weights, dtype=np.float64))
        if w.shape != (K,) or not torch.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"make_gaussian_mixture: weights must be {K} non-negative numbers "
                             f"with a positive sum, got {weights!r}")
        w = w / w.sum()

    x, labels = _draw(w, means, covs, int(n_samples), gen)
    return MixtureData(x.to(dtype), labels, w, means, covs, int(seed))


def _check_int(value, name, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")


def _random_rotation(K, d, gen):
    """K random orthogonal matrices (d, d), Haar-distributed (QR with a sign fix)."""
    a = torch.randn(K, d, d, generator=gen, dtype=torch.float64)
    q, r = torch.linalg.qr(a)
    signs = torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))
    signs = torch.where(signs == 0, torch.ones_like(signs), signs)
    return q * signs[:, None, :]


def _place_means(K, d, separation, gen):
    """K means, pairwise at least ``separation`` apart, centred at the origin."""
    means = torch.zeros(K, d, dtype=torch.float64)
    # start with a cube just big enough to hold K points of that spacing in d dimensions
    side = max(separation, 1e-12) * max(1.0, K ** (1.0 / d))
    for k in range(K):
        tries = 0
        while True:
            cand = (torch.rand(d, generator=gen, dtype=torch.float64) - 0.5) * side
            if k == 0 or torch.linalg.vector_norm(means[:k] - cand, dim=1).min() >= separation:
                means[k] = cand
                break
            tries += 1
            if tries % 100 == 0:
                side *= 1.1
    return means - means.mean(dim=0)


def _gamma(alpha, gen):
    """Gamma(alpha, 1) draws for alpha >= 1 from ``gen`` (Marsaglia and Tsang)."""
    out = torch.empty_like(alpha)
    for i, a in enumerate(alpha.tolist()):
        dd = a - 1.0 / 3.0
        c = 1.0 / math.sqrt(9.0 * dd)
        while True:
            z = float(torch.randn((), generator=gen, dtype=torch.float64))
            v = (1.0 + c * z) ** 3
            if v <= 0:
                continue
            u = float(torch.rand((), generator=gen, dtype=torch.float64))
            if math.log(u) < 0.5 * z * z + dd - dd * v + dd * math.log(v):
                out[i] = dd * v
                break
    return out


def _draw(weights, means, covs, n, gen):
    labels = torch.multinomial(weights, n, replacement=True, generator=gen)
    chol = torch.linalg.cholesky(covs)
    eps = torch.randn(n, means.shape[1], generator=gen, dtype=torch.float64)
    x = means[labels] + torch.einsum("nij,nj->ni", chol[labels], eps)
    return x, labels
