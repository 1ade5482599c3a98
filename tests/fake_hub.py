"""A small real HTTP server that answers like the Hugging Face Hub for one repo, on 127.0.0.1 only.

It serves what ``huggingface_hub.snapshot_download`` asks for (run it with ``HF_ENDPOINT`` set to
:attr:`FakeHub.url` and ``HF_HUB_DISABLE_XET=1``)::

    GET /api/models/<repo>/revision/<rev>     repo info with the commit a branch points at
    GET /api/models/<repo>/tree/<commit>      the file listing (LFS files with their sha256)
    GET|HEAD /<repo>/resolve/<commit>/<path>  the file, with the ETag and X-Repo-Commit headers

``mode`` (changeable while it runs) makes it misbehave:

- ``ok``: a well-behaved Hub;
- ``truncate``: every ``.safetensors`` body stops halfway and the connection is closed;
- ``h500``: every request answers 500;
- ``miss``: ``model.safetensors`` is listed in the tree but answers 404 (EntryNotFound) on download.

Use it as a context manager; :meth:`stop` closes the port, after which a client gets "connection
refused" (a Hub that cannot be reached).
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

REMOTE_COMMIT = "abcdefabcdefabcdefabcdefabcdefabcdefabcd"


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _lfs(rel: str) -> bool:
    return rel.endswith(".safetensors")


class FakeHub:
    """One repo (``files``: relative path -> bytes) at ``commit``, branch ``main`` pointing at it."""

    def __init__(self, files: dict[str, bytes], *, repo: str = "org/remote", commit: str = REMOTE_COMMIT,
                 mode: str = "ok"):
        self.files, self.repo, self.commit, self.mode = dict(files), repo, commit, mode
        self.requests: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_HEAD(self):
                hub._handle(self, head=True)

            def do_GET(self):
                hub._handle(self, head=False)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread: threading.Thread | None = None

    def start(self) -> FakeHub:
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- answers -------------------------------------------------------------------------

    @staticmethod
    def _send(h, code: int, body: bytes = b"", headers: dict | None = None, head: bool = False) -> None:
        h.send_response(code)
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if not head:
            h.wfile.write(body)

    def _json(self, h, obj, code: int = 200, headers: dict | None = None, head: bool = False) -> None:
        self._send(h, code, json.dumps(obj).encode(), {"Content-Type": "application/json", **(headers or {})}, head)

    def _handle(self, h, head: bool) -> None:
        path = unquote(urlparse(h.path).path)
        self.requests.append(f"{h.command} {path}")
        if self.mode == "h500":
            return self._json(h, {"error": "Internal Error"}, 500, head=head)
        api = f"/api/models/{self.repo}/"
        if path.startswith(api + "revision/"):
            rev = path[len(api + "revision/"):]
            if rev not in ("main", self.commit):
                return self._json(h, {"error": "Revision Not Found"}, 404, {"X-Error-Code": "RevisionNotFound"}, head)
            return self._json(h, {"id": self.repo, "modelId": self.repo, "sha": self.commit, "private": False,
                                  "siblings": [{"rfilename": r} for r in self.files]}, head=head)
        if path.startswith(api + "tree/"):
            out = []
            for rel, data in self.files.items():
                e = {"type": "file", "path": rel, "size": len(data), "oid": git_blob_sha1(data)}
                if _lfs(rel):
                    e["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 130}
                out.append(e)
            return self._json(h, out, head=head)
        resolve = f"/{self.repo}/resolve/"
        if path.startswith(resolve):
            _rev, _, rel = path[len(resolve):].partition("/")
            if rel not in self.files or (self.mode == "miss" and rel == "model.safetensors"):
                return self._json(h, {"error": "Entry not found"}, 404, {"X-Error-Code": "EntryNotFound"}, head)
            data = self.files[rel]
            etag = hashlib.sha256(data).hexdigest() if _lfs(rel) else git_blob_sha1(data)
            headers = {"X-Repo-Commit": self.commit, "ETag": f'"{etag}"'}
            if _lfs(rel):
                headers.update({"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": str(len(data))})
            if head or not (_lfs(rel) and self.mode == "truncate"):
                return self._send(h, 200, data, headers, head)
            h.send_response(200)
            for k, v in headers.items():
                h.send_header(k, v)
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data[: len(data) // 2])
            h.wfile.flush()
            h.close_connection = True
            h.connection.shutdown(2)  # the peer sees the body end early
            return None
        return self._json(h, {"error": "not found"}, 404, head=head)
