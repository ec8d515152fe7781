"""Loaders: anything -> float tensors ``(N, D)`` with :func:`load_data`.

Sources: tensors, numpy arrays, pandas DataFrames, ``.csv``, ``.npy``, ``.npz``, ``.pt`` and
IDX files (raw or ``.gz``), folders of MNIST-style IDX files, and the torchvision datasets
``"mnist"``, ``"fashion-mnist"`` and ``"kmnist"`` (downloaded only with ``download=True``).
Images are flattened to ``(N, H * W)`` and pixel values scaled to [0, 1]. Values are checked
where the data become tensors (:func:`pyro_vae.checks.as_data_tensor`): NaN and infinities are
refused with their rows, and values too large for the requested dtype (``1e300`` in float32)
are refused as too large rather than turned into infinities.
"""

import dataclasses
import math
import os
from typing import Optional

import numpy as np
import torch

from pyro_vae.checks import as_data_tensor
from pyro_vae.data.files import native_byte_order, read_npy, read_npz, read_pt
from pyro_vae.data.idx import find_idx_images, is_idx_name, load_idx_folder, load_idx_images
from pyro_vae.data.mnist import load_mnist_10k
from pyro_vae.data.tables import column_list, describe_rows, frame_to_tensor, read_csv

__all__ = ["Data", "load_data", "default_root", "DATASET_NAMES", "FILE_TYPES", "TORCHVISION_NAMES"]

#: dataset names :func:`load_data` understands besides files and folders
DATASET_NAMES = ("mnist", "fashion-mnist", "fashionmnist", "kmnist", "mnist10k")

#: file types :func:`load_data` reads
FILE_TYPES = (".csv", ".npy", ".npz", ".pt", "IDX (e.g. t10k-images-idx3-ubyte or .idx, raw or .gz)")

#: torchvision dataset class of each name
TORCHVISION_NAMES = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST",
                     "fashionmnist": "FashionMNIST", "kmnist": "KMNIST"}


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


def load_data(source, *, root=None, download=False, train=None, columns=None, label_column=None,
              dtype=torch.float32, scale="auto"):
    """Load data from almost anything into a float tensor ``(N, D)``.

    ``source`` may be

    * a ``torch.Tensor`` or numpy array ``(N, D)`` (kept on its device; arrays in non-native
      byte order are converted);
    * a pandas DataFrame (numeric columns);
    * a path to a ``.csv`` file (read with pandas; a header row is detected: if every cell of the
      first line is a number, the file has no header and columns are numbered ``0, 1, ...``;
      layouts pandas would misread are refused, see :mod:`pyro_vae.data.tables`),
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
    * ``"mnist10k"``: the MNIST-10k protocol (see :func:`pyro_vae.data.load_mnist_10k`): the
      9,000 grey-level training digits, or with ``train=False`` the 1,000 held-out digits
      binarized once.

    Images ``(N, H, W)`` are flattened to ``(N, H * W)``; all other inputs must already be 2-D.

    :param source: the data, a path, or a dataset name (see above).
    :param str root: folder of a named dataset (default :func:`default_root`); for
        ``"mnist10k"`` the folder of the MNIST test files (default: see
        :func:`pyro_vae.data.find_mnist_dir`).
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
    :raises PermissionError: a file or folder this process may not read.
    :raises ValueError: unreadable or invalid data (the message says what to change).
    """
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating torch dtype such as torch.float32, got {dtype!r}")
    _check_scale(scale)
    if train is not None and not isinstance(train, bool):
        raise TypeError(f"train must be True, False or None, got {train!r}")

    image = False
    label_names = None
    if isinstance(source, (torch.Tensor, np.ndarray)):
        name = f"{type(source).__name__} {tuple(source.shape)}"
        x, labels = _from_array(source, columns, label_column, name)
    elif _is_dataframe(source):
        name = "DataFrame"
        x, labels, label_names = frame_to_tensor(source, columns, label_column, name)
    elif isinstance(source, (str, os.PathLike)):
        text = os.fspath(source)
        key = text.strip().lower()
        if key == "mnist10k" and not os.path.exists(text):
            train_x, test_x, train_y, test_y = load_mnist_10k(root)
            if train is False:
                return Data(test_x.to(dtype), test_y, (28, 28), "mnist10k (held-out, binarized)")
            return Data(train_x.to(dtype), train_y, (28, 28), "mnist10k (train)")
        if key in TORCHVISION_NAMES and not os.path.exists(text):
            x, labels, name = _load_torchvision(key, root, download, train)
            image = True
        else:
            x, labels, label_names, name, image = _load_path(text, train, columns, label_column)
    else:
        raise TypeError(f"source must be a tensor, numpy array, pandas DataFrame, path or dataset "
                        f"name, got {type(source).__name__}")

    shape = None
    if image:
        if x.dim() != 3:
            raise ValueError(f"{name}: expected images (N, H, W), got shape {tuple(x.shape)}")
        shape = tuple(int(s) for s in x.shape[1:])
        x = x.reshape(x.shape[0], -1)

    x = _finish(x, name, dtype, scale, image)
    if labels is not None:
        if isinstance(labels, np.ndarray):
            labels = native_byte_order(labels)
        labels = torch.as_tensor(labels).reshape(-1).to(device=x.device, dtype=torch.long)
        if labels.shape[0] != x.shape[0]:
            raise ValueError(f"{name}: {labels.shape[0]} labels for {x.shape[0]} rows; "
                             "the label file or column must have one entry per row")
    return Data(x, labels, shape, name, label_names)


