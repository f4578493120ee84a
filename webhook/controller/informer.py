"""Informer: list + watch one resource into a local cache, calling handlers on every change."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from typing import Any, Callable, Iterable

from ..kube import ApiError, Kube, Resource

log = logging.getLogger("llmaz_serverless.informer")

ObjKey = tuple[str, str]            # (namespace, name) of a cached object ("" namespace: cluster-scoped)

Handler = Callable[[str, "dict[str, Any] | None", "dict[str, Any] | None"], None]


def obj_key(obj: dict[str, Any]) -> ObjKey:
    meta = obj.get("metadata") or {}
    return (meta.get("namespace") or "", meta.get("name") or "")


def _rv_int(obj: dict[str, Any] | None) -> int | None:
    try:
        return int((obj or {}).get("metadata", {}).get("resourceVersion"))
    except (TypeError, ValueError):
        return None


class Informer:
    """List + watch one resource into a local cache and call handlers on changes.

    Handlers get ``(type, new, old)`` with type ADDED / MODIFIED / DELETED (``new`` is None for DELETED).
    A relist (start, or after 410 Gone) is diffed against the cache, so handlers see exactly the changes
    that happened while the watch was down, including deletions. ``synced`` is set after the first list.
    Transport errors back off (0.2 s doubling to ``max_backoff``) and resume watching from the last seen
    resourceVersion.
    """

    def __init__(self, kube: Kube, res: Resource, *, namespace: str | None = None,
                 label_selector: str | None = None, field_selector: str | None = None,
                 transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
                 watch_timeout: int = 300, max_backoff: float = 5.0, name: str | None = None) -> None:
        self.kube = kube
        self.res = res
        self.namespace = namespace
        self.label_selector = label_selector
        self.field_selector = field_selector
        self.transform = transform
        self.watch_timeout = watch_timeout
        self.max_backoff = max_backoff
        self.name = name or res.plural
        self.cache: dict[ObjKey, dict[str, Any]] = {}
        self.handlers: list[Handler] = []
        self.on_synced: list[Callable[[], None]] = []
        self.synced = asyncio.Event()
        self.resource_version = ""
        self.relists = 0
        self.errors = 0

    def reset(self) -> None:
        """Forget everything (its API went away); the next ``run`` starts with a fresh list."""
        self.cache = {}
        self.synced = asyncio.Event()
        self.resource_version = ""

    def add_handler(self, handler: Handler) -> None:
        self.handlers.append(handler)

    def get(self, namespace: str | None, name: str) -> dict[str, Any] | None:
        return self.cache.get((namespace or "", name))

    def values(self) -> Iterable[dict[str, Any]]:
        return list(self.cache.values())

    def _t(self, obj: dict[str, Any]) -> dict[str, Any]:
        return self.transform(obj) if self.transform else obj

    def put_local(self, obj: dict[str, Any]) -> None:
        """Write-through after our own write (the watch event follows); never goes backwards."""
        obj = self._t(obj)
        key = obj_key(obj)
        old = self.cache.get(key)
        new_rv, old_rv = _rv_int(obj), _rv_int(old)
        if old is None or new_rv is None or old_rv is None or new_rv >= old_rv:
            self.cache[key] = obj

    def remove_local(self, namespace: str | None, name: str) -> None:
        self.cache.pop((namespace or "", name), None)

    def _emit(self, typ: str, new: dict[str, Any] | None, old: dict[str, Any] | None) -> None:
        for h in self.handlers:
            try:
                h(typ, new, old)
            except Exception:  # noqa: BLE001
                log.exception("%s handler failed on %s", self.name, typ)

    def _replace(self, items: list[dict[str, Any]], *, transformed: bool = False) -> None:
        fresh = {}
        for raw in items:
            obj = raw if transformed else self._t(raw)
            fresh[obj_key(obj)] = obj
        old_cache = self.cache
        self.cache = fresh
        for key, obj in fresh.items():
            old = old_cache.get(key)
            if old is None:
                self._emit("ADDED", obj, None)
            elif (old.get("metadata") or {}).get("resourceVersion") != (obj.get("metadata") or {}).get(
                    "resourceVersion"):
                self._emit("MODIFIED", obj, old)
        for key, old in old_cache.items():
            if key not in fresh:
                self._emit("DELETED", None, old)

    def _apply_event(self, event: dict[str, Any]) -> None:
        typ = event.get("type")
        raw = event.get("object") or {}
        rv = (raw.get("metadata") or {}).get("resourceVersion")
        if rv:
            self.resource_version = rv
        if typ == "BOOKMARK":
            return
        obj = self._t(raw)
        key = obj_key(obj)
        old = self.cache.get(key)
        if typ in ("ADDED", "MODIFIED"):
            self.cache[key] = obj
            self._emit("ADDED" if old is None else "MODIFIED", obj, old)
        elif typ == "DELETED":
            self.cache.pop(key, None)
            self._emit("DELETED", None, old or obj)

    async def run(self, stop: asyncio.Event) -> None:
        need_list = True
        backoff = 0.2
        while not stop.is_set():
            try:
                if need_list:
                    result = await self.kube.list(self.res, self.namespace, label_selector=self.label_selector,
                                                  field_selector=self.field_selector, transform=self.transform)
                    self._replace(result.items, transformed=True)
                    self.resource_version = result.resource_version
                    self.relists += 1
                    need_list = False
                    if not self.synced.is_set():
                        self.synced.set()
                        for cb in self.on_synced:
                            cb()
                timeout = int(self.watch_timeout * random.uniform(0.8, 1.2))
                async with contextlib.aclosing(self.kube.watch(
                        self.res, self.namespace, resource_version=self.resource_version,
                        label_selector=self.label_selector, field_selector=self.field_selector,
                        timeout_seconds=timeout)) as events:
                    async for event in events:
                        self._apply_event(event)
                        backoff = 0.2
                        if stop.is_set():
                            return
            except asyncio.CancelledError:
                raise
            except ApiError as exc:
                self.errors += 1
                if exc.status == 410:
                    log.debug("%s: resourceVersion too old, relisting", self.name)
                    need_list = True
                    continue
                transient = exc.status in (0, 429, 500, 502, 503, 504)
                log.log(logging.INFO if transient else logging.WARNING,
                        "%s: list/watch failed (%s); retrying in %.1fs", self.name, exc, backoff)
                if not transient:
                    need_list = True  # e.g. 403 while RBAC settles: start over cleanly
                await sleep_or_stop(stop, backoff * random.uniform(0.8, 1.2))
                backoff = min(self.max_backoff, backoff * 2)
            except Exception:  # noqa: BLE001 - e.g. a malformed event: never let an informer die
                self.errors += 1
                log.exception("%s: watch loop error; relisting", self.name)
                need_list = True
                await sleep_or_stop(stop, backoff)
                backoff = min(self.max_backoff, backoff * 2)


async def sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except asyncio.TimeoutError:
        pass


async def wait_any(*events: asyncio.Event) -> None:
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
