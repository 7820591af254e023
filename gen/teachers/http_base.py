"""`HTTPTeacher`: the one base of the HTTP backends (OpenAI-compatible, Anthropic). It owns what they share:

- the transport choice: `aiohttp` (default; `gen.teachers.lean_http`, ~0.2 ms of client CPU per request) or `sdk`
  (the backend's official SDK over httpx, with whatever the SDK adds); the same requests, completions and errors;
- the server and its credentials: the `base_url` option, else the backend's `*_BASE_URL` variable, else the
  official API; the key from the backend's declared key variable (`BACKEND.key_env`), none for a local server;
  credentials written into the URL itself (`http://user:PASS@host/v1`, `?key=...`) — see `_credentials`;
- the error mapping: every failure of either transport becomes `RateLimited`, `TransientError` or
  `PermanentError` (`gen.teachers.http_client.error_for_status`, `map_sdk_error`); the SDKs never retry
  (`max_retries=0`): the engine owns retries, backoff and concurrency;
- `--base-url URL1,URL2,...`: replicas of one model behind a `gen.teachers.endpoints.EndpointPool` (`from_options`).

A backend subclass says how a request and an answer look on the wire: `key_headers`, `request_body` (aiohttp),
`sdk_client` / `sdk_request` (sdk), `from_json` / `from_sdk`.
"""

from __future__ import annotations

import base64
import importlib
import os
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from gen.data.secrets import redact_url
from gen.errors import UserError
from gen.teachers.backend import Backend
from gen.teachers.base import ChatRequest, Completion, Teacher, TeacherError
from gen.teachers.endpoints import EndpointPool, split_base_urls
from gen.teachers.http_client import (
    DEFAULT_MAX_CONNECTIONS,
    PLACEHOLDER_KEY,
    LoopLocalClient,
    map_sdk_error,
    pooled_http_client,
    shard_count,
)
from gen.teachers.lean_http import JSONPoster

TRANSPORTS = ("aiohttp", "sdk")
DEFAULT_TRANSPORT = "aiohttp"


def check_transport(backend: str, transport: str | None) -> str:
    """The transport option of `--teacher backend:...` (None: the default) -> a valid name, else a UserError."""
    chosen = transport or DEFAULT_TRANSPORT
    if chosen not in TRANSPORTS:
        raise UserError(f"--transport {chosen!r} for the {backend} backend: expected one of {', '.join(TRANSPORTS)}")
    return chosen


def reject_unknown_options(backend: str, options: Mapping[str, Any]) -> None:
    """Options left unset (None) are fine; any other option this backend does not know is a user error."""
    given = sorted(name for name, value in options.items() if value is not None)
    if given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise UserError(f"--teacher {backend}:...: option(s) {flags} do not apply to the {backend} backend")


def _credentials(url: str) -> tuple[str, list[tuple[str, str]], str | None]:
    """`url` -> (the URL without userinfo and query, the query's (name, value) pairs, a Basic auth header or None).

    The userinfo leaves the URL here so that it never reaches an error message, a log line or a manifest, and so
    that aiohttp does not see it: aiohttp turns URL userinfo into its own Authorization header and then refuses the
    request when we set one too ("Cannot combine AUTHORIZATION header with AUTH argument or credentials encoded in
    URL"). The query (which may hold a `key=`) is sent with every request as the server expects.
    """
    parts = urlsplit(url)
    basic = None
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, netloc = netloc.rsplit("@", 1)
        user, _, password = userinfo.partition(":")
        token = base64.b64encode(f"{unquote(user)}:{unquote(password)}".encode()).decode("ascii")
        basic = f"Basic {token}"
    query = parse_qsl(parts.query, keep_blank_values=True)
    return urlunsplit(parts._replace(netloc=netloc, query="", fragment="")), query, basic


