"""Atomic file writes, safe checkpoint loading and run-folder locks.

Every file the package writes goes through these helpers: the content is written to a
temporary file in the destination folder and moved into place with :func:`os.replace`, so a
reader never sees a half-written file, even if the process dies mid-write. A process killed
mid-write leaves its hidden temporary file behind; :func:`remove_stale_temp_files` clears them,
and a writer that holds the folder's :class:`FolderLock` may call it safely.
"""

import contextlib
import json
import os
import re
import tempfile

import torch

__all__ = [
    "atomic_path",
    "remove_stale_temp_files",
    "is_temp_file_name",
    "check_output_folder",
    "output_folder",
    "FolderLock",
    "FolderInUseError",
    "json_default",
    "write_text",
    "write_json",
    "write_csv",
    "save_figure",
    "save_checkpoint",
    "load_checkpoint",
]


#: the part of a temporary file's name that marks it as one of ours: ``.<name>.<random>.tmp<ext>``
_TEMP_TAG = ".tmp"
_TEMP_NAME = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp(\.[^.]*)?$")


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
    fd, tmp = tempfile.mkstemp(prefix="." + base + ".", suffix=_TEMP_TAG + suffix, dir=folder)
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


def is_temp_file_name(name):
    """Whether a file name is one :func:`atomic_path` gives its temporary files."""
    return bool(_TEMP_NAME.match(name))


def remove_stale_temp_files(folder):
    """Delete the temporary files that writes into ``folder`` left behind when killed.

    Only names of the form :func:`atomic_path` creates (``.<name>.<8 random characters>.tmp``,
    optionally followed by the destination's extension) are touched. Call it only while no
    other process writes into the folder (e.g. holding its :class:`FolderLock`).

    :param str folder: the folder.
    :returns: list of the paths removed.
    """
    removed = []
    if not os.path.isdir(folder):
        return removed
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if _TEMP_NAME.match(name) and os.path.isfile(path):
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
                removed.append(path)
    return removed


def check_output_folder(folder, what="output folder"):
    """Make sure ``folder`` can receive files, before any work is done for it.

    The folder is created if needed (with its parents).

    :param str folder: the folder.
    :param str what: how the folder is called in messages (e.g. ``"run folder"``).
    :returns: the folder (a ``str``).
    :raises NotADirectoryError: ``folder`` (or a parent) is an existing file.
    :raises PermissionError: the folder cannot be created or written into.
    """
    folder = os.fspath(folder)
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise NotADirectoryError(f"{what} {folder} is an existing file, not a folder; choose another "
                                 "folder")
    try:
        os.makedirs(folder, exist_ok=True)
    except (FileExistsError, NotADirectoryError):  # a parent is a file
        raise NotADirectoryError(f"{what} {folder} cannot be created: a part of its path is a file; "
                                 "choose another folder") from None
    except PermissionError:
        raise PermissionError(f"{what} {folder} cannot be created: permission denied; choose a folder you "
                              "can write to, or ask for write permission on its parent") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"{what} {folder} is not writable: permission denied; choose a folder you can "
                              f"write to, or make it writable (chmod u+w {folder})")
    return folder


@contextlib.contextmanager
def output_folder(folder, what="output folder"):
    """Prepare ``folder`` for a writer and hold its lock while the block runs.

    :func:`check_output_folder`, then the folder's :class:`FolderLock` (another writer gets
    :class:`FolderInUseError` at once), then :func:`remove_stale_temp_files` of earlier writers
    that were killed mid-write.

    :param str folder: the folder (created if needed).
    :param str what: how the folder is called in messages.
    :yields: the folder (a ``str``).
    """
    folder = check_output_folder(folder, what)
    with FolderLock(folder, what):
        remove_stale_temp_files(folder)
        yield folder


class FolderInUseError(RuntimeError):
    """Another process holds the lock of a folder this process wants to write into."""


class FolderLock:
    """An exclusive lock on a folder, held by one process at a time (a context manager).

    The lock is an advisory ``flock`` on the hidden file ``.pyro-vae.lock`` in the folder, which
    holds the owner's process id. The operating system releases it when the owner exits, even
    after ``kill -9``, so a lock is never left stale. A second process asking for the same lock
    gets :class:`FolderInUseError` at once (no waiting).

    :param str folder: the folder (created if needed).
    :param str what: how the folder is called in the error message (e.g. ``"run folder"``).
    """

    FILE = ".pyro-vae.lock"

    def __init__(self, folder, what="folder"):
        self.folder = os.fspath(folder)
        self.what = what
        self._fd = None

    def acquire(self):
        """Take the lock or raise :class:`FolderInUseError`; returns ``self``."""
        import fcntl

        os.makedirs(self.folder, exist_ok=True)
        path = os.path.join(self.folder, self.FILE)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            owner = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise FolderInUseError(
                f"{self.what} {self.folder} is in use by another process (pid {owner}); wait for it "
                "to finish or choose another folder") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode("ascii"), 0)
        self._fd = fd
        return self

    def release(self):
        """Give the lock back (the lock file stays; it is harmless)."""
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


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
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=json_default) + "\n")


def json_default(obj):
    """``default=`` for :func:`json.dumps`: tensors and numpy values as lists or numbers, sets
    and tuples as lists; anything else is a :class:`TypeError`."""
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
