"""Files read over HTTP from a server that misbehaves (a local one, on 127.0.0.1): every fault is one
NvpFormatError naming the URL and what went wrong, and `nvp info` reports it in one line."""

import contextlib
import hashlib
import io
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from nvp_rt import cli
from nvp_rt.nvpfile import NvpFile, NvpFormatError, write_nvp
from test_nvpfile import MANIFEST
from test_schema import random_segments


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.files: dict[str, bytes] = {}
        self.fault = ""  # what the server gets wrong; "" for nothing

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/{name}"


class Handler(BaseHTTPRequestHandler):
    server: Server
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet
        pass

    def do_HEAD(self):
        self._reply(body=False)

    def do_GET(self):
        self._reply(body=True)

    def _reply(self, body: bool):
        fault, data = self.server.fault, self.server.files.get(self.path.lstrip("/"))
        if data is None or fault == "5xx" or (fault == "5xx on reads" and body):
            self.send_response(404 if data is None else 503)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        status, part = 200, data
        ranged = self.headers.get("Range")
        if ranged and fault != "range ignored":
            first, last = (int(v) for v in ranged.removeprefix("bytes=").split("-"))
            if first >= len(data):
                self.send_response(416)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status, part = 206, data[first : last + 1]
        self.send_response(status)
        if fault != "no length":
            self.send_header("Content-Length", str(len(part)))
        if status == 206:
            self.send_header("Content-Range", f"bytes {first}-{first + len(part) - 1}/{len(data)}")
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()[:16]}"')
        self.send_header("Accept-Ranges", "bytes")
        if fault in ("no length", "short body"):
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if body:
            self.wfile.write(part[: len(part) // 2] if fault == "short body" else part)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    path = tmp_path_factory.mktemp("http") / "clip.nvp"
    write_nvp(path, MANIFEST, random_segments(np.random.default_rng()))
    httpd = Server()
    httpd.files["clip.nvp"] = path.read_bytes()
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def fault(server):
    def set_fault(name: str) -> None:
        server.fault = name

    yield set_fault
    server.fault = ""


def _nvp_info(url: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["info", url])
    return code, err.getvalue()


def test_a_well_behaved_server_serves_the_file_by_ranges(server):
    url = server.url("clip.nvp")
    with NvpFile.open(url) as nvp:
        nvp.verify()
        assert [s.frames for s in nvp.segments] == [5, 3]
        assert nvp.bytes_read == len(server.files["clip.nvp"])  # each byte once: ranges, not the whole file twice
    assert _nvp_info(url) == (0, "")


FAULTS = {
    "5xx": r"HTTP 503 Service Unavailable \(asking for its size\)",
    "5xx on reads": r"HTTP 503 Service Unavailable \(reading\)",
    "short body": r"the reply ended before the length the server announced \(reading\)",
    "no length": r"the server does not give the file's size \(no Content-Length\)",
    "range ignored": r"the server ignores range requests \(it sent \d+ bytes for 20\)",
}


@pytest.mark.parametrize("name", FAULTS)
def test_each_server_fault_is_one_line_naming_the_url(server, fault, name):
    url = server.url("clip.nvp")
    fault(name)
    with pytest.raises(NvpFormatError, match=f"^{url}: {FAULTS[name]}"):
        NvpFile.open(url).verify()
    code, err = _nvp_info(url)
    assert code == 1 and len(err.splitlines()) == 1 and url in err, err


def test_a_missing_file_is_named(server):
    url = server.url("absent.nvp")
    with pytest.raises(NvpFormatError, match=f"^{url}: no such file"):
        NvpFile.open(url)


@pytest.mark.parametrize("size", ["same", "shorter", "cut at the sections"])
def test_a_file_replaced_between_open_and_query_is_named_so(server, size, rng):
    """Another file under the URL once the manifest is read: of the same size (the section checksums
    disagree, the ETag says why), shorter (the ranges come back short) or ending where the sections
    began (ranges past its end)."""
    url = server.url("replaced.nvp")
    original = server.files["clip.nvp"]
    server.files["replaced.nvp"] = original
    nvp = NvpFile.open(url)
    data = bytearray(original)
    start = nvp._body_start
    data[start:] = rng.integers(0, 256, len(data) - start, dtype=np.uint8).tobytes()
    server.files["replaced.nvp"] = {
        "same": bytes(data),
        "shorter": bytes(data[: start + 10]),
        "cut at the sections": bytes(data[:start]),
    }[size]
    expected = {
        "same": "the file changed since it was opened (read section",
        "shorter": f"the file changed since it was opened: {len(data)} bytes then, {start + 10} now",
        "cut at the sections": "the file changed since it was opened (HTTP 416: a range past its end)",
    }[size]
    with pytest.raises(NvpFormatError) as error:
        nvp.verify()
    assert str(error.value).startswith(f"{url}: {expected}"), error.value
