"""A real local HTTP server speaking the slice of the Hugging Face Hub API that `HfApi(endpoint=...)` uses to create
a dataset repo and push one commit (huggingface_hub 2.x, LFS "basic" transfer), recording every request.

Endpoints (as huggingface_hub 2.4 calls them, read from its `hf_api.py`, `_commit_api.py` and `lfs.py`):

    POST /api/repos/create                                   create_repo (409 if it exists -> exist_ok)
    GET  /api/datasets/<ns>/<name>/tree/<rev>[/<path>]       list_repo_tree (recursive=true)
    GET  /api/datasets/<ns>/<name>/revision/<rev>            repo_info (create_commit calls it for a no-op commit)
    POST /api/validate-yaml                                  README.md front matter check before any upload
    POST /api/datasets/<ns>/<name>/preupload/<rev>           upload mode per file (regular / lfs) + remote oid
    POST /datasets/<ns>/<name>.git/info/lfs/objects/batch    LFS batch: upload + verify actions for new objects
                                                             (model repos: /<ns>/<name>.git/..., no type prefix)
    PUT  /lfs-objects/<sha256>                               the LFS upload itself (checked against its sha256)
    POST /lfs-verify                                         LFS verify
    POST /api/datasets/<ns>/<name>/commit/<rev>              the commit: ndjson header + file / lfsFile / deleted*

Files whose name matches the repo's `.gitattributes` LFS patterns (or that look binary, or are > 10 MB) are LFS, as
on the Hub; everything else is a regular file sent base64 inside the commit. A request without the expected
`Authorization: Bearer <token>` gets 401. The Xet protocol is not implemented: clients must run with xet disabled
(`HF_HUB_DISABLE_XET=1`), which makes huggingface_hub use the LFS path above.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from fnmatch import fnmatch
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

LFS_PATTERNS = ("*.parquet", "*.arrow", "*.png", "*.jpg", "*.bin", "*.safetensors", "*.gguf")
GITATTRIBUTES = "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in LFS_PATTERNS).encode()
LFS_SIZE_LIMIT = 10 * 1024 * 1024


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(data: bytes) -> bytes:
    oid = hashlib.sha256(data).hexdigest()
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {len(data)}\n".encode()


@dataclass
class Recorded:
    """One request as the server saw it. `headers` keys are lowercase."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes


@dataclass
class Commit:
    oid: str
    summary: str
    description: str
    added: list[str]
    lfs: list[str]
    deleted: list[str]


@dataclass
class Repo:
    repo_id: str
    repo_type: str
    private: bool
    files: dict[str, bytes] = field(default_factory=dict)
    lfs_paths: set[str] = field(default_factory=set)
    commits: list[Commit] = field(default_factory=list)

    @property
    def head(self) -> str:
        return self.commits[-1].oid if self.commits else "0" * 40

    def is_lfs(self, path: str, size: int, sample: bytes) -> bool:
        name = path.rsplit("/", 1)[-1]
        return any(fnmatch(name, p) for p in LFS_PATTERNS) or size > LFS_SIZE_LIMIT or b"\0" in sample

    def oid(self, path: str) -> str:
        """What the Hub reports as a file's oid in preupload: sha256 for LFS files, git blob sha1 otherwise."""
        data = self.files[path]
        return hashlib.sha256(data).hexdigest() if path in self.lfs_paths else git_blob_sha1(data)


