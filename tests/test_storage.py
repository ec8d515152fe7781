import os

import pandas as pd
import pytest
import torch

from pyro_vae import storage


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    path = tmp_path / "a.txt"
    storage.write_text(path, "old")
    with pytest.raises(RuntimeError):
        with storage.atomic_path(path) as tmp:
            with open(tmp, "w") as f:
                f.write("half")
            raise RuntimeError("crash mid-write")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["a.txt"]


def test_json_csv_and_checkpoint_round_trip(tmp_path):
    storage.write_json(tmp_path / "c.json", {"a": torch.tensor([1.0, 2.0]), "b": (1, 2)})
    assert (tmp_path / "c.json").read_text().count("1.0") == 1
    df = pd.DataFrame({"x": [1, 2]})
    storage.write_csv(tmp_path / "d.csv", df)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "d.csv"), df)
    state = {"w": torch.arange(3.0), "meta": {"epoch": 2, "name": "x"}}
    storage.save_checkpoint(tmp_path / "c.pt", state)
    back = storage.load_checkpoint(tmp_path / "c.pt")
    assert torch.equal(back["w"], state["w"]) and back["meta"] == state["meta"]


def test_missing_checkpoint():
    with pytest.raises(FileNotFoundError):
        storage.load_checkpoint("/nonexistent/ck.pt")


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_written_files_get_the_mode_a_plain_open_would(tmp_path, umask):
    old = os.umask(umask)
    try:
        storage.write_text(tmp_path / "atomic.txt", "x")
        with open(tmp_path / "plain.txt", "w") as f:
            f.write("x")
    finally:
        os.umask(old)
    mode = lambda p: os.stat(p).st_mode & 0o777  # noqa: E731
    assert mode(tmp_path / "atomic.txt") == mode(tmp_path / "plain.txt") == 0o666 & ~umask


def test_stale_temp_files_of_killed_writes_are_removed(tmp_path):
    # what a write killed between mkstemp and os.replace leaves behind
    with pytest.raises(KeyboardInterrupt):
        with storage.atomic_path(tmp_path / "checkpoint.pt") as tmp:
            left = tmp
            raise KeyboardInterrupt
    assert not os.path.exists(left)  # an exception cleans up by itself ...
    stale = [tmp_path / ".checkpoint.pt.a1B2c3D4.tmp.pt", tmp_path / ".history.csv.zz_9XY01.tmp.csv",
             tmp_path / ".config.json.abcdefgh.tmp"]
    for p in stale:  # ... a kill -9 does not
        p.write_bytes(b"")
    keep = [tmp_path / "checkpoint.pt", tmp_path / ".hidden", tmp_path / "notes.tmp",
            tmp_path / ".x.short.tmp"]
    for p in keep:
        p.write_text("x")
    removed = storage.remove_stale_temp_files(tmp_path)
    assert sorted(removed) == sorted(str(p) for p in stale)
    assert sorted(os.listdir(tmp_path)) == sorted(p.name for p in keep)
    assert storage.remove_stale_temp_files(tmp_path / "missing") == []


def test_folder_lock_refuses_a_second_writer_and_is_released(tmp_path):
    import subprocess
    import sys

    script = ("import sys, time; from pyro_vae.storage import FolderLock\n"
              "lock = FolderLock(sys.argv[1], 'run folder').acquire()\n"
              "print('locked', flush=True); time.sleep(60)\n")
    other = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "locked"
        with pytest.raises(storage.FolderInUseError, match=f"run folder .* in use by another process "
                                                           f"\\(pid {other.pid}\\)"):
            storage.FolderLock(tmp_path, "run folder").acquire()
    finally:
        other.kill()  # like kill -9: the OS releases the lock
        other.wait()
    with storage.FolderLock(tmp_path) as lock:
        assert lock._fd is not None
        with pytest.raises(storage.FolderInUseError):  # also within one process: a second open file
            storage.FolderLock(tmp_path).acquire()
    with storage.FolderLock(tmp_path):  # released on exit
        pass


def test_check_output_folder_refuses_a_file_and_a_read_only_folder(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(NotADirectoryError, match="is an existing file"):
        storage.check_output_folder(tmp_path / "f")
    with pytest.raises(NotADirectoryError, match="part of its path is a file"):
        storage.check_output_folder(tmp_path / "f" / "sub")
    assert storage.check_output_folder(tmp_path / "a" / "b") == str(tmp_path / "a" / "b")
    assert (tmp_path / "a" / "b").is_dir()


def test_check_output_folder_gives_permission_advice(tmp_path, monkeypatch):
    # the operating system's answers are simulated: tests may run as root, who may write anywhere
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    (tmp_path / "ro").mkdir()
    with pytest.raises(PermissionError, match="not writable: permission denied.*chmod u\\+w"):
        storage.check_output_folder(tmp_path / "ro")

    def denied(path, exist_ok=False):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(os, "makedirs", denied)
    with pytest.raises(PermissionError, match="cannot be created: permission denied"):
        storage.check_output_folder(tmp_path / "ro" / "sub")


def test_output_folder_locks_and_clears_stale_temp_files(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / ".params.json.abcd1234.tmp.json").write_bytes(b"")
    (out / "keep.tmp").write_text("not ours")
    with storage.output_folder(out) as folder:
        assert folder == str(out)
        assert sorted(os.listdir(out)) == [storage.FolderLock.FILE, "keep.tmp"]
        with pytest.raises(storage.FolderInUseError):
            storage.FolderLock(out).acquire()
    storage.FolderLock(out).acquire().release()
    assert storage.is_temp_file_name(".a.csv.ABCD_123.tmp.csv") and not storage.is_temp_file_name("a.tmp")
