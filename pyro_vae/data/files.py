"""Array files: ``.npy``, ``.npz`` and ``.pt``, read without trusting what they claim.

* A ``.npy`` header (and the header of each array in a ``.npz`` archive) states a shape and a
  dtype; the bytes that shape needs are compared with the bytes the file holds *before* anything
  is allocated, so a header claiming a huge shape is refused instead of exhausting memory.
* Arrays stored in non-native byte order (big-endian ``.npy`` files on a little-endian machine)
  are converted to native order.
* ``.pt`` files are loaded with ``weights_only=True``: no pickled code runs.
* A file the user may not read gets a :class:`PermissionError` that says so
  (:func:`check_readable`).
"""

import math
import os
import zipfile

import numpy as np
import torch

__all__ = ["check_readable", "native_byte_order", "read_npy", "read_npz", "read_pt"]


def check_readable(path):
    """Refuse a file this process may not read, with advice.

    :param str path: a file.
    :raises PermissionError: the operating system refuses to open it.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb"):
            pass
    except PermissionError:
        raise PermissionError(f"cannot read {path}: permission denied; check the file's permissions "
                              f"(e.g. chmod u+r {path})") from None


def native_byte_order(a):
    """``a`` in the machine's byte order (a copy only when it was stored in the other one).

    :param numpy.ndarray a: any array.
    :returns: :class:`numpy.ndarray` with the same values and a native dtype.
    """
    if a.dtype.fields is None and not a.dtype.isnative:
        return a.astype(a.dtype.newbyteorder("="))
    return a


def _npy_header(f, base):
    """``(shape, dtype)`` from the header of a ``.npy`` stream positioned at its start."""
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        else:  # 2.0 and 3.0 differ only in the length field and the text encoding
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    except (ValueError, EOFError, SyntaxError, TypeError, OSError) as e:
        raise ValueError(f"{base}: cannot read as a .npy array ({e}); save it with numpy.save") from None
    if dtype.hasobject:
        raise ValueError(f"{base}: holds Python objects (dtype {dtype}); object arrays are not "
                         "accepted: save a numeric array with numpy.save")
    return tuple(shape), dtype


def _check_payload(base, shape, dtype, available):
    """The bytes the header's shape needs must be the bytes there are."""
    needed = math.prod(shape) * dtype.itemsize
    if needed != available:
        raise ValueError(f"{base}: the .npy header claims shape {shape} of {dtype} ({needed} bytes) but "
                         f"the file holds {available} bytes of data; the file is truncated, damaged or "
                         "not written by numpy.save: save the array again")


def read_npy(path):
    """Read a ``.npy`` file after checking its header against its size.

    :param str path: the file.
    :returns: ``(array, None)``: the array in native byte order, and no labels.
    :raises ValueError: not a ``.npy`` file, object dtype, or a header whose shape does not match
        the file's size.
    """
    path = os.fspath(path)
    base = os.path.basename(path)
    check_readable(path)
    with open(path, "rb") as f:
        shape, dtype = _npy_header(f, base)
        offset = f.tell()
    _check_payload(base, shape, dtype, os.path.getsize(path) - offset)
    try:
        a = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise ValueError(f"{base}: cannot read as a .npy array ({e}); save it with numpy.save "
                         "(object arrays are not accepted)") from None
    return native_byte_order(a), None


def read_npz(path):
    """Read a ``.npz`` archive: the data array and, when present, labels.

    The data array is ``x`` or ``X``, or the only array; labels are ``y``, ``labels`` or
    ``targets``. Every array's header is checked against the size the archive declares for it
    before the arrays are read.

    :param str path: the file.
    :returns: ``(x, labels or None)`` as numpy arrays in native byte order.
    :raises ValueError: not a ``.npz`` archive, a damaged member, or an ambiguous data array.
    """
    path = os.fspath(path)
    base = os.path.basename(path)
    check_readable(path)
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if info.filename.endswith(".npy"):
                    with zf.open(info) as f:
                        shape, dtype = _npy_header(f, f"{base} ({info.filename})")
                        offset = f.tell()
                    _check_payload(f"{base} ({info.filename})", shape, dtype, info.file_size - offset)
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: native_byte_order(z[k]) for k in z.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
        if isinstance(e, ValueError) and str(e).startswith(base):
            raise
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


def read_pt(path):
    """Read a ``.pt`` file with ``weights_only=True``: a tensor, or a dict with ``"x"``.

    :param str path: the file.
    :returns: ``(x, labels or None)``; labels from the dict's ``"y"``, ``"labels"`` or ``"targets"``.
    :raises ValueError: anything but a tensor or a dict of tensors with key ``"x"``.
    """
    path = os.fspath(path)
    base = os.path.basename(path)
    check_readable(path)
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
