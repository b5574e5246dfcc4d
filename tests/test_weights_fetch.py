"""Downloading weights: against an HTTP server these tests start on 127.0.0.1 (Range
support, cut connections, errors on demand), never the network."""
import hashlib
import http.server
import io
import os
import re
import shutil
import socket
import threading

import h5py
import numpy as np
import pytest

from colabrcnn import cli, weights
from colabrcnn.errors import WeightsError

MAX_REQUESTS = 30  # no test may need more: a runaway retry loop fails instead of hanging


def make_h5_bytes(seed=0):
    """A small weight file in the Keras 2 layout (about 400 KB)."""
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        f.attrs["layer_names"] = [b"conv1", b"bn_conv1", b"fpn_p2"]
        for name, shapes in (("conv1", [(7, 7, 3, 64), (64,)]),
                             ("bn_conv1", [(64,)] * 4),
                             ("fpn_p2", [(3, 3, 64, 128), (128,)])):
            g = f.create_group(name)
            names = [f"{name}/w{i}:0" for i in range(len(shapes))]
            for n, s in zip(names, shapes):
                g.create_dataset(n, data=rng.standard_normal(s).astype("float32"))
            g.attrs["weight_names"] = [n.encode() for n in names]
    return buf.getvalue()


class Server:
    """Serves ``files``; ``plan`` lists how to answer the next requests:
    "ok", "cut" (send half the body, then close), "500", "ignore-range"."""

    def __init__(self):
        self.files, self.plan, self.requests = {}, [], []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                mode = server.plan.pop(0) if server.plan else "ok"
                server.requests.append({"path": self.path, "range": self.headers.get("Range"),
                                        "mode": mode})
                if len(server.requests) > MAX_REQUESTS or mode == "500":
                    self.send_error(500, "Internal Server Error")
                    return
                if self.path.startswith("/redirect/"):  # as GitHub release downloads do
                    self.send_response(302)
                    self.send_header("Location", self.path[len("/redirect"):])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = server.files.get(self.path.lstrip("/"))
                if data is None:
                    self.send_error(404, "Not Found")
                    return
                start = 0
                m = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
                if m and mode != "ignore-range":
                    start = int(m.group(1))
                    if start >= len(data):
                        self.send_error(416, "Range Not Satisfiable")
                        return
                    self.send_response(206)
                    self.send_header("Content-Range",
                                     f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                if mode == "cut":
                    self.wfile.write(body[:len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()

    def url(self, name):
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


@pytest.fixture
def content():
    return make_h5_bytes()


def register(monkeypatch, server, content, name="test", **fields):
    """A registry entry for a file served by ``server``."""
    server.files["w.h5"] = content
    entry = weights.WeightsEntry(name, server.url("w.h5"),
                                 **{"filename": "test_weights.h5", "size": len(content),
                                    "sha256": hashlib.sha256(content).hexdigest(),
                                    "layers": ("conv1", "fpn_p2"), **fields})
    monkeypatch.setitem(weights.REGISTRY, name, entry)
    return entry


def fetch(name, cache, **kw):
    kw = {"progress": False, "backoff": 0, "timeout": 10, **kw}
    return weights.fetch(name, cache_dir=str(cache), **kw)


def test_full_download_then_cache_hit(server, content, monkeypatch, tmp_path, capsys):
    register(monkeypatch, server, content)
    path = fetch("test", tmp_path, progress=True)  # with the tqdm bar
    assert path == str(tmp_path / "test_weights.h5")
    assert open(path, "rb").read() == content
    assert os.listdir(tmp_path) == ["test_weights.h5"]  # no .part left behind
    assert len(server.requests) == 1 and server.requests[0]["range"] is None
    assert fetch("test", tmp_path) == path
    assert len(server.requests) == 1  # the second call made no request


def test_resume_after_cut_connection(server, content, monkeypatch, tmp_path):
    register(monkeypatch, server, content)
    server.plan = ["cut", "ok"]
    path = fetch("test", tmp_path)
    assert open(path, "rb").read() == content
    assert [r["mode"] for r in server.requests] == ["cut", "ok"]
    assert server.requests[1]["range"] == f"bytes={len(content) // 2}-"


def test_resume_from_an_earlier_session_part_file(server, content, monkeypatch, tmp_path):
    register(monkeypatch, server, content)
    (tmp_path / "test_weights.h5.part").write_bytes(content[:1000])
    path = fetch("test", tmp_path)
    assert open(path, "rb").read() == content
    assert server.requests[0]["range"] == "bytes=1000-"


def test_resume_through_a_redirect(server, content, tmp_path):
    server.files["w.h5"] = content
    server.plan = ["ok", "cut", "ok", "ok"]  # redirect, cut body, redirect, the rest
    path = fetch(server.url("redirect/w.h5"), tmp_path, size=len(content))
    assert open(path, "rb").read() == content
    assert [r["path"] for r in server.requests] == ["/redirect/w.h5", "/w.h5"] * 2
    assert server.requests[3]["range"] == f"bytes={len(content) // 2}-"


def test_complete_part_file_answered_416(server, content, monkeypatch, tmp_path):
    register(monkeypatch, server, content, size=None, sha256=None)
    (tmp_path / "test_weights.h5.part").write_bytes(content)
    assert open(fetch("test", tmp_path), "rb").read() == content
    assert server.requests[0]["range"] == f"bytes={len(content)}-"


def test_server_that_ignores_range_starts_over(server, content, monkeypatch, tmp_path):
    register(monkeypatch, server, content)
    server.plan = ["cut", "ignore-range"]
    assert open(fetch("test", tmp_path), "rb").read() == content


def test_checksum_mismatch_is_an_error_and_leaves_nothing(server, content, monkeypatch,
                                                          tmp_path):
    register(monkeypatch, server, content, sha256="0" * 64)
    with pytest.raises(WeightsError, match="sha256") as err:
        fetch("test", tmp_path)
    assert server.url("w.h5") in str(err.value)
    assert len(server.requests) == 2  # downloaded once more before giving up
    assert os.listdir(tmp_path) == []


def test_md5_is_checked_too(server, content, monkeypatch, tmp_path):
    register(monkeypatch, server, content, sha256=None,
             md5=hashlib.md5(content).hexdigest())
    assert open(fetch("test", tmp_path), "rb").read() == content
    register(monkeypatch, server, content, name="bad", sha256=None, md5="f" * 32,
             filename="bad.h5")
    with pytest.raises(WeightsError, match="md5"):
        fetch("bad", tmp_path)


def test_truncated_hdf5_from_the_server_is_detected(server, content, monkeypatch, tmp_path):
    # Nothing known but the layers: the served file is cut short but complete as sent.
    register(monkeypatch, server, content[:len(content) * 2 // 3], size=None, sha256=None)
    with pytest.raises(WeightsError, match="HDF5"):
        fetch("test", tmp_path)
    assert len(server.requests) == 2 and os.listdir(tmp_path) == []


def test_truncated_cached_file_is_removed_and_fetched_again(server, content, monkeypatch,
                                                            tmp_path, capsys):
    register(monkeypatch, server, content, size=None, sha256=None)
    (tmp_path / "test_weights.h5").write_bytes(content[:len(content) // 3])
    path = fetch("test", tmp_path)
    assert open(path, "rb").read() == content
    assert "damaged" in capsys.readouterr().out
    assert len(server.requests) == 1


def test_cached_file_of_wrong_size_is_fetched_again(server, content, monkeypatch, tmp_path):
    register(monkeypatch, server, content)
    (tmp_path / "test_weights.h5").write_bytes(content + b"junk")
    assert open(fetch("test", tmp_path), "rb").read() == content


def test_wrong_file_without_the_expected_layers(server, content, monkeypatch, tmp_path):
    register(monkeypatch, server, content, size=None, sha256=None,
             layers=("conv1", "mrcnn_mask"))
    with pytest.raises(WeightsError, match="mrcnn_mask"):
        fetch("test", tmp_path)


def test_server_errors_are_retried_then_reported(server, content, monkeypatch, tmp_path):
    register(monkeypatch, server, content)
    server.plan = ["500", "500"]
    assert open(fetch("test", tmp_path), "rb").read() == content
    assert len(server.requests) == 3

    server.requests.clear()
    server.plan = ["500"] * 10
    with pytest.raises(WeightsError) as err:
        fetch("test", tmp_path / "other", retries=2)
    msg = str(err.value)
    assert "HTTP 500" in msg and server.url("w.h5") in msg
    assert str(tmp_path / "other" / "test_weights.h5") in msg  # where to put it by hand
    assert len(server.requests) == 3  # the first try and two retries


def test_retries_wait_with_exponential_backoff(server, content, monkeypatch, tmp_path):
    register(monkeypatch, server, content)
    waits = []
    monkeypatch.setattr(weights.download.time, "sleep", waits.append)
    server.plan = ["500"] * 3
    fetch("test", tmp_path, backoff=0.5)
    assert waits == [0.5, 1.0, 2.0]


def test_not_found_is_not_retried(server, monkeypatch, tmp_path):
    with pytest.raises(WeightsError, match="HTTP 404"):
        fetch(server.url("missing.h5"), tmp_path)
    assert len(server.requests) == 1


def test_offline_gives_one_clear_error(tmp_path):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    url = f"http://127.0.0.1:{port}/mask_rcnn_coco.h5"
    with pytest.raises(WeightsError) as err:
        fetch(url, tmp_path, retries=1)
    msg = str(err.value)
    assert url in msg and "put it at" in msg
    assert str(tmp_path / "mask_rcnn_coco.h5") in msg


def test_url_with_checks(server, content, tmp_path):
    server.files["any/name.h5"] = content
    path = fetch(server.url("any/name.h5"), tmp_path, sha256=hashlib.sha256(content).hexdigest())
    assert os.path.basename(path) == "name.h5" and open(path, "rb").read() == content
    path = fetch(server.url("any/name.h5"), tmp_path, filename="renamed.h5")
    assert os.path.basename(path) == "renamed.h5"


def test_local_path_is_returned_as_is(tmp_path, content):
    f = tmp_path / "mine.h5"
    f.write_bytes(content)
    assert weights.fetch(str(f)) == str(f)


def test_google_drive_goes_through_gdown(monkeypatch, tmp_path, content):
    gdown = pytest.importorskip("gdown")
    source = tmp_path / "drive_copy.h5"
    source.write_bytes(content)
    calls = []

    def fake_download(url=None, output=None, quiet=False, id=None, **kwargs):
        calls.append(id)
        shutil.copy(source, output)
        return output

    monkeypatch.setattr(gdown, "download", fake_download)
    fid = "1AbCdEfGhIjKlMnOpQrStUvWxYz012345"
    cache = tmp_path / "cache"
    link = f"https://drive.google.com/file/d/{fid}/view?usp=sharing"
    path = fetch(link, cache)
    assert calls == [fid] and open(path, "rb").read() == content
    assert os.listdir(cache) == [f"gdrive_{fid}.h5"]
    assert fetch(fid, cache) == path and calls == [fid]  # a bare id; cached
    assert fetch(f"https://drive.google.com/uc?id={fid}", cache) == path


def test_google_drive_failure_is_a_clear_error(monkeypatch, tmp_path):
    gdown = pytest.importorskip("gdown")

    def failing(*args, **kwargs):
        raise RuntimeError("Cannot retrieve the public link of the file.")

    monkeypatch.setattr(gdown, "download", failing)
    fid = "1AbCdEfGhIjKlMnOpQrStUvWxYz012345"
    with pytest.raises(WeightsError, match="Cannot retrieve") as err:
        fetch(fid, tmp_path, retries=1)
    assert f"https://drive.google.com/file/d/{fid}/view" in str(err.value)


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("COLABRCNN_CACHE", str(tmp_path / "env"))
    assert weights.default_cache_dir() == str(tmp_path / "env")
    monkeypatch.delenv("COLABRCNN_CACHE")
    drive = tmp_path / "MyDrive"
    monkeypatch.setattr(weights.download, "DRIVE_DIR", str(drive))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert weights.default_cache_dir() == str(tmp_path / "home/.cache/colabrcnn/weights")
    drive.mkdir()  # Drive mounted
    monkeypatch.setattr(weights.download, "DRIVE_CACHE", str(drive / "colabrcnn/weights"))
    assert weights.default_cache_dir() == str(drive / "colabrcnn/weights")


def test_resolve_names(monkeypatch):
    assert weights.resolve("coco").url.endswith("/v2.0/mask_rcnn_coco.h5")
    assert weights.resolve("coco").size == 257_557_808
    assert weights.resolve("imagenet").name == "imagenet-resnet50"
    assert weights.resolve("keras-resnet101").md5 == "88cf7a10940856eca736dc7b7e228a21"
    assert weights.imagenet_for("resnet101") == "keras-resnet101"
    with pytest.raises(WeightsError, match="resnet18"):
        weights.imagenet_for("resnet18")
    with pytest.raises(WeightsError, match="unknown weights 'cocoa'.*coco"):
        weights.resolve("cocoa")


def test_cli_fetch_weights(server, content, monkeypatch, tmp_path, capsys):
    register(monkeypatch, server, content)
    assert cli.main(["fetch-weights", "test", "--cache", str(tmp_path), "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "test_weights.h5")
    assert cli.main(["fetch-weights", "--list"]) == 0
    out = capsys.readouterr().out
    assert "coco" in out and "keras-resnet101" in out
    assert cli.main(["fetch-weights", "nonsense", "--cache", str(tmp_path)]) == 1
    assert "unknown weights" in capsys.readouterr().err
