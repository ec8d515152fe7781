"""Tables: pandas DataFrames and CSV files -> float tensors ``(N, D)``.

A CSV file is inspected before pandas reads it, and layouts pandas would read with the wrong
columns *without an error* are refused with what to do:

* **a header shorter than the rows**: pandas would take the first field of every row as the
  row index and drop it (this is also how decimal commas in a comma-separated file look);
* **semicolon- or tab-separated files** (European CSV with decimal commas): read with commas
  they become one column of text;
* **the row index written by** ``DataFrame.to_csv`` (a first column without a name in the
  header): when it holds the row numbers ``0..N-1`` (or R's ``1..N``) it is read as the index,
  not as data, and a warning is logged; otherwise the file is refused, since the column would
  silently become a feature.

:class:`CsvChunks` reads a CSV file a block of rows at a time, again on every pass, for data
larger than memory (e.g. :meth:`pyro_vae.GaussianMixture.fit`).
"""

import csv
import itertools
import logging
import os

import numpy as np
import torch

from pyro_vae.checks import check_positive_int
from pyro_vae.data.files import check_readable

__all__ = ["CsvChunks", "read_csv", "inspect_csv", "frame_to_tensor", "column_list", "describe_names",
           "describe_rows"]

log = logging.getLogger(__name__)

_SNIFF_ROWS = 20  # lines inspected before pandas reads the file
_INDEX_NAME = "Unnamed: 0"  # pandas's name for a first column without a header cell
_OTHER_SEPARATORS = ((";", "semicolon", "sep=';', decimal=','",
                      " (leave out decimal=',' if the numbers use '.')"),
                     ("\t", "tab", "sep='\\t'", ""))


# --------------------------------------------------------------------------- messages
def describe_names(cols):
    """Column names for a message: the first 10, quoted, and how many in all."""
    cols = list(cols)
    shown = ", ".join(repr(c) for c in cols[:10])
    return shown + (f", ... ({len(cols)} in all)" if len(cols) > 10 else "")


def describe_rows(rows):
    """Row numbers for a message: the first 5."""
    rows = [int(r) for r in rows]
    return ", ".join(str(r) for r in rows[:5]) + (", ..." if len(rows) > 5 else "")


def column_list(columns):
    """``columns`` as a list: one name or position becomes a list of one."""
    if isinstance(columns, (str, int, np.integer)):
        return [columns]
    return list(columns)


# --------------------------------------------------------------------------- CSV files
def _is_number(text):
    try:
        float(text)
    except ValueError:
        return False
    return True


def inspect_csv(path):
    """Whether a CSV file has a header row, after refusing layouts pandas would misread.

    The first line is a header unless every cell of it is a number.

    :param str path: the file.
    :returns: ``0`` when the first row is a header, ``None`` when it is data (pandas' ``header``).
    :raises ValueError: an empty or unreadable file, a semicolon- or tab-separated file, or a
        header with fewer names than the rows have fields.
    :raises PermissionError: the file may not be read.
    """
    path = os.fspath(path)
    base = os.path.basename(path)
    check_readable(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # without a byte-order mark, as pandas
            lines = list(itertools.islice(f, _SNIFF_ROWS))
        rows = [r for r in csv.reader(lines) if r]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ValueError(f"{base}: cannot read the file as CSV text ({e}); check the path and "
                         "that it is a comma-separated text file") from None
    if not rows:
        raise ValueError(f"{base}: the file is empty; a CSV needs rows of numbers")
    first = rows[0]
    for sep, word, options, note in _OTHER_SEPARATORS:
        if any(sep in cell for cell in first):
            counts = [len(r) for r in csv.reader(lines, delimiter=sep) if r]
            if counts[0] >= 2 and all(c == counts[0] for c in counts):
                raise ValueError(
                    f"{base}: the fields are separated by {word}s, not commas; this reader takes "
                    f"comma-separated files with '.' decimals: convert it, e.g. "
                    f"pandas.read_csv(path, {options}).to_csv(new_path, index=False){note}")
    header = None if all(_is_number(c) for c in first) else 0
    if header == 0 and len(rows) > 1 and len(rows[1]) > len(first):
        n = len(first)
        raise ValueError(
            f"{base}: the header names {n} column{'s' if n != 1 else ''} but data row 1 has "
            f"{len(rows[1])} fields; pandas would take the first field of every row as a row index "
            "and drop it. Name every column in the header (if the extra commas are decimal commas, "
            "write the numbers with '.' decimals)")
    return header


def read_csv(path):
    """Read a whole CSV file with pandas after :func:`inspect_csv`.

    :param str path: the file.
    :returns: :class:`pandas.DataFrame` with at least one row.
    :raises ValueError: a layout :func:`inspect_csv` refuses, rows of unequal length, or no rows.
    """
    import pandas as pd

    base = os.path.basename(os.fspath(path))
    header = inspect_csv(path)
    try:
        frame = pd.read_csv(path, header=header)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"{base}: cannot parse the CSV ({str(e).strip().splitlines()[0]}); every "
                         "row needs the same number of comma-separated fields") from None
    if frame.shape[0] == 0:
        raise ValueError(f"{base}: the CSV has a header but no data rows")
    return frame


