"""Atomic file writes and safe checkpoint loading.

Every file the package writes goes through these helpers: the content is written to a
temporary file in the destination folder and moved into place with :func:`os.replace`, so a
reader never sees a half-written file, even if the process dies mid-write.
"""

import contextlib
import json
import os
import tempfile

import torch

__all__ = [
    "atomic_path",
    "write_text",
    "write_json",
    "write_csv",
    "save_figure",
    "save_checkpoint",
    "load_checkpoint",
]


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path next to ``path``; on success move it onto ``path``.

    On an exception the temporary file is removed and ``path`` is left untouched.

    :param str path: destination file.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    base = os.path.basename(path)
    # keep the suffix so libraries that infer a format from the name still work
    suffix = os.path.splitext(base)[1]
    fd, tmp = tempfile.mkstemp(prefix="." + base + ".", suffix=".tmp" + suffix, dir=folder)
    os.close(fd)
    try:
        yield tmp
        # mkstemp makes the file private (0600); give it the mode a plain open() would
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def _umask():
    """The process's file-creation mask (reading it means setting it, so it is set back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text(path, text):
    """Write a string to ``path`` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)


def write_json(path, obj):
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(obj):
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if hasattr(obj, "tolist"):  # numpy arrays and scalars
        return obj.tolist()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")


def write_csv(path, frame, index=False):
    """Write a pandas DataFrame to ``path`` as CSV, atomically."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=index)


def save_figure(fig, path, dpi=100):
    """Save a matplotlib figure as PNG, atomically, and close it."""
    import matplotlib.pyplot as plt

    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, format="png", bbox_inches="tight")
    finally:
        plt.close(fig)


def save_checkpoint(path, state):
    """Save a checkpoint (a dict of tensors, numbers, strings, lists and dicts) atomically.

    Only plain containers and tensors are stored so that :func:`load_checkpoint` can read the
    file with ``weights_only=True``.
    """
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path, map_location="cpu"):
    """Load a checkpoint written by :func:`save_checkpoint`.

    The file is read with ``torch.load(..., weights_only=True)``: a file that would need to
    unpickle arbitrary Python objects is refused with a :class:`ValueError`.

    :param str path: checkpoint file.
    :param map_location: device for the loaded tensors.
    :returns: the saved dict.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises UnpicklingError or RuntimeError for refused content
        raise ValueError(
            f"refusing to load checkpoint {path}: it is not a plain weights file "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). "
            "Only checkpoints written by pyro-vae can be loaded."
        ) from None
