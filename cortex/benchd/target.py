"""Talking to one target: its build, host, warm models and health, and swaps.

A neuron is read as upstream reads it: `GET /version` (no answer = the target
is unreachable), `GET /discovery` (optional: host, driver, GPUs), `GET /models`
(warm = status "loaded"), `GET /health` after each sample (summed VRAM used,
highest utilisation and temperature), `POST /models/unload|load` for a swap.
A cortex gateway has `/version` and `/v1/models`. An OpenAI-compatible peer
has only `/models` under its endpoint (which includes `/v1`): its build is the
target's `build` key, else "unknown". httpx's errors become ours here.
Not for: timing requests (`measure`) or choosing them (`scenarios`).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

import attrs
import httpx
import trio

from cortex.benchd.config import Target
from cortex.benchd.errors import RequestFailed, TargetUnreachable

__all__ = ["Build", "HealthReading", "ModelEntry", "TargetClient"]

UNKNOWN = "unknown"
_PROBE_TIMEOUT = 15.0


@attrs.frozen
class Build:
    """What a row is stamped with: the target's build and host."""

    git_sha: str = UNKNOWN
    git_sha_long: str | None = None
    package_version: str | None = None
    git_dirty: bool | None = None
    build_timestamp: str | None = None
    python_version: str | None = None
    torch_version: str | None = None
    transformers_version: str | None = None
    features_json: str | None = None
    hostname: str | None = None
    driver_version: str | None = None
    cuda_version: str | None = None
    gpus_json: str | None = None


@attrs.frozen
class ModelEntry:
    served_id: str  # what requests name
    model_id: str  # what rows and reports name it (an alias applied)
    harness: str | None = None
    capabilities: tuple[str, ...] = ()
    devices: tuple[int, ...] = ()
    dtype: str | None = None
    pinned: bool = False


@attrs.frozen
class HealthReading:
    vram_used_mb: float | None = None
    gpu_util_pct: float | None = None
    gpu_temp_c: float | None = None


