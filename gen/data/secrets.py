"""What counts as a secret, and how to keep secrets out of everything kdforge writes: the run config in
`manifest.json`, shards, error lines, logs, the dataset card and the files `gen publish` uploads.

Three rules, used by every writer (one list, so a variable the manifest lets through is not caught only at upload):

- **By value, from the environment.** The value of every environment variable named like a credential
  (`*_API_KEY`, `*_TOKEN`, `*_SECRET`, `*_PASSWORD`, ... — `GEMINI_API_KEY` and `MISTRAL_API_KEY` as much as
  `OPENAI_API_KEY`), of the Hub token variables, and of the key variables the teacher backends declare
  (`declare_secret_env`), is replaced wherever it appears. Values shorter than `MIN_SECRET_LEN` are ignored: "1" or
  "true" would match everywhere and protect nothing.
- **By exact key name in a config.** A config entry whose key IS a secret name (`api_key`, `token`, `password`,
  `hf_token`, `openai_api_key`, ...) is redacted whatever its value. Never by substring: `max_tokens`,
  `bytes_per_token` and `tokenizer_hash` count things and stay numbers.
- **Credentials inside URLs.** `http://user:PASS@host/v1?key=K`: the userinfo and the values of credential query
  parameters are redacted wherever a URL is written (the request itself still uses them).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

REDACTED = "<redacted>"
MIN_SECRET_LEN = 8

# Environment variables that hold credentials although nothing in their name says so generically enough.
KNOWN_SECRET_ENV = frozenset({"HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "OPENAI_API_KEY", "ANTHROPIC_API_KEY"})
# Environment variable names ending like this are credentials (matched on the upper-cased name).
SECRET_ENV_SUFFIXES = ("_API_KEY", "_APIKEY", "_TOKEN", "_SECRET", "_SECRET_KEY", "_ACCESS_KEY", "_PASSWORD",
                       "_PASSWD", "_CREDENTIALS")

# Config keys (and URL query parameters) that name a credential, compared exactly after lower-casing and `-` -> `_`.
SECRET_KEYS = frozenset({
    "key", "api_key", "apikey", "x_api_key", "token", "access_token", "auth_token", "id_token", "refresh_token",
    "hf_token", "secret", "client_secret", "secret_key", "access_key", "password", "passwd", "pwd", "authorization",
    "auth", "credential", "credentials", "bearer", "cookie", "sig", "signature",
})
# Config key endings that always name a credential (`openai_api_key`, `db_password`); `_token` is not among them:
# `bytes_per_token` counts bytes.
SECRET_KEY_SUFFIXES = ("_api_key", "_apikey", "_secret", "_secret_key", "_password", "_access_token",
                       "_auth_token")

_declared_env: set[str] = set()

# A URL inside free text (an error message, a log line, a config value).
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s\"'<>`]+")


def declare_secret_env(*names: str) -> None:
    """Treat these environment variables as secrets too (the teacher backends declare their key variables here)."""
    _declared_env.update(name for name in names if name)


def is_secret_env_name(name: str) -> bool:
    """Whether an environment variable's value is a credential, by its name."""
    upper = name.upper()
    return upper in KNOWN_SECRET_ENV or name in _declared_env or upper.endswith(SECRET_ENV_SUFFIXES)


def environment_secrets(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """{variable name: value} of every credential in the environment (values of at least MIN_SECRET_LEN chars)."""
    environ = os.environ if environ is None else environ
    return {name: value for name, value in environ.items()
            if is_secret_env_name(name) and len((value or "").strip()) >= MIN_SECRET_LEN}


def is_secret_key(name: Any) -> bool:
    """Whether a config key names a credential: an exact secret name (or a secret environment variable's name, as
    in `openai_api_key`), never a substring (`max_tokens`, `bytes_per_token` are not secrets)."""
    if not isinstance(name, str):
        return False
    key = name.strip().lower().replace("-", "_")
    return (key in SECRET_KEYS or key.endswith(SECRET_KEY_SUFFIXES) or key.upper() in KNOWN_SECRET_ENV
            or key.upper() in _declared_env)


def redact_url(url: str) -> str:
    """`url` with its userinfo and the values of credential query parameters replaced by REDACTED. A string that
    does not parse as a URL is returned as it is."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{REDACTED}@{netloc.rsplit('@', 1)[1]}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(is_secret_key(name) for name, _ in pairs):
            query = urlencode([(name, REDACTED if is_secret_key(name) else value) for name, value in pairs],
                              safe="<>")
    if netloc == parts.netloc and query == parts.query:
        return url
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def url_has_credentials(url: str) -> bool:
    return redact_url(url) != url


def scrub_text(text: str, secrets: Mapping[str, str] | None = None) -> str:
    """`text` with every environment secret's value and every URL credential replaced by REDACTED."""
    secrets = environment_secrets() if secrets is None else secrets
    for value in sorted(secrets.values(), key=len, reverse=True):  # longest first: one key may contain another
        if value in text:
            text = text.replace(value, REDACTED)
    if "://" in text:
        text = _URL.sub(lambda match: redact_url(match.group(0)), text)
    return text


def redact(value: Any, secrets: Mapping[str, str] | None = None) -> Any:
    """A copy of a config (nested dicts, lists, strings, numbers) fit to be written anywhere: entries whose key is a
    secret name are REDACTED, strings are scrubbed (`scrub_text`); numbers and flags are kept as they are."""
    secrets = environment_secrets() if secrets is None else secrets
    if isinstance(value, Mapping):
        return {k: (REDACTED if is_secret_key(k) and v not in (None, "", False) else redact(v, secrets))
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v, secrets) for v in value]
    if isinstance(value, str):
        return scrub_text(value, secrets)
    return value


def find_secret(text: str, secrets: Mapping[str, str]) -> str | None:
    """The name of the first secret whose value occurs in `text` (None when none does); never the value."""
    for name, value in secrets.items():
        if value in text:
            return name
    return None
