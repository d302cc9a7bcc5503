"""Who may use the gateway: API keys, per-key models, rate limits and budgets.

A `Keyring` is built from `[entitlements]` (and its `keys_file`). Each
request presents a key as `Authorization: Bearer <key>` or `x-api-key:
<key>`; `authenticate` finds it by comparing SHA-256 digests with
`hmac.compare_digest` against every configured key (so neither timing nor a
key's length tells anything) and answers the request's `Principal`, or None
for an anonymous caller. The rules:

- no keys and `require_auth` off: everything is open (the quick start);
- otherwise `/admin/*` needs a key marked `admin` (401 without a valid key,
  403 with a key that is not an admin's), and the API routes need a valid
  key when `require_auth` is on (401); with it off, callers without a valid
  key are served anonymously, without limits (upstream's rule);
- `/health`, `/` and `/version` are always public, and so is the dashboard's
  static page under `/ui` (it holds no data; it asks the API with a key).

`admit` is asked once the model is known: a model the key may not use is a
404 `model_not_found` worded like an unknown model (a key learns nothing of
models it may not use); a spent budget is 429 `insufficient_quota`; a rate
limit is 429 `rate_limit_exceeded` with `Retry-After`. Tokens are charged
when the request ends, from the usage the meter reads off the node's answer
(`Grant.settle`): a request is admitted while the key has budget left, so
requests in flight together may take it past its cap by what they use.
Counts live in memory and start again when the gateway restarts.

Keys are never logged: a key is named by its `key_id`, an unknown one by
`key_hash` (the first 8 hex digits of its SHA-256).

Also here: `NeuronTokens`, which puts each neuron's `[auth] token` on the
gateway's requests to that neuron, and `open_warning`, the start-up warning
for a gateway anyone on the network can use.

Not for: route handling (`cortex.http` calls these) or usage parsing
(`cortex.meter`).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import math
from collections.abc import Generator, Iterable, Mapping
from typing import Any

import attrs
import httpx
import trio

from cortex.config import ApiKey, CortexConfig, Entitlements
from cortex.config import Neuron as NeuronConfig
from cortex.fleet_snapshot import Catalogue
from cortex.placement import resolve_alias
from protocol import decode_json, encode_json
from protocol.errors import (
    AuthenticationFailed,
    NotFound,
    PermissionDenied,
    QuotaExceeded,
    RateLimited,
)
from protocol.ids import ModelId
from protocol.models import ModelList

__all__ = [
    "PUBLIC_PATHS",
    "PUBLIC_PREFIXES",
    "Grant",
    "Keyring",
    "NeuronTokens",
    "Principal",
    "key_hash",
    "open_warning",
    "presented_key",
    "with_usage",
]

log = logging.getLogger(__name__)

PUBLIC_PATHS = frozenset({"/health", "/", "/version", "/ui"})
PUBLIC_PREFIXES = ("/ui/",)  # the dashboard's files (cortex.ui.routes)
_MISSING = "missing API key; send 'Authorization: Bearer <key>' or 'x-api-key: <key>'"
# A request the client abandoned without a usage report is charged its prompt estimate.
_UNREPORTED = frozenset({"cancelled", "stream_error"})


@attrs.frozen
class Principal:
    """The key a request came with; `models` is None when every model is allowed."""

    key_id: str
    account_id: str
    admin: bool = False
    models: frozenset[ModelId] | None = None
    slot: int = attrs.field(default=0, repr=False)  # which configured key: its own counts


def presented_key(headers: Mapping[str, str]) -> str | None:
    """`Authorization: Bearer <key>` (scheme in any case), else `x-api-key`."""
    scheme, _, token = headers.get("authorization", "").strip().partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return headers.get("x-api-key", "").strip() or None


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "replace")).digest()


def key_hash(key: str) -> str:
    """What the logs call a key that is not configured: a short digest, never the key."""
    return _digest(key).hex()[:8]


class _Window:
    """A fixed window of `seconds` opened by the first use after the last one ended."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.start: float | None = None
        self.requests = 0
        self.tokens = 0

    def roll(self, now: float) -> _Window:
        if self.start is None or now >= self.start + self.seconds:
            self.start, self.requests, self.tokens = now, 0, 0
        return self

    def retry_after(self, now: float) -> float:
        assert self.start is not None
        return max(1.0, math.ceil(self.start + self.seconds - now))


