"""Archives brought into a notebook (notebook.bring_data): broken zips are our error
naming the file, a replaced zip is extracted again, an unchanged one is not."""
import io
import os
import time
import zipfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from colabrcnn import notebook as nb
from colabrcnn.errors import AnnotationError, ColabRCNNError


def zip_bytes(files):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(name, data)
    return buf.getvalue()


REAL = zip_bytes({"set/a.json": b'{"a": 1}' * 40, "set/b.json": b'{"b": 2}' * 40,
                  "set/img/1.png": bytes(range(256)) * 8})


def write(path, data, mtime=None):
    with open(path, "wb") as f:
        f.write(data)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return str(path)


# ----------------------------------------------------------------- broken archives
@pytest.mark.parametrize("cut", [0, 10, len(REAL) // 3, len(REAL) // 2, len(REAL) - 30,
                                 len(REAL) - 1])
def test_truncated_zip_is_our_error_naming_the_file(tmp_path, cut):
    path = write(tmp_path / "mydata.zip", REAL[:cut])
    with pytest.raises(AnnotationError) as e:
        nb.bring_data(path, dest=str(tmp_path / "data"))
    assert "mydata.zip" in str(e.value) and e.value.file == path
    # Nothing half-extracted is left to be taken for the data next time.
    assert not os.path.exists(tmp_path / "data" / "mydata")


@pytest.mark.parametrize("data", [
    b"",                                         # empty download
    b"<html><body>Google Drive: quota exceeded</body></html>",   # an HTML page
    b"PK\x03\x04" + b"\0" * 100,                 # a local header and nothing else
    REAL[:40] + b"\xff" * 200 + REAL[240:],      # corrupted member data (bad CRC / zlib)
])
def test_not_a_zip_or_corrupted_member_is_our_error(tmp_path, data):
    path = write(tmp_path / "broken.zip", data)
    with pytest.raises(AnnotationError, match="broken.zip"):
        nb.bring_data(path, dest=str(tmp_path / "data"))
    assert not os.path.exists(tmp_path / "data" / "broken")


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(
    st.binary(max_size=600),
    st.integers(0, len(REAL) - 1).map(lambda n: REAL[:n]),
    st.tuples(st.integers(0, len(REAL) - 1), st.binary(min_size=1, max_size=16)).map(
        lambda t: REAL[:t[0]] + t[1] + REAL[t[0] + len(t[1]):])))
def test_random_and_damaged_archives_give_only_our_errors(tmp_path_factory, data):
    tmp = tmp_path_factory.mktemp("fuzz")
    path = write(tmp / "fuzz.zip", data)
    try:
        got = nb.bring_data(path, dest=str(tmp / "data"))
    except ColabRCNNError as e:
        assert "fuzz.zip" in str(e)
        return
    assert os.path.isdir(got)   # a byte change that leaves a valid archive


# ------------------------------------------------------------- replaced archives
def test_replaced_zip_is_extracted_again_and_unchanged_one_is_not(tmp_path):
    dest = str(tmp_path / "data")
    path = write(tmp_path / "set.zip", zip_bytes({"set/old.json": b"{}"}), mtime=1_000_000)
    got = nb.bring_data(path, dest=dest)
    assert sorted(os.listdir(got)) == ["old.json"]
    # Unchanged: not extracted again (a file added there stays).
    open(os.path.join(got, "mine.txt"), "w").close()
    assert nb.bring_data(path, dest=dest) == got
    assert sorted(os.listdir(got)) == ["mine.txt", "old.json"]
    # A newer version under the same name (other size and time): extracted again, and
    # files of the old version are gone.
    write(path, zip_bytes({"set/new.json": b'{"x": 1}', "set/new2.json": b"{}"}),
          mtime=2_000_000)
    got = nb.bring_data(path, dest=dest)
    assert sorted(os.listdir(got)) == ["new.json", "new2.json"]
    # Same size, other time (re-uploaded): extracted again too.
    before = os.path.getsize(path)
    write(path, zip_bytes({"set/new.json": b'{"y": 2}', "set/new2.json": b"{}"}),
          mtime=3_000_000)
    assert os.path.getsize(path) == before
    got = nb.bring_data(path, dest=dest)
    assert open(os.path.join(got, "new.json")).read() == '{"y": 2}'


def test_replaced_by_a_broken_zip_keeps_nothing_stale(tmp_path):
    dest = str(tmp_path / "data")
    path = write(tmp_path / "set.zip", REAL, mtime=1_000_000)
    nb.bring_data(path, dest=dest)
    write(path, REAL[:len(REAL) // 2], mtime=time.time())
    with pytest.raises(AnnotationError, match="set.zip"):
        nb.bring_data(path, dest=dest)
    # The old extraction is not offered as the new data.
    with pytest.raises(AnnotationError, match="set.zip"):
        nb.bring_data(path, dest=dest)