def default_root():
    """The folder of named (torchvision) datasets when no ``root`` is given:
    ``$PYRO_VAE_DATA_DIR``, else ``data`` under the working directory (as an absolute path)."""
    return os.path.abspath(os.path.expanduser(os.environ.get("PYRO_VAE_DATA_DIR") or "data"))


# ---------------------------------------------------------------------------------------
# files and folders
# ---------------------------------------------------------------------------------------
def _file_kind(path):
    base = os.path.basename(path)
    lower = base.lower()
    if is_idx_name(lower):
        return "idx"
    if lower.endswith(".gz"):
        raise ValueError(f"{base}: of gzipped files only IDX files are read (names like "
                         "t10k-images-idx3-ubyte.gz); accepted types: " + ", ".join(FILE_TYPES))
    ext = os.path.splitext(lower)[1]
    if ext in (".csv", ".npy", ".npz", ".pt"):
        return ext[1:]
    raise ValueError(f"{base}: unknown file type {ext or '(no extension)'!r}; accepted types: "
                     + ", ".join(FILE_TYPES))


def _load_path(text, train, columns, label_column):
    """A file or folder -> (x, labels, label_names, name, image)."""
    if not os.path.exists(text):
        raise FileNotFoundError(
            f"no file or folder {text!r}; give a path to a {', '.join(FILE_TYPES)} file, "
            f"a folder of IDX files, or one of the names {', '.join(DATASET_NAMES)}")
    name = os.path.basename(os.path.normpath(text))
    if os.path.isdir(text):
        x, labels, name = load_idx_folder(text, train)
        return x, labels, None, name, True
    kind = _file_kind(text)
    if kind == "idx":
        x, labels = load_idx_images(text)
        if x.dim() == 3:
            return x, labels, None, name, True
        x, _ = _from_array(x, columns, label_column, name)
        return x, labels, None, name, False
    if kind == "csv":
        x, labels, label_names = frame_to_tensor(read_csv(text), columns, label_column, name)
        return x, labels, label_names, name, False
    raw, labels = {"npy": read_npy, "npz": read_npz, "pt": read_pt}[kind](text)
    x, array_labels = _from_array(raw, columns, label_column, name)
    return x, array_labels if array_labels is not None else labels, None, name, False


def _load_torchvision(key, root, download, train):
    import torchvision.datasets as tvd

    cls_name = TORCHVISION_NAMES[key]
    root = os.path.abspath(os.path.expanduser(os.fspath(root))) if root is not None else default_root()
    # IDX files directly in root, or already in torchvision's layout root/<Class>/raw
    folders = [root, os.path.join(root, cls_name, "raw")]
    path, split = find_idx_images(folders, train)
    if path is not None:
        x, labels = load_idx_images(path)
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
            "to fetch them, or root=<folder> holding the IDX files (or set PYRO_VAE_DATA_DIR)") from None
    return ds.data, ds.targets, f"{key} ({split})"


# ---------------------------------------------------------------------------------------
# arrays and tensors
# ---------------------------------------------------------------------------------------
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
        t = torch.from_numpy(np.ascontiguousarray(native_byte_order(a)))
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
        keep = [_position(c, n_cols, name, "columns") for c in column_list(columns)]
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
                         f"{describe_rows(rows)} (0-based); remove or fill them before loading")
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
    if scale is not None and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name}: scale={scale!r} overflowed: the values are too large to scale in "
                         f"{x.dtype}; rescale the data first or pass scale=None")
    # refuses values too large for dtype by name (1e300 in float32)
    return as_data_tensor(x, name, dim=2, dtype=dtype)