class _Ledger:
    """One key's counts. Touched only synchronously (no checkpoint mid-update)."""

    def __init__(self, key: ApiKey, name: str) -> None:
        self.name = name
        self.hard_cap = key.hard_cap
        self.spent = 0
        rolling = key.window.kind == "rolling" and key.window.seconds
        self.cap_window = _Window(float(key.window.seconds)) if rolling else None
        limit = key.rate_limit
        self.rate = _Window(limit.seconds) if limit else None
        self.max_requests = limit.requests if limit else None
        self.max_tokens = limit.tokens if limit else None

    @property
    def metered(self) -> bool:
        return self.hard_cap is not None or self.max_tokens is not None

    def admit(self, now: float) -> None:
        """Count one request, or raise the refusal."""
        if self.hard_cap is not None:
            self._check_cap(now)
        if self.rate is not None:
            window = self.rate.roll(now)
            if self.max_requests is not None and window.requests >= self.max_requests:
                self._limited(window, now, f"{self.max_requests} requests")
            if self.max_tokens is not None and window.tokens >= self.max_tokens:
                self._limited(window, now, f"{self.max_tokens} tokens")
            window.requests += 1

    def _check_cap(self, now: float) -> None:
        assert self.hard_cap is not None
        if self.cap_window is None and self.spent >= self.hard_cap:
            raise QuotaExceeded(f"the token budget of key {self.name!r} is spent "
                                f"({self.spent} of {self.hard_cap} tokens)")  # fmt: skip
        if self.cap_window is not None and self.cap_window.roll(now).tokens >= self.hard_cap:
            self._limited(self.cap_window, now, f"{self.hard_cap} tokens")

    def _limited(self, window: _Window, now: float, what: str) -> None:
        wait = window.retry_after(now)
        raise RateLimited(f"key {self.name!r} is limited to {what} per {window.seconds:g} s; "
                          f"retry in {wait:g} s", retry_after=wait)  # fmt: skip

    def charge(self, tokens: int, now: float) -> None:
        self.spent += tokens
        for window in (self.cap_window, self.rate):
            if window is not None:
                window.roll(now).tokens += tokens


class Grant:
    """One admitted request's account: `settle` charges what it used, once."""

    def __init__(self, ledger: _Ledger, estimate: int) -> None:
        self._ledger = ledger
        self._estimate = estimate
        self._settled = False

    @property
    def metered(self) -> bool:
        """Tokens matter for this key: the request must report its usage."""
        return self._ledger.metered

    def settle(self, tokens: int, outcome: str) -> None:
        """Charge `tokens` (the usage the node reported); a request that ended without
        a report after the node answered is charged its prompt estimate."""
        if self._settled:
            return
        self._settled = True
        if tokens <= 0 and outcome in _UNREPORTED:
            tokens = self._estimate
        if tokens > 0:
            self._ledger.charge(tokens, trio.current_time())


