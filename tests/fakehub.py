"""A local stand-in for the Hugging Face Hub: the endpoints huggingface_hub's download code calls.

    GET  /api/models/{repo}/revision/{rev}?blobs=true      model_info(files_metadata=True)
    GET  /api/datasets/{repo}/revision/{rev}?blobs=true    dataset_info(files_metadata=True)
    HEAD /{repo}/resolve/{rev}/{file}                     hf_hub_download: commit sha, etag, size
    GET  /{repo}/resolve/{rev}/{file}  (Range honoured)   the bytes (datasets: /datasets/{repo}/...)

LFS files carry their sha256 as etag and in ``lfs`` metadata, other files their git blob id,
as on the hub. ``corrupt`` serves wrong bytes under the right hash; ``drop_once`` cuts the first
transfer of a file halfway, so the client has to resume with a Range request. ``requests`` logs
(method, path, Range header) for assertions. Loopback only; the server thread stops with the fixture.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LFS_SUFFIXES = (".safetensors", ".bin", ".msgpack", ".zst", ".parquet", ".idx")  # as the hub's .gitattributes


def git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class FakeHub:
    def __init__(self):
        self.repos: dict[str, dict[str, tuple[str, dict[str, bytes]]]] = {}
        self.requests: list[tuple[str, str, str | None]] = []
        self.corrupt: set[str] = set()
        self.drop_once: set[str] = set()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                hub._serve(self, body=False)

            def do_GET(self):
                hub._serve(self, body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def add(self, repo: str, revision: str, files: dict[str, bytes], repo_type: str = "model") -> str:
        """Publish ``files`` as ``repo@revision`` (a model, or a dataset); returns the commit sha."""
        key = f"datasets/{repo}" if repo_type == "dataset" else repo
        sha = hashlib.sha1(json.dumps([key, revision, sorted(files)]).encode()).hexdigest()
        self.repos.setdefault(key, {})[revision] = (sha, files)
        return sha

    @staticmethod
    def meta(name: str, data: bytes) -> dict:
        entry = {"rfilename": name, "size": len(data), "blobId": git_oid(data)}
        if name.endswith(LFS_SUFFIXES):
            entry["lfs"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "pointerSize": 134}
        return entry

    def _lookup(self, repo: str, rev: str):
        if repo not in self.repos:
            return None, "RepoNotFound"
        for revision, (sha, files) in self.repos[repo].items():
            if rev in (revision, sha):
                return (sha, files), None
        return None, "RevisionNotFound"

    def _error(self, h, code: str, sha: str | None = None):
        body = json.dumps({"error": code}).encode()
        h.send_response(404)
        h.send_header("X-Error-Code", code)
        h.send_header("X-Error-Message", code)
        if sha:
            h.send_header("X-Repo-Commit", sha)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def _serve(self, h, body: bool):
        path = h.path.split("?")[0]
        self.requests.append((h.command, path, h.headers.get("Range")))
        api = re.fullmatch(r"/api/(models|datasets)/([^/]+/[^/]+)/revision/([^/]+)", path)
        if api:
            key = api[2] if api[1] == "models" else f"datasets/{api[2]}"
            found, err = self._lookup(key, api[3])
            if err:
                return self._error(h, err)
            sha, files = found
            data = json.dumps({"id": api[2], "sha": sha,
                               "siblings": [self.meta(n, b) for n, b in sorted(files.items())]}).encode()
            h.send_response(200)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            if body:
                h.wfile.write(data)
            return
        res = re.fullmatch(r"/((?:datasets/)?[^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if not res:
            return self._error(h, "RepoNotFound")
        found, err = self._lookup(res[1], res[2])
        if err:
            return self._error(h, err)
        sha, files = found
        name = res[3]
        if name not in files:
            return self._error(h, "EntryNotFound", sha)
        data = files[name]
        etag = hashlib.sha256(data).hexdigest() if name.endswith(LFS_SUFFIXES) else git_oid(data)
        if name in self.corrupt:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        start = 0
        rng = h.headers.get("Range")
        if body and rng:
            start = int(re.fullmatch(r"bytes=(\d+)-\d*", rng)[1])
        h.send_response(206 if start else 200)
        h.send_header("X-Repo-Commit", sha)
        h.send_header("ETag", f'"{etag}"')
        h.send_header("Accept-Ranges", "bytes")
        if start:
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        h.send_header("Content-Length", str(len(data) - start))
        h.end_headers()
        if not body:
            return
        if name in self.drop_once and not start:
            self.drop_once.discard(name)
            h.wfile.write(data[: len(data) // 2])
            h.wfile.flush()
            h.connection.shutdown(socket.SHUT_RDWR)
            h.close_connection = True
            return
        h.wfile.write(data[start:])