class HTTPTeacher(Teacher):
    """One request per `acomplete` over HTTP; the engine keeps many in flight. See the module docstring.

    Subclasses set `backend` and `descriptor` (their `BACKEND`), `base_url_env`, `official_base_url`, `official_host`, `path`
    (appended to the base URL by the aiohttp transport), `sdk_name` / `sdk_error` (the SDK module and its base
    exception) and, when needed, `rate_limit_statuses`.
    """

    descriptor: ClassVar[Backend]
    base_url_env: ClassVar[str]
    official_base_url: ClassVar[str]
    official_host: ClassVar[str]
    path: ClassVar[str]
    sdk_name: ClassVar[str]
    sdk_error: ClassVar[str]
    rate_limit_statuses: ClassVar[frozenset[int]] = frozenset({429})

    def __init__(self, model: str, *, base_url: str | None = None, api_key: str | None = None,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS, transport: str | None = None):
        super().__init__(model)
        self.transport = check_transport(self.backend, transport)
        given = base_url or os.environ.get(self.base_url_env) or None
        query: list[tuple[str, str]] = []
        basic = None
        self.base_url = None  # without userinfo or query; None: the official API
        if given:
            self.base_url, query, basic = _credentials(given)
        # What may be shown of the server: credentials redacted (endpoint summaries, errors).
        self.display_url = redact_url(given or self.official_base_url)
        self._official = self.base_url is None or self.official_host in self.base_url
        self._api_key = api_key if api_key is not None else self._resolve_key()
        headers = {} if self._api_key == PLACEHOLDER_KEY else dict(self.key_headers(self._api_key))
        if basic:
            # Userinfo in --base-url wins over the key variable for the `Authorization` header. A request carries
            # one Authorization header, and the credential written into this very URL is the more specific
            # intent: the key variable is exported for every server (and for other tools), while userinfo is
            # what a Basic-auth gate in front of an OpenAI-compatible server (nginx `auth_basic`, Caddy
            # `basicauth`, as used to expose `vllm serve` or llama.cpp) expects, and what curl, requests and httpx
            # send for such a URL. Keys sent in another header (Anthropic's `x-api-key`) still go along. To send
            # the key as a Bearer token instead, leave the userinfo out of the URL.
            headers.pop("Authorization", None)
            headers["Authorization"] = basic
        self._poster: JSONPoster | None = None
        self._other_posters: dict[str, JSONPoster] = {}
        self._poster_settings = (query, {**self.fixed_headers(), **headers}, max_connections)
        if self.transport == "aiohttp":
            self._poster = self.poster_for(self.path)
            return
        sdk = self._import_sdk()
        self._sdk = sdk
        shards = shard_count(max_connections)
        options: dict[str, Any] = {"api_key": self._api_key, "base_url": self.base_url, "max_retries": 0}
        if basic:
            options["default_headers"] = {"Authorization": basic}  # the SDKs let these override their auth header
        if query:
            options["default_query"] = dict(query)
        self._clients = LoopLocalClient(
            lambda: self.sdk_client(sdk, http_client=pooled_http_client(sdk, -(-max_connections // shards)),
                                    **options), shards=shards)

    def poster_for(self, path: str) -> JSONPoster:
        """The aiohttp transport's poster for another endpoint of the same server (e.g. `/completions`), with the
        same credentials and connection limit; built once per path."""
        if path == self.path and self._poster is not None:
            return self._poster
        if path not in self._other_posters:
            query, headers, max_connections = self._poster_settings
            url = (self.base_url or self.official_base_url).rstrip("/") + path
            if query:
                url += "?" + urlencode(query)
            poster = JSONPoster(url, headers, max_connections=max_connections, backend=self.backend,
                                rate_limit_statuses=self.rate_limit_statuses)
            if path == self.path:
                return poster
            self._other_posters[path] = poster
        return self._other_posters[path]

    # ------------------------------------------------------------------------------------------------ credentials

    def _resolve_key(self) -> str:
        """The key from the first set variable of `descriptor.key_env`; a placeholder for any other server than the
        official one (local servers need none); a one-line UserError naming the variable otherwise."""
        names = self.descriptor.key_env
        for name in names:
            key = os.environ.get(name, "").strip()
            if key:
                return key
        if not self._official:
            return PLACEHOLDER_KEY
        raise UserError(f"{' or '.join(names)} is not set: export it (keys are read from the environment only), "
                        f"or point --base-url at a server that needs none")

    def key_headers(self, key: str) -> Mapping[str, str]:
        """The headers that carry the API key on the aiohttp transport."""
        return {"Authorization": f"Bearer {key}"}

    def fixed_headers(self) -> Mapping[str, str]:
        """Headers every aiohttp request carries besides the credentials (e.g. an API version)."""
        return {}

    # ------------------------------------------------------------------------------------------------ the wire

    def request_body(self, request: ChatRequest) -> dict[str, Any]:
        raise NotImplementedError

    def from_json(self, body: Any, request: ChatRequest) -> Completion:
        raise NotImplementedError

    def sdk_client(self, sdk: Any, **options: Any) -> Any:
        raise NotImplementedError

    async def sdk_request(self, client: Any, request: ChatRequest, timeout: float) -> Any:
        raise NotImplementedError

    def from_sdk(self, response: Any, request: ChatRequest) -> Completion:
        raise NotImplementedError

    def _import_sdk(self) -> Any:
        try:
            return importlib.import_module(self.sdk_name)
        except ImportError as exc:  # a core dependency, but say which one if a trimmed install lacks it
            raise UserError(f"the {self.backend} backend's sdk transport needs the '{self.sdk_name}' package: "
                            f"pip install {self.sdk_name}") from exc

    async def acomplete(self, request: ChatRequest, timeout: float) -> Completion:
        if self._poster is not None:
            return self.from_json(await self._poster.post(self.request_body(request), timeout), request)
        client = await self._clients.get()
        try:
            response = await self.sdk_request(client, request, timeout)
            return self.from_sdk(response, request)
        except TeacherError:
            raise
        # Every SDK/transport failure and every undecodable body becomes one of the engine's three classes;
        # anything else is a bug here and must surface, not be retried.
        except (getattr(self._sdk, self.sdk_error), ValueError) as exc:
            raise map_sdk_error(self._sdk, exc, self.rate_limit_statuses) from exc

    # ------------------------------------------------------------------------------------------------ lifecycle

    async def aclose(self) -> None:
        """Close the connection pool from inside the event loop that used it (the engine calls this last)."""
        await (self._poster or self._clients).aclose()
        for poster in self._other_posters.values():
            await poster.aclose()

    def close(self) -> None:
        (self._poster or self._clients).close()
        for poster in self._other_posters.values():
            poster.close()

    # ------------------------------------------------------------------------------------------------ building

    @classmethod
    def pool(cls, model: str, base_urls: Sequence[str], *, api_key: str | None = None,
             max_connections: int = DEFAULT_MAX_CONNECTIONS, transport: str | None = None,
             **pool_options: Any) -> EndpointPool:
        """An `EndpointPool` over replicas of `model`, one teacher of this class per URL."""
        return EndpointPool(model, base_urls, lambda url: cls(model, base_url=url, api_key=api_key,
                                                              max_connections=max_connections, transport=transport),
                            **pool_options)

    @classmethod
    def from_options(cls, model: str, *, base_url: str | None = None, max_connections: int | None = None,
                     transport: str | None = None, **unknown: Any) -> Teacher:
        """The `from_spec` of an HTTP backend: options `base_url` (else the backend's `*_BASE_URL`; several
        comma-separated URLs give an `EndpointPool`), `max_connections`, `transport` ("aiohttp" default, or
        "sdk")."""
        reject_unknown_options(cls.descriptor.prefix, unknown)
        connections = max_connections or DEFAULT_MAX_CONNECTIONS
        urls = base_url or os.environ.get(cls.base_url_env) or ""
        if "," in urls:
            return cls.pool(model, split_base_urls(urls), max_connections=connections, transport=transport)
        return cls(model, base_url=base_url, max_connections=connections, transport=transport)