class Keyring:
    def __init__(self, entitlements: Entitlements, catalogue: Catalogue) -> None:
        self.require_auth = entitlements.require_auth
        self.enforcing = entitlements.require_auth or bool(entitlements.keys)
        self._catalogue = catalogue
        self._keys: list[tuple[bytes, Principal]] = []
        self._ledgers: list[_Ledger] = []  # by slot: keys sharing a key_id count apart
        for slot, key in enumerate(entitlements.keys):
            principal = self._principal(key, slot)
            self._keys.append((_digest(key.key), principal))
            self._ledgers.append(_Ledger(key, principal.key_id))

    def _principal(self, key: ApiKey, slot: int) -> Principal:
        models = None
        if key.models is not None:
            models = frozenset(resolve_alias(self._catalogue, m) for m in key.models)
        return Principal(key_id=key.key_id or key.account_id, account_id=key.account_id,
                         admin=key.admin, models=models, slot=slot)  # fmt: skip

    def _match(self, given: str) -> Principal | None:
        digest, found = _digest(given), None
        for stored, principal in self._keys:  # every key, whichever matches
            if hmac.compare_digest(digest, stored):
                found = principal
        return found

    def authenticate(self, headers: Mapping[str, str], path: str) -> Principal | None:
        """The request's principal; None for anonymous; or the 401/403 to answer."""
        if path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES) or not self.enforcing:
            return None
        given = presented_key(headers)
        principal = self._match(given) if given else None
        if given and principal is None:
            log.info("unknown API key key_hash=%s path=%s", key_hash(given), path)
        admin = path == "/admin" or path.startswith("/admin/")
        if principal is None and (admin or self.require_auth):
            raise AuthenticationFailed("invalid API key" if given else _MISSING)
        if admin and principal is not None and not principal.admin:
            raise PermissionDenied(f"key {principal.key_id!r} may not use admin routes")
        return principal

    def allows(self, principal: Principal | None, model: str) -> bool:
        if principal is None or principal.models is None:
            return True
        return resolve_alias(self._catalogue, model) in principal.models

    def admit(self, principal: Principal | None, requested: str, model: ModelId, *,
              estimate: int = 0) -> Grant | None:  # fmt: skip
        """Count one request for `model` (asked for as `requested`) against its key.

        None for an anonymous caller; raises 404 / 429 when the key may not."""
        if principal is None:
            return None
        if not self.allows(principal, model):
            raise NotFound(f"model {requested!r} not found on any node and not in catalogue",
                           code="model_not_found")  # fmt: skip
        ledger = self._ledgers[principal.slot]
        ledger.admit(trio.current_time())
        return Grant(ledger, estimate)

    def visible(self, principal: Principal | None, models: ModelList) -> ModelList:
        """`/v1/models` as this key may see it: only the models (and aliases) it may use."""
        if principal is None or principal.models is None:
            return models
        return attrs.evolve(models, data=tuple(c for c in models.data
                                               if self.allows(principal, c.id)))  # fmt: skip


def with_usage(raw: bytes) -> bytes:
    """A streaming body that opted out of the usage chunk, opted back in: a metered
    key's tokens are counted from it."""
    if b"include_usage" not in raw:
        return raw
    data = decode_json(raw)
    options = data.get("stream_options") if isinstance(data, dict) else None
    if isinstance(options, dict) and options.get("include_usage") is False:
        options["include_usage"] = True
        return encode_json(data)
    return raw


class NeuronTokens(httpx.Auth):
    """Adds `Authorization: Bearer <token>` to the gateway's requests to each neuron
    that has a token (its own `token`, else `[fleet] neuron_token`)."""

    def __init__(self, neurons: Iterable[NeuronConfig], default: str | None = None) -> None:
        # (scheme, host, port) → [(endpoint path, token)], in the config's order: one
        # look-up per request, however many neurons there are
        self._tokens: dict[tuple[str, str, int | None], list[tuple[str, str]]] = {}
        for neuron in neurons:
            token = neuron.token or default
            if token:
                base = httpx.URL(neuron.endpoint.rstrip("/") + "/")
                origin = (base.scheme, base.host, base.port)
                self._tokens.setdefault(origin, []).append((base.path, token))

    def __bool__(self) -> bool:
        return bool(self._tokens)

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, Any, None]:
        if token := self.token_for(request.url):
            request.headers["Authorization"] = f"Bearer {token}"
        yield request

    def token_for(self, url: httpx.URL | str) -> str | None:
        """The token for a request to `url` (the relay's client asks by URL)."""
        if isinstance(url, str):
            url = httpx.URL(url)
        for path, token in self._tokens.get((url.scheme, url.host, url.port), ()):
            if (url.path + "/").startswith(path):
                return token
        return None


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


def open_warning(config: CortexConfig, url: str) -> str | None:
    """The warning for a gateway listening beyond loopback that serves callers without
    a key; None when it does not."""
    host, _ = config.gateway.listen_address
    entitlements = config.entitlements
    if _loopback(host) or entitlements.require_auth:
        return None
    where = f"listen={config.gateway.listen} url={url}"
    if entitlements.keys:
        return (f"gateway listens beyond loopback ({where}) with require_auth off: callers "
                "without a valid API key are served, without limits; set [entitlements] "
                "require_auth = true")  # fmt: skip
    return (f"gateway listens beyond loopback ({where}) with no API key configured: anyone "
            "who can reach it can use every model and every /admin route; add "
            "[[entitlements.keys]] and require_auth = true, or listen on 127.0.0.1")  # fmt: skip