class HubServer:
    """Start with `with HubServer(token) as hub:`; `hub.url` is the endpoint; `hub.requests` every request."""

    def __init__(self, token: str):
        self.token = token
        self.requests: list[Recorded] = []
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lfs_store: dict[str, bytes] = {}
        self.lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> HubServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def repo(self, repo_id: str, repo_type: str = "dataset") -> Repo:
        return self.repos[(repo_type, repo_id)]

    def requests_to(self, method: str, pattern: str) -> list[Recorded]:
        return [r for r in self.requests if r.method == method and re.search(pattern, r.path)]

    # ------------------------------------------------------------------------------------------------- handlers

    def handle(self, req: Recorded) -> tuple[int, dict[str, str], Any]:
        """Route one request: returns (status, extra headers, JSON-able body)."""
        path = req.path
        if req.method == "PUT" and path.startswith("/lfs-objects/"):
            return self._lfs_put(path.rsplit("/", 1)[1], req.body)
        if req.headers.get("authorization") != f"Bearer {self.token}":
            return 401, {"X-Error-Message": "Invalid credentials"}, {"error": "Invalid credentials in Authorization header"}
        if req.method == "POST" and path == "/api/repos/create":
            return self._create_repo(json.loads(req.body))
        if req.method == "POST" and path == "/api/validate-yaml":
            return self._validate_yaml(json.loads(req.body))
        if req.method == "POST" and path == "/lfs-verify":
            oid = json.loads(req.body)["oid"]
            return (200, {}, {"success": True}) if oid in self.lfs_store else (404, {}, {"error": "unknown object"})
        # model repos have no type prefix (`gen train --push-to-hub`)
        m = re.fullmatch(r"/(?:(?P<type>datasets|spaces)/)?(?P<repo>[^/]+/[^/]+)\.git/info/lfs/objects/batch", path)
        if m and req.method == "POST":
            return self._lfs_batch(json.loads(req.body))
        m = re.fullmatch(r"/api/(?P<type>models|datasets|spaces)/(?P<repo>[^/]+/[^/]+)/(?P<verb>tree|revision|preupload|commit)"
                         r"/(?P<rev>[^/]+)(?P<sub>/.*)?", path)
        if not m:
            return 404, {}, {"error": f"no route for {req.method} {path}"}
        repo = self.repos.get((m["type"][:-1], m["repo"]))
        if repo is None:
            return 404, {"X-Error-Code": "RepoNotFound"}, {"error": "Repository not found"}
        if unquote(m["rev"]) != "main":
            return 404, {"X-Error-Code": "RevisionNotFound"}, {"error": "Invalid rev id"}
        verb = m["verb"]
        if verb == "tree" and req.method == "GET":
            return self._tree(repo, unquote(m["sub"] or "").lstrip("/"), req.query)
        if verb == "revision" and req.method == "GET":
            return 200, {}, {"id": repo.repo_id, "sha": repo.head, "private": repo.private,
                             "siblings": [{"rfilename": p} for p in sorted(repo.files)]}
        if verb == "preupload" and req.method == "POST":
            return self._preupload(repo, json.loads(req.body))
        if verb == "commit" and req.method == "POST":
            return self._commit(repo, req.body)
        return 405, {}, {"error": "method not allowed"}

    def _create_repo(self, payload: dict) -> tuple[int, dict, Any]:
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload['organization']}/{payload['name']}" if payload.get("organization") else payload["name"]
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        url = f"{self.url}/{prefix}{repo_id}"
        if (repo_type, repo_id) in self.repos:
            return 409, {}, {"error": "You already created this repo", "url": url}
        repo = Repo(repo_id, repo_type, payload.get("visibility") == "private")
        # The Hub creates every repo with a first commit holding the default .gitattributes.
        repo.files[".gitattributes"] = GITATTRIBUTES
        repo.commits.append(Commit(hashlib.sha1(repo_id.encode()).hexdigest(), "initial commit", "",
                                   [".gitattributes"], [], []))
        self.repos[(repo_type, repo_id)] = repo
        return 200, {}, {"url": url, "name": repo_id}

    def _validate_yaml(self, payload: dict) -> tuple[int, dict, Any]:
        content = payload.get("content", "")
        match = re.match(r"^---\n(.*?\n)---\n", content, re.S)
        try:
            meta = yaml.safe_load(match.group(1)) if match else {}
        except yaml.YAMLError as exc:
            return 400, {}, {"errors": [{"message": f"YAML: {exc}"}], "warnings": []}
        errors = []
        for config in (meta or {}).get("configs", []) or []:
            if "config_name" not in config or "data_files" not in config:
                errors.append({"message": f"configs: entry without config_name/data_files: {config}"})
        return (400 if errors else 200), {}, {"errors": errors, "warnings": []}

    def _tree(self, repo: Repo, sub: str, query: dict) -> tuple[int, dict, Any]:
        recursive = (query.get("recursive") or ["false"])[0].lower() == "true"
        prefix = f"{sub.rstrip('/')}/" if sub else ""
        entries, folders = [], set()
        for path in sorted(repo.files):
            if not path.startswith(prefix):
                continue
            rest = path[len(prefix):]
            if "/" in rest and not recursive:
                folders.add(prefix + rest.split("/", 1)[0])
                continue
            if recursive:
                parts = rest.split("/")[:-1]
                folders.update(prefix + "/".join(parts[: i + 1]) for i in range(len(parts)))
            data = repo.files[path]
            entry: dict[str, Any] = {"type": "file", "path": path, "size": len(data)}
            if path in repo.lfs_paths:
                pointer = lfs_pointer(data)
                entry["oid"] = git_blob_sha1(pointer)
                entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": len(pointer)}
            else:
                entry["oid"] = git_blob_sha1(data)
            entries.append(entry)
        if sub and not entries and not folders:
            return 404, {"X-Error-Code": "EntryNotFound"}, {"error": f"{sub} does not exist"}
        dirs = [{"type": "directory", "path": d, "size": 0, "oid": hashlib.sha1(d.encode()).hexdigest()}
                for d in sorted(folders)]
        return 200, {}, dirs + entries

    def _preupload(self, repo: Repo, payload: dict) -> tuple[int, dict, Any]:
        files = []
        for item in payload["files"]:
            path, size = item["path"], int(item["size"])
            sample = base64.b64decode(item.get("sample", ""))
            files.append({
                "path": path,
                "uploadMode": "lfs" if repo.is_lfs(path, size, sample) else "regular",
                "shouldIgnore": False,
                "oid": repo.oid(path) if path in repo.files else None,
            })
        return 200, {}, {"files": files}

    def _lfs_batch(self, payload: dict) -> tuple[int, dict, Any]:
        objects = []
        for obj in payload["objects"]:
            oid, size = obj["oid"], int(obj["size"])
            if oid in self.lfs_store:
                objects.append({"oid": oid, "size": size})  # already stored: no actions, the client skips it
            else:
                objects.append({"oid": oid, "size": size, "authenticated": True, "actions": {
                    "upload": {"href": f"{self.url}/lfs-objects/{oid}"},
                    "verify": {"href": f"{self.url}/lfs-verify"},
                }})
        return 200, {}, {"transfer": "basic", "objects": objects}

    def _lfs_put(self, oid: str, body: bytes) -> tuple[int, dict, Any]:
        if hashlib.sha256(body).hexdigest() != oid:
            return 400, {}, {"error": "sha256 mismatch"}
        self.lfs_store[oid] = body
        return 200, {}, {}

    def _commit(self, repo: Repo, body: bytes) -> tuple[int, dict, Any]:
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            return 400, {}, {"error": "commit payload must start with a header"}
        header = lines[0]["value"]
        files = dict(repo.files)
        lfs_paths = set(repo.lfs_paths)
        added, lfs, deleted = [], [], []
        for line in lines[1:]:
            key, value = line["key"], line["value"]
            path = value["path"]
            if key == "file":
                files[path] = base64.b64decode(value["content"])
                lfs_paths.discard(path)
                added.append(path)
            elif key == "lfsFile":
                data = self.lfs_store.get(value["oid"])
                if data is None:
                    return 422, {}, {"error": f"LFS object {value['oid']} for {path} was never uploaded"}
                files[path] = data
                lfs_paths.add(path)
                lfs.append(path)
            elif key == "deletedFile":
                if path not in files:
                    return 404, {"X-Error-Code": "EntryNotFound"}, {"error": "A file with this name doesn't exist"}
                del files[path]
                lfs_paths.discard(path)
                deleted.append(path)
            elif key == "deletedFolder":
                gone = [p for p in files if p.startswith(path.rstrip("/") + "/")]
                for p in gone:
                    del files[p]
                    lfs_paths.discard(p)
                deleted.extend(gone)
            else:
                return 400, {}, {"error": f"unknown commit operation {key}"}
        oid = hashlib.sha1(repo.head.encode() + body).hexdigest()
        repo.files, repo.lfs_paths = files, lfs_paths
        repo.commits.append(Commit(oid, header.get("summary", ""), header.get("description", ""), added, lfs, deleted))
        prefix = "" if repo.repo_type == "model" else f"{repo.repo_type}s/"
        return 200, {}, {"success": True, "commitOid": oid, "commitUrl": f"{self.url}/{prefix}{repo.repo_id}/commit/{oid}",
                         "pullRequestUrl": None}


def _make_handler(hub: HubServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as httpx expects; every response carries Content-Length

        def _body(self) -> bytes:
            if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                chunks = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass  # trailers
                        return b"".join(chunks)
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _serve(self) -> None:
            parts = urlsplit(self.path)
            req = Recorded(self.command, parts.path, parse_qs(parts.query),
                           {k.lower(): v for k, v in self.headers.items()}, self._body())
            with hub.lock:
                hub.requests.append(req)
                try:
                    status, headers, payload = hub.handle(req)
                except Exception as exc:  # a bug in this fake must surface as a failing request, not a hang
                    status, headers, payload = 500, {}, {"error": f"{type(exc).__name__}: {exc}"}
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = _serve

        def log_message(self, *args: Any) -> None:  # keep pytest output clean
            pass

    return Handler