# --------------------------------------------------------------------------- DataFrames
def _drop_index_column(frame, name, first_row):
    """Drop a nameless first column that holds the row numbers; refuse it otherwise."""
    import pandas as pd

    col = frame[_INDEX_NAME]
    n = len(col)
    values = col.to_numpy()
    if pd.api.types.is_integer_dtype(col):
        for start in (first_row, first_row + 1):  # pandas writes 0..N-1, R writes 1..N
            if np.array_equal(values, np.arange(start, start + n)):
                if first_row == 0:
                    log.warning("%s: the first column has no name and holds the row numbers %d..%d: "
                                "reading it as the row index (as DataFrame.to_csv writes it), not as "
                                "data; save the file with to_csv(index=False) to leave it out",
                                name, start, start + n - 1)
                return frame.drop(columns=[_INDEX_NAME])
    raise ValueError(
        f"{name}: the first column has no name in the header, as DataFrame.to_csv writes the row "
        "index, but it does not hold the row numbers 0..N-1; if it is data, give it a name in the "
        "header; if it is an index, save the file with to_csv(index=False) or choose the data "
        "columns with columns=[...]")


def frame_to_tensor(frame, columns=None, label_column=None, name="DataFrame", first_row=0):
    """Numeric columns of a DataFrame as a float64 tensor, and labels.

    A first column named ``"Unnamed: 0"`` (what pandas calls a column without a header name,
    e.g. the index written by ``DataFrame.to_csv``) is dropped when it holds the row numbers
    and refused otherwise, unless ``columns`` chooses the data columns.

    :param pandas.DataFrame frame: the table.
    :param columns: names of the data columns (default: all but ``label_column``).
    :param label_column: name of a column of class labels (numbers or text).
    :param str name: what the table is called in messages.
    :param int first_row: number of the frame's first row in its file (for blocks of a file).
    :returns: ``(x, labels, label_names)``: float64 tensor ``(N, D)``, long tensor ``(N,)`` or
        ``None``, and the label texts (``label_names[k]`` is the text of code ``k``) or ``None``.
    :raises ValueError: missing or non-numeric columns, missing values, no data columns.
    """
    import pandas as pd

    if label_column is not None and label_column not in frame.columns:
        raise ValueError(f"{name}: no label column {label_column!r}; columns are "
                         f"{describe_names(frame.columns)}")
    if (columns is None and len(frame.columns) and frame.columns[0] == _INDEX_NAME
            and label_column != _INDEX_NAME):
        frame = _drop_index_column(frame, name, first_row)
    labels = label_names = None
    if label_column is not None:
        col = frame[label_column]
        if col.isna().any():
            rows = np.flatnonzero(col.isna().to_numpy())
            raise ValueError(f"{name}: label column {label_column!r} is empty in rows "
                             f"{describe_rows(rows)}; fill or drop those rows")
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
        wanted = column_list(columns)
        missing = [c for c in wanted if c not in frame.columns]
        if missing:
            raise ValueError(f"{name}: no columns {describe_names(missing)}; columns are "
                             f"{describe_names(frame.columns)}")
        if label_column is not None and label_column in wanted:
            raise ValueError(f"{name}: column {label_column!r} is both a data column and the label column")
        frame = frame[wanted]
    elif label_column is not None:
        frame = frame.drop(columns=[label_column])
    bad = [c for c in frame.columns
           if not (pd.api.types.is_numeric_dtype(frame[c]) or pd.api.types.is_bool_dtype(frame[c]))]
    if bad:
        raise ValueError(
            f"{name}: columns {describe_names(bad)} are not numeric; choose the numeric ones with "
            "columns=[...] (CLI: a CSV with numeric columns only) or name a class column with "
            "label_column=...")
    if frame.shape[1] == 0:
        raise ValueError(f"{name}: no data columns left; the table needs at least one numeric column")
    values = frame.to_numpy(dtype=np.float64, copy=True)
    nan_rows = np.flatnonzero(np.isnan(values).any(axis=1))
    if nan_rows.size:
        raise ValueError(f"{name}: missing values (NaN) in {nan_rows.size} rows, e.g. data rows "
                         f"{describe_rows(nan_rows + first_row)} (0-based); fill or drop them "
                         "(e.g. frame.dropna())")
    return torch.from_numpy(values), labels, label_names


# --------------------------------------------------------------------------- blocks of a file
class CsvChunks:
    """The rows of a CSV file, ``rows`` at a time; every iteration reads the file again.

    The file is inspected and columns are chosen as by :func:`pyro_vae.data.load_data`. Only
    one block is in memory at a time, so a file larger than memory can be passed over
    repeatedly, as EM does (:meth:`pyro_vae.GaussianMixture.fit` takes this object directly).

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
        rows = check_positive_int(rows, "rows")
        self.path, self.rows, self.columns, self.label_column = path, rows, columns, label_column
        self._header = inspect_csv(path)

    def __iter__(self):
        import pandas as pd

        base = os.path.basename(self.path)
        start = 0
        try:
            reader = pd.read_csv(self.path, header=self._header, chunksize=self.rows)
            for frame in reader:
                name = f"{base} (data rows {start} to {start + len(frame) - 1})"
                first, start = start, start + len(frame)
                yield frame_to_tensor(frame, self.columns, self.label_column, name, first_row=first)[0]
        except (pd.errors.ParserError, UnicodeDecodeError) as e:
            raise ValueError(f"{base}: cannot parse the CSV ({str(e).strip().splitlines()[0]}); every "
                             "row needs the same number of comma-separated fields") from None
