import logging

import numpy as np
import pandas as pd
import pytest
import torch

from pyro_vae.data import CsvChunks, load_data


@pytest.fixture
def table():
    rng = np.random.default_rng(0)
    return rng.normal(size=(7, 3))


def test_csv_roundtrip_with_and_without_header(tmp_path, table):
    p = tmp_path / "with_header.csv"
    frame = pd.DataFrame(table, columns=["u", "v", "w"])
    frame["label"] = [0, 1, 0, 1, 0, 1, 2]
    frame.to_csv(p, index=False, float_format="%.17g")
    d = load_data(p, label_column="label", dtype=torch.float64)
    assert torch.equal(d.x, torch.from_numpy(table))
    assert d.labels.tolist() == [0, 1, 0, 1, 0, 1, 2]
    assert d.name == "with_header.csv"

    q = tmp_path / "no_header.csv"
    np.savetxt(q, table, delimiter=",", fmt="%.17g")
    assert torch.equal(load_data(str(q), dtype=torch.float64).x, torch.from_numpy(table))


def test_csv_errors_name_columns_and_rows(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text("a,b,city\n1,2,Paris\n3,4,Rome\n")
    with pytest.raises(ValueError, match="'city'.*not numeric"):
        load_data(p)
    q = tmp_path / "nan.csv"
    q.write_text("a,b\n1,2\n3,\n5,6\n,8\n")
    with pytest.raises(ValueError, match=r"NaN.*2 rows.*rows 1, 3"):
        load_data(q)
    e = tmp_path / "empty.csv"
    e.write_text("")
    with pytest.raises(ValueError, match="empty"):
        load_data(e)
    h = tmp_path / "header_only.csv"
    h.write_text("a,b\n")
    with pytest.raises(ValueError, match="no data rows"):
        load_data(h)


def test_csv_with_a_byte_order_mark_keeps_its_first_row(tmp_path):
    """Spreadsheet programs start UTF-8 files with a byte-order mark; it must not make the first
    row of numbers look like a header."""
    p = tmp_path / "bom.csv"
    p.write_bytes(b"\xef\xbb\xbf1,2\n3,4\n")
    assert load_data(p).x.tolist() == [[1.0, 2.0], [3.0, 4.0]]
    assert torch.cat(list(CsvChunks(p, 1))).tolist() == [[1.0, 2.0], [3.0, 4.0]]


# ---------------------------------------------------------------------------------------
# layouts pandas would read with the wrong columns
# ---------------------------------------------------------------------------------------
def test_csv_header_shorter_than_the_rows_is_refused(tmp_path):
    """pandas would make the first field of every row the index and drop it: 2 columns of 3."""
    p = tmp_path / "short.csv"
    p.write_text("a,b\n1,2,3\n4,5,6\n")
    with pytest.raises(ValueError, match=r"header names 2 columns but data row 1 has 3 fields.*Name every column"):
        load_data(p)
    with pytest.raises(ValueError, match=r"header names 2 columns.*3 fields"):
        CsvChunks(p, 10)


def test_csv_with_semicolons_and_decimal_commas_is_refused(tmp_path):
    p = tmp_path / "semi.csv"
    p.write_text("a;b\n1,5;2,25\n3,0;4,5\n")
    with pytest.raises(ValueError, match=r"separated by semicolons.*sep=';', decimal=','"):
        load_data(p)
    with pytest.raises(ValueError, match="semicolons"):
        CsvChunks(p, 10)
    t = tmp_path / "tabs.csv"
    t.write_text("a\tb\n1.5\t2\n3\t4\n")
    with pytest.raises(ValueError, match=r"separated by tabs.*sep='\\t'"):
        load_data(t)
    # one column with decimal commas: the header is one name short of the rows
    q = tmp_path / "one.csv"
    q.write_text("x\n1,5\n2,5\n")
    with pytest.raises(ValueError, match=r"header names 1 column but data row 1 has 2 fields.*decimal commas"):
        load_data(q)


def test_semicolons_inside_a_text_column_are_not_a_separator(tmp_path):
    p = tmp_path / "notes.csv"
    p.write_text('a,note\n1,"x;y"\n2,plain\n3,"p;q;r"\n')
    d = load_data(p, label_column="note", dtype=torch.float64)
    assert d.x.reshape(-1).tolist() == [1.0, 2.0, 3.0] and d.label_names == ("p;q;r", "plain", "x;y")


def test_csv_written_with_its_index_reads_the_index_as_index_and_says_so(tmp_path, caplog):
    frame = pd.DataFrame({"a": [1.0, 2.0, 3.0], "b": [4.0, 5.0, 6.0]})
    p = tmp_path / "idx.csv"
    frame.to_csv(p)  # header ",a,b", first column 0, 1, 2
    with caplog.at_level(logging.WARNING, logger="pyro_vae"):
        d = load_data(p, dtype=torch.float64)
    assert torch.equal(d.x, torch.tensor(frame.to_numpy()))
    assert "row index" in caplog.text and "to_csv(index=False)" in caplog.text
    # R's write.csv numbers rows from 1
    r = tmp_path / "r.csv"
    r.write_text('"","a","b"\n"1",1,4\n"2",2,5\n"3",3,6\n')
    assert torch.equal(load_data(r, dtype=torch.float64).x, torch.tensor(frame.to_numpy()))
    # the same file in blocks, the index dropped in every block
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pyro_vae"):
        blocks = list(CsvChunks(p, 2))
    assert torch.equal(torch.cat(blocks), torch.tensor(frame.to_numpy()))
    assert caplog.text.count("row index") == 1
    # and a DataFrame read from such a file by the user
    assert torch.equal(load_data(pd.read_csv(p), dtype=torch.float64).x, torch.tensor(frame.to_numpy()))


def test_csv_unnamed_first_column_that_is_not_the_row_numbers_is_refused(tmp_path):
    p = tmp_path / "shuffled.csv"
    pd.DataFrame({"a": [1.0, 2.0, 3.0]}, index=[2, 0, 1]).to_csv(p)
    with pytest.raises(ValueError, match=r"first column has no name.*to_csv\(index=False\)"):
        load_data(p)
    # choosing the data columns is the way round it
    assert load_data(p, columns=["a"]).x.reshape(-1).tolist() == [1.0, 2.0, 3.0]
    # a block whose index column does not continue the row numbers is refused as well
    q = tmp_path / "gap.csv"
    q.write_text(",a\n0,1\n1,2\n5,3\n")
    with pytest.raises(ValueError, match=r"data rows 2 to 2.*first column has no name"):
        list(CsvChunks(q, 2))


# ---------------------------------------------------------------------------------------
# blocks of a file
# ---------------------------------------------------------------------------------------
def test_csv_chunks_read_the_file_in_blocks_on_every_pass(tmp_path, table):
    p = tmp_path / "with_header.csv"
    frame = pd.DataFrame(table, columns=["u", "v", "w"])
    frame["label"] = ["a", "b", "a", "b", "a", "b", "c"]
    frame.to_csv(p, index=False, float_format="%.17g")
    chunks = CsvChunks(p, 3, label_column="label")
    for _ in range(2):  # re-iterable: each pass reads the file again
        blocks = list(chunks)
        assert [b.shape for b in blocks] == [(3, 3), (3, 3), (1, 3)]
        assert torch.equal(torch.cat(blocks), load_data(p, label_column="label", dtype=torch.float64).x)
    q = tmp_path / "no_header.csv"
    np.savetxt(q, table, delimiter=",", fmt="%.17g")
    assert torch.equal(torch.cat(list(CsvChunks(q, 5, columns=[0, 2]))), torch.from_numpy(table[:, [0, 2]]))
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n3,4\n5,x\n")
    with pytest.raises(ValueError, match=r"data rows 2 to 2.*'b'.*not numeric"):
        list(CsvChunks(bad, 2))
    with pytest.raises(ValueError, match="rows must be a positive integer"):
        CsvChunks(q, 0)
    with pytest.raises(TypeError, match="rows must be an integer"):
        CsvChunks(q, 2.0)
    with pytest.raises(FileNotFoundError):
        CsvChunks(tmp_path / "missing.csv", 10)


def test_csv_chunks_name_missing_values_by_their_row_in_the_file(tmp_path):
    p = tmp_path / "nan.csv"
    p.write_text("a,b\n1,2\n3,4\n5,6\n,8\n")
    with pytest.raises(ValueError, match=r"data rows 2 to 3.*NaN.*rows 3 \(0-based\)"):
        list(CsvChunks(p, 2))
