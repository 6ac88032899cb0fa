"""A local HTTP server shaped like the Hugging Face hub, for huggingface_hub's own client
(HF_ENDPOINT=server.url): the routes huggingface_hub 2.x calls for `model_info(files_metadata=
True)` and `hf_hub_download`:

    GET  /api/models/{org}/{name}[/revision/{rev}]   id, sha, siblings (size, blobId, lfs.sha256)
    HEAD /{org}/{name}/resolve/{rev}/{path}          ETag, X-Repo-Commit, X-Linked-Etag/-Size
    GET  /{org}/{name}/resolve/{rev}/{path}          the bytes; Range: bytes=N- resumes

Faults a test asks for: `status[repo] = 401 | 404` (with the hub's X-Error-Code), `tamper`
(a path served with other bytes than its sha256 says), `drop_once` (the first GET of a path
closes the connection halfway). `requests` records (method, path, Range) for assertions.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

LFS_SUFFIXES = (".gguf", ".onnx", ".data", ".bin", ".safetensors")


def _lfs(path: str, data: bytes) -> bool:
    return path.endswith(LFS_SUFFIXES) or len(data) > 100_000


@dataclass
class Repo:
    files: dict[str, bytes]
    commit: str = ""

    def __post_init__(self):
        h = hashlib.sha1()
        for k in sorted(self.files):
            h.update(k.encode() + hashlib.sha256(self.files[k]).digest())
        self.commit = self.commit or h.hexdigest()

    def sibling(self, path: str) -> dict:
        data = self.files[path]
        s = {"rfilename": path, "size": len(data), "blobId": hashlib.sha1(data).hexdigest()}
        if _lfs(path, data):
            s["lfs"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "pointerSize": 134}
        return s


@dataclass
class Hub:
    repos: dict[str, Repo] = field(default_factory=dict)
    status: dict[str, int] = field(default_factory=dict)
    tamper: set[str] = field(default_factory=set)
    drop_once: set[str] = field(default_factory=set)
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)
    url: str = ""

    def add(self, repo: str, files: dict[str, bytes | Path]) -> Repo:
        r = Repo({k: v.read_bytes() if isinstance(v, Path) else v for k, v in files.items()})
        self.repos[repo] = r
        return r


def folder_files(folder: Path, prefix: str = "") -> dict[str, Path]:
    """A model folder's files as repo paths (manifests and logs of oga-npu left out)."""
    skip = {"oga_npu_manifest.json", "prepare.json", ".lock"}
    return {
        prefix + p.relative_to(folder).as_posix(): p
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name not in skip and not ({"stages", "logs"} & set(p.relative_to(folder).parts))
    }


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hub: Hub

    def log_message(self, *a):
        pass

    def _send(self, code: int, body: bytes = b"", headers: dict | None = None, head: bool = False) -> None:
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _error(self, code: int, error_code: str, head: bool) -> None:
        body = json.dumps({"error": error_code}).encode()
        hdrs = {"Content-Type": "application/json", "X-Error-Message": error_code}
        if error_code:
            hdrs["X-Error-Code"] = error_code
        self._send(code, body, hdrs, head)

    def _repo(self, repo: str, head: bool) -> Repo | None:
        code = self.hub.status.get(repo)
        if code == 401:
            self._error(401, "", head)  # the hub's answer for a private repo without a token
            return None
        if code == 403:
            self._error(403, "GatedRepo", head)
            return None
        r = self.hub.repos.get(repo)
        if r is None or code == 404:
            self._error(404, "RepoNotFound", head)
        return r

    def do_GET(self):
        self._route(head=False)

    def do_HEAD(self):
        self._route(head=True)

    def _route(self, head: bool) -> None:
        path = unquote(urlparse(self.path).path)
        self.hub.requests.append((self.command, path, self.headers.get("Range")))
        m = re.match(r"^/api/models/([^/]+/[^/]+?)(?:/revision/([^/]+))?$", path)
        if m:
            return self._info(m.group(1), m.group(2), head)
        m = re.match(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", path)
        if m:
            return self._resolve(m.group(1), m.group(2), m.group(3), head)
        self._error(404, "", head)

    def _info(self, repo: str, rev: str | None, head: bool) -> None:
        r = self._repo(repo, head)
        if r is None:
            return
        if rev not in (None, "main", r.commit):
            return self._error(404, "RevisionNotFound", head)
        body = {
            "id": repo,
            "modelId": repo,
            "sha": r.commit,
            "private": False,
            "siblings": [r.sibling(p) for p in r.files],
        }
        self._send(200, json.dumps(body).encode(), {"Content-Type": "application/json"}, head)

    def _resolve(self, repo: str, rev: str, rel: str, head: bool) -> None:
        r = self._repo(repo, head)
        if r is None:
            return
        if rev not in ("main", r.commit):
            return self._error(404, "RevisionNotFound", head)
        if rel not in r.files:
            return self._error(404, "EntryNotFound", head)
        data = r.files[rel]
        sib = r.sibling(rel)
        etag = sib["lfs"]["sha256"] if "lfs" in sib else sib["blobId"]
        hdrs = {"ETag": f'"{etag}"', "X-Repo-Commit": r.commit, "Accept-Ranges": "bytes"}
        if "lfs" in sib:
            hdrs.update({"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": str(len(data))})
        if f"{repo}/{rel}" in self.hub.tamper:
            data = bytes(b ^ 0xFF for b in data[:16]) + data[16:]
        start = 0
        rng = self.headers.get("Range")
        if rng and not head:
            start = int(re.match(r"bytes=(\d+)-", rng).group(1))
        body = data[start:]
        if head:
            return self._send(200, data, hdrs, head=True)
        key = f"{repo}/{rel}"
        if key in self.hub.drop_once:  # half the bytes, then the connection closes
            self.hub.drop_once.discard(key)
            self.send_response(200)
            for k, v in hdrs.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        if start:
            hdrs["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            return self._send(206, body, hdrs)
        self._send(200, body, hdrs)


class HubServer:
    """`with HubServer() as hub:` a Hub served on a free local port (hub.url)."""

    def __init__(self, hub: Hub | None = None):
        self.hub = hub or Hub()
        handler = type("H", (Handler,), {"hub": self.hub})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.hub.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> Hub:
        self.thread.start()
        return self.hub

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
