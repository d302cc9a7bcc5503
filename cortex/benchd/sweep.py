"""The sweep: every target x warm model x scenario, measuring only what is missing.

For each target: read its build (no answer → a `probes` row saying it is
unreachable, and on to the next target), then its warm models. For each model
and applicable scenario (one that does not apply gets a `skips` row with the
reason): ask the store which samples this build already has; if it has all
`samples_per_version`, nothing is sent; if none, one unmeasured warm-up
request first; then each missing sample, followed by a `/health` reading and
`iteration_pause_secs`. A failed sample is an `ok = 0` row with its error, and
the sweep leaves that cell and goes on with the next. A new build sha has no
samples, so sampling restarts by itself. Not for: what a scenario sends
(`scenarios`) or how rows are stored (`store`).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import attrs
import httpx
import trio

from cortex.benchd.config import BenchConfig
from cortex.benchd.errors import RequestFailed, TargetUnreachable
from cortex.benchd.scenarios import Context, Scenario, Swap, plan
from cortex.benchd.store import Store, now_iso
from cortex.benchd.target import Build, ModelEntry, TargetClient

__all__ = ["BenchStamp", "SweepResult", "run_forever", "sweep"]

log = logging.getLogger(__name__)


@attrs.frozen
class BenchStamp:
    """This program's own version, stamped on every row."""

    version: str | None = None
    sha: str | None = None

    @classmethod
    def current(cls) -> BenchStamp:
        from importlib.metadata import version

        from protocol.buildinfo import build_info

        return cls(version("helexa"), build_info().git_sha)


@attrs.frozen
class SweepResult:
    rows_added: int = 0
    failed: int = 0
    unreachable: tuple[str, ...] = ()


@attrs.define
class _Sweep:
    config: BenchConfig
    store: Store
    stamp: BenchStamp
    scenarios: list[Scenario]
    added: int = 0
    failed: int = 0

    async def target(self, client: TargetClient) -> bool:
        """One target; False when it was unreachable."""
        target = client.target
        probe = {"target_name": target.name, "target_kind": target.kind,
                 "endpoint": target.endpoint}  # fmt: skip
        try:
            build = await client.build()
            models = await client.warm_models()
        except TargetUnreachable as exc:
            log.warning("target unreachable target=%s: %s", target.name, exc)
            self.store.add_probe({**probe, "reachable": 0, "error": str(exc), "rows_added": 0})
            return False
        before = self.added
        ctx = Context(client, self.config.scenarios, self.config.bench.request_timeout_secs)
        for model in models:
            for scenario in self.scenarios:
                await self.cell(ctx, build, model, scenario)
        self.store.add_probe({**probe, "reachable": 1, "git_sha": build.git_sha,
                              "rows_added": self.added - before})  # fmt: skip
        return True

    async def cell(self, ctx: Context, build: Build, model: ModelEntry, scenario: Scenario) -> None:
        key = (ctx.client.target.name, build.git_sha, model.model_id, scenario.id)
        if reason := scenario.skip_reason(ctx.client, model):
            if self.store.add_skip(*key, reason):
                log.info("skipped target=%s model=%s scenario=%s: %s", *key[::2], key[3], reason)
            return
        have = self.store.ok_samples(*key)
        missing = [i for i in range(self.config.bench.samples_per_version) if i not in have]
        if not missing:
            return
        base = self.row_base(ctx.client, build, model, scenario)
        if not have and scenario.warmup and not await self.warm_up(ctx, model, scenario, base):
            return
        for sample in missing:
            if not await self.sample(ctx, model, scenario, {**base, "sample": sample}):
                return
            await trio.sleep(self.config.bench.iteration_pause_secs)

    async def warm_up(self, ctx: Context, model: ModelEntry, scenario: Scenario,
                      base: dict[str, Any]) -> bool:  # fmt: skip
        try:
            await _measured(ctx, model, scenario)
        except RequestFailed as exc:
            self.fail({**base, "error": f"warm-up: {exc}"})
            return False
        return True

    async def sample(self, ctx: Context, model: ModelEntry, scenario: Scenario,
                     row: dict[str, Any]) -> bool:  # fmt: skip
        try:
            fields = await _measured(ctx, model, scenario)
        except RequestFailed as exc:
            self.fail({**row, "error": str(exc)})
            return False
        health = attrs.asdict(await ctx.client.health())
        if self.store.add_run({**row, **fields, **health, "ok": 1, "ts": now_iso()}):
            self.added += 1
        return True

    def fail(self, row: dict[str, Any]) -> None:
        log.warning("sample failed target=%s model=%s scenario=%s: %s", row["target_name"],
                    row["model_id"], row["scenario_id"], row["error"])  # fmt: skip
        self.store.add_run({**row, "ok": 0, "ts": now_iso()})
        self.failed += 1

    def row_base(self, client: TargetClient, build: Build, model: ModelEntry,
                 scenario: Scenario) -> dict[str, Any]:  # fmt: skip
        target = client.target
        return {
            **attrs.asdict(build), "git_dirty": _flag(build.git_dirty),
            "target_name": target.name, "target_kind": target.kind,
            "endpoint": target.endpoint, "target_label": target.label,
            "bench_version": self.stamp.version, "bench_sha": self.stamp.sha,
            "model_id": model.model_id, "served_model_id": model.served_id,
            "harness": model.harness, "capabilities_json": json.dumps(list(model.capabilities)),
            "devices_json": json.dumps(list(model.devices)), "scenario_id": scenario.id,
        }  # fmt: skip


def _flag(value: bool | None) -> int | None:
    return None if value is None else int(value)


async def _measured(ctx: Context, model: ModelEntry, scenario: Scenario) -> dict[str, Any]:
    try:
        return await scenario.run(ctx, model)
    except trio.TooSlowError:
        raise RequestFailed(f"no answer within request_timeout_secs={ctx.timeout}") from None


async def sweep(config: BenchConfig, store: Store, stamp: BenchStamp, *,
                only_swap: bool = False) -> SweepResult:  # fmt: skip
    """One pass over every target; `only_swap` runs the swap scenario alone (`swap-cost`)."""
    scenarios = [Swap()] if only_swap else list(plan(config.scenarios, swap=config.scenarios.swap))
    state = _Sweep(config, store, stamp, scenarios)
    unreachable = []
    async with httpx.AsyncClient(timeout=config.bench.request_timeout_secs) as http:
        for target in config.targets:
            if not await state.target(TargetClient(target, http)):
                unreachable.append(target.name)
    log.info("sweep done rows_added=%d failed=%d unreachable=%s", state.added, state.failed,
             ",".join(unreachable) or "-")  # fmt: skip
    return SweepResult(state.added, state.failed, tuple(unreachable))


async def run_forever(config: BenchConfig, store: Store, stamp: BenchStamp) -> None:
    """Sweep, then sleep `sweep_interval_secs`, until cancelled."""
    while True:
        await sweep(config, store, stamp)
        await trio.sleep(config.bench.sweep_interval_secs)