@attrs.define
class TargetClient:
    target: Target
    http: httpx.AsyncClient

    @property
    def headers(self) -> dict[str, str]:
        token = self.target.token
        return {"Authorization": f"Bearer {token}"} if token else {}

    @property
    def chat_url(self) -> str:
        base = self.target.endpoint
        return f"{base}/chat/completions" if self.target.kind == "openai" else (
            f"{base}/v1/chat/completions")  # fmt: skip

    async def _get(self, path: str) -> Any:
        try:
            response = await self.http.get(self.target.endpoint + path, headers=self.headers,
                                           timeout=_PROBE_TIMEOUT)  # fmt: skip
        except httpx.HTTPError as exc:
            raise TargetUnreachable(f"GET {path}: {type(exc).__name__}: {exc}") from exc
        if response.status_code != 200:
            raise TargetUnreachable(f"GET {path}: HTTP {response.status_code}")
        try:
            return response.json()
        except ValueError:
            raise TargetUnreachable(f"GET {path}: not JSON") from None

    async def _answers(self, path: str) -> None:
        """TargetUnreachable unless the target answers `GET path` with any status (a peer
        may fail its model list yet serve the models the config names)."""
        try:
            await self.http.get(self.target.endpoint + path, headers=self.headers,
                                timeout=_PROBE_TIMEOUT)  # fmt: skip
        except httpx.HTTPError as exc:
            raise TargetUnreachable(f"GET {path}: {type(exc).__name__}: {exc}") from exc

    # -- build and host ------------------------------------------------------------------

    async def build(self) -> Build:
        """The build stamp; TargetUnreachable when the target does not answer."""
        try:
            return await self._build()
        except (AttributeError, TypeError, KeyError, ValueError) as exc:
            raise TargetUnreachable(f"unexpected build or discovery answer: {exc!r}") from exc

    async def _build(self) -> Build:
        host = urlsplit(self.target.endpoint).hostname
        if self.target.kind == "openai":
            await self._answers("/models")  # reachable at all?
            return Build(git_sha=self.target.build or UNKNOWN, hostname=host)
        version = self._built(await self._get("/version"))
        if self.target.kind == "cortex":
            return attrs.evolve(version, hostname=host)
        try:
            discovery = await self._get("/discovery")
        except TargetUnreachable:
            return attrs.evolve(version, hostname=host)
        return attrs.evolve(version, **_host(discovery, host))

    def _built(self, v: dict[str, Any]) -> Build:
        features = v.get("features")
        return Build(
            git_sha=str(v.get("git_sha") or UNKNOWN),
            git_sha_long=v.get("git_sha_long"),
            package_version=v.get("package_version"),
            git_dirty=v.get("git_dirty"),
            build_timestamp=v.get("build_timestamp"),
            python_version=v.get("python_version"),
            torch_version=v.get("torch_version"),
            transformers_version=v.get("transformers_version"),
            features_json=json.dumps(features) if features else None,
        )

    # -- models ----------------------------------------------------------------------------

    async def warm_models(self) -> list[ModelEntry]:
        """The models to bench: `models` from the config, else the warm ones."""
        try:
            return await self._warm_models()
        except (AttributeError, TypeError, KeyError, ValueError) as exc:
            raise TargetUnreachable(f"unexpected model list: {exc!r}") from exc

    async def _warm_models(self) -> list[ModelEntry]:
        if self.target.kind == "openai" and self.target.models is not None:
            entries = [ModelEntry(m, m) for m in self.target.models]
        elif self.target.kind == "neuron":
            entries = [_neuron_entry(m) for m in await self._get("/models")
                       if m.get("status") == "loaded"]  # fmt: skip
        else:
            path = "/models" if self.target.kind == "openai" else "/v1/models"
            entries = [_openai_entry(m) for m in (await self._get(path)).get("data", [])
                       if _warm(m)]  # fmt: skip
        if self.target.models is not None and self.target.kind != "openai":
            known = {e.served_id: e for e in entries}
            entries = [known.get(m) or ModelEntry(m, m) for m in self.target.models]
        aliases = self.target.aliases
        return [attrs.evolve(e, model_id=aliases.get(e.served_id, e.served_id)) for e in entries]

    # -- health ----------------------------------------------------------------------------

    async def health(self) -> HealthReading:
        """Summed VRAM, highest utilisation and temperature; empty when unknown."""
        if self.target.kind != "neuron":
            return HealthReading()
        try:
            devices = (await self._get("/health")).get("devices") or []
        except TargetUnreachable:
            return HealthReading()
        return HealthReading(
            vram_used_mb=_total(d.get("vram_used_mb") for d in devices),
            gpu_util_pct=_highest(d.get("utilization_pct") for d in devices),
            gpu_temp_c=_highest(d.get("temp_c") for d in devices),
        )

    # -- swaps -----------------------------------------------------------------------------

    async def swap(self, model: ModelEntry) -> tuple[float, float]:
        """Unload then load `model` again: (unload ms, load ms)."""
        unload = await self._post("/models/unload", {"model_id": model.served_id})
        spec: dict[str, Any] = {"model_id": model.served_id}
        if model.devices:
            spec["devices"] = list(model.devices)
        if model.dtype:
            spec["dtype"] = model.dtype
        load = await self._post("/models/load", spec)
        return unload, load

    async def _post(self, path: str, body: dict[str, Any]) -> float:
        start = trio.current_time()
        try:
            response = await self.http.post(self.target.endpoint + path, json=body,
                                            headers=self.headers)  # fmt: skip
        except httpx.HTTPError as exc:
            raise RequestFailed(f"POST {path}: {type(exc).__name__}: {exc}") from exc
        if response.status_code != 200:
            raise RequestFailed(f"POST {path}: HTTP {response.status_code}: "
                                f"{response.text[:300]}", response.status_code)  # fmt: skip
        return (trio.current_time() - start) * 1000


def _host(discovery: dict[str, Any], fallback: str | None) -> dict[str, Any]:
    devices = discovery.get("devices") or []
    return {
        "hostname": discovery.get("hostname") or fallback,
        "driver_version": discovery.get("driver_version"),
        "cuda_version": discovery.get("cuda_version"),
        "gpus_json": json.dumps(devices) if devices else None,
    }


def _neuron_entry(m: dict[str, Any]) -> ModelEntry:
    return ModelEntry(
        served_id=m["id"], model_id=m["id"], harness=m.get("harness"),
        capabilities=tuple(m.get("capabilities") or ()), devices=tuple(m.get("devices") or ()),
        dtype=m.get("dtype"), pinned=bool(m.get("pinned")),
    )  # fmt: skip


def _openai_entry(m: dict[str, Any]) -> ModelEntry:
    return ModelEntry(served_id=m["id"], model_id=m["id"],
                      capabilities=tuple(m.get("capabilities") or ()))  # fmt: skip


def _warm(m: dict[str, Any]) -> bool:
    """Upstream honours a `loaded` extension on an OpenAI model list."""
    if m.get("loaded") is False:
        return False
    status = m.get("status")
    return status is None or status == "loaded" or isinstance(status, dict)


def _total(values: Any) -> float | None:
    known = [v for v in values if v is not None]
    return float(sum(known)) if known else None


def _highest(values: Any) -> float | None:
    known = [v for v in values if v is not None]
    return float(max(known)) if known else None
