"""A small asyncio Kubernetes client on aiohttp, just big enough for the reconciler and the leader election.

Why not the official client: it is synchronous (a thread per watch) and turns every object into a model
class. The reconciler wants plain dicts, streaming watches and server-side apply, on the same event loop
as the admission server. The official ``kubernetes`` package is still used to *load* the configuration
(kubeconfig or in-cluster), so every auth flavour it knows (client certificates, tokens, exec plugins
that produce tokens) works here too.

Addressing: a ``Resource`` is ``(group, version, plural, kind, namespaced)``; every call takes the resource,
a namespace (``None`` for cluster-scoped resources or all namespaces) and a name.

Errors: a non-2xx answer becomes ``ApiError(status, reason, message)``; 404 is ``NotFound``, 409 is
``Conflict``, 410 is ``Gone`` (a watch whose resourceVersion is too old: relist). A transport failure
(refused connection, timeout, reset) is ``ApiUnavailable`` (status 0), so callers catch one family.

Timeouts: every request is bounded (``request_timeout``, default 30 s); a watch is bounded by the server
(``timeoutSeconds``) and by a client read timeout a little longer than that, so a silently dead
connection cannot hang an informer forever.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import json
import logging
import os
import ssl
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, NamedTuple, Sequence
from urllib.parse import quote

import aiohttp

from . import constants as C

log = logging.getLogger("llmaz_serverless.kube")

SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
TOKEN_REFRESH_SECONDS = 60.0
DEFAULT_TIMEOUT = 30.0
USER_AGENT = "llmaz-serverless"


class Resource(NamedTuple):
    group: str          # "" for the core group
    version: str
    plural: str
    kind: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


PLAYGROUNDS = Resource(C.LLMAZ_GROUP, C.LLMAZ_VERSION, "playgrounds", C.KIND_PLAYGROUND)
SERVICES = Resource(C.LLMAZ_GROUP, C.LLMAZ_VERSION, "services", C.KIND_SERVICE)
OPENMODELS = Resource(C.MODEL_GROUP, "v1alpha1", "openmodels", "OpenModel", namespaced=False)
NAMESPACES = Resource("", "v1", "namespaces", "Namespace", namespaced=False)
CONFIGMAPS = Resource("", "v1", "configmaps", "ConfigMap")
EVENTS = Resource("", "v1", "events", "Event")
SCALEDOBJECTS = Resource("keda.sh", "v1alpha1", "scaledobjects", "ScaledObject")
INTERCEPTORROUTES = Resource("http.keda.sh", "v1beta1", "interceptorroutes", "InterceptorRoute")
HPAS = Resource("autoscaling", "v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler")
LEASES = Resource("coordination.k8s.io", "v1", "leases", "Lease")
WORKLOAD_RESOURCES = {C.KIND_PLAYGROUND: PLAYGROUNDS, C.KIND_SERVICE: SERVICES}

PATCH_TYPES = {
    "merge": "application/merge-patch+json",
    "json": "application/json-patch+json",
    "strategic": "application/strategic-merge-patch+json",
    "apply": "application/apply-patch+yaml",
}


# ----------------------------------------------------------------------------------------------- errors


class ApiError(Exception):
    def __init__(self, status: int, reason: str = "", message: str = "") -> None:
        super().__init__(f"{status} {reason}: {message}" if reason or message else str(status))
        self.status = status
        self.reason = reason
        self.message = message


class NotFound(ApiError):
    pass


class Conflict(ApiError):
    pass


class Gone(ApiError):
    """The requested resourceVersion is too old (HTTP 410 or a watch ERROR event with code 410): relist."""


class ApiUnavailable(ApiError):
    """The API server could not be reached or did not answer in time."""


def _error_for(status: int, body: Any) -> ApiError:
    reason, message = "", ""
    if isinstance(body, dict):
        reason = str(body.get("reason") or "")
        message = str(body.get("message") or "")
    elif body:
        message = str(body)[:500]
    cls = {404: NotFound, 409: Conflict, 410: Gone}.get(status, ApiError)
    return cls(status, reason, message)


# ----------------------------------------------------------------------------------------------- config


@dataclass
class KubeConfig:
    """Where the API server is and how to authenticate; see ``from_kubeconfig`` / ``in_cluster``."""

    host: str
    ca_file: str | None = None
    verify_ssl: bool = True
    cert_file: str | None = None
    key_file: str | None = None
    tls_server_name: str | None = None
    token: str | None = None
    token_file: str | None = None        # re-read periodically (projected, rotating ServiceAccount token)
    _client_config: Any = field(default=None, repr=False)   # kubernetes.client.Configuration (token hooks)
    _token_read_at: float = field(default=0.0, repr=False)

    def ssl_context(self) -> ssl.SSLContext | bool:
        if not self.host.startswith("https"):
            return False
        ctx = ssl.create_default_context(cafile=self.ca_file) if self.ca_file else ssl.create_default_context()
        if not self.verify_ssl:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self.cert_file and self.key_file:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx

    def bearer(self) -> str | None:
        """The Authorization header value, refreshed at most every TOKEN_REFRESH_SECONDS."""
        now = time.monotonic()
        if now - self._token_read_at >= TOKEN_REFRESH_SECONDS or self._token_read_at == 0.0:
            self._token_read_at = now
            if self.token_file:
                try:
                    with open(self.token_file, encoding="utf-8") as fh:
                        self.token = fh.read().strip() or self.token
                except OSError as exc:
                    log.warning("cannot read token file %s: %s (keeping the previous token)", self.token_file, exc)
            elif self._client_config is not None:
                self.token = _token_from(self._client_config) or self.token
        if not self.token:
            return None
        tok = self.token.strip()
        return tok if tok.lower().startswith("bearer ") else "Bearer " + tok

    @classmethod
    def from_kubeconfig(cls, path: str | os.PathLike[str] | None = None, context: str | None = None) -> "KubeConfig":
        from kubernetes import client, config

        cfg = client.Configuration()
        config.load_kube_config(config_file=str(path) if path else None, context=context,
                                client_configuration=cfg, persist_config=False)
        return cls._from_client_config(cfg)

    @classmethod
    def in_cluster(cls) -> "KubeConfig":
        from kubernetes import client, config

        cfg = client.Configuration()
        config.load_incluster_config(client_configuration=cfg, try_refresh_token=True)
        kc = cls._from_client_config(cfg)
        token_file = os.path.join(SA_DIR, "token")
        if os.path.exists(token_file):
            kc.token_file = token_file
        return kc

    @classmethod
    def auto(cls, kubeconfig: str | os.PathLike[str] | None = None, context: str | None = None) -> "KubeConfig":
        """An explicit kubeconfig wins; else in-cluster when running in a pod; else ``$KUBECONFIG``/~/.kube."""
        if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST") and os.path.exists(
                os.path.join(SA_DIR, "token")):
            return cls.in_cluster()
        return cls.from_kubeconfig(kubeconfig, context)

    @classmethod
    def _from_client_config(cls, cfg: Any) -> "KubeConfig":
        kc = cls(host=cfg.host.rstrip("/"), ca_file=cfg.ssl_ca_cert, verify_ssl=bool(cfg.verify_ssl),
                 cert_file=cfg.cert_file, key_file=cfg.key_file,
                 tls_server_name=getattr(cfg, "tls_server_name", None), token=_token_from(cfg))
        kc._client_config = cfg
        kc._token_read_at = time.monotonic()
        return kc


def _token_from(cfg: Any) -> str | None:
    hook = getattr(cfg, "refresh_api_key_hook", None)
    if hook is not None:
        try:
            hook(cfg)
        except Exception as exc:  # noqa: BLE001 - a failing refresh keeps the old token
            log.warning("refreshing the API token failed: %s", exc)
    keys = cfg.api_key or {}
    for key in ("authorization", "BearerToken"):
        value = keys.get(key)
        if value:
            prefix = (cfg.api_key_prefix or {}).get(key)
            return f"{prefix} {value}" if prefix else value
    return None


# ----------------------------------------------------------------------------------------------- client


class ListResult(NamedTuple):
    items: list[dict[str, Any]]
    resource_version: str


def micro_time(when: _dt.datetime | None = None) -> str:
    """A Kubernetes MicroTime (RFC 3339 with microseconds, UTC)."""
    when = when or _dt.datetime.now(_dt.timezone.utc)
    return when.astimezone(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def rfc3339(when: _dt.datetime | None = None) -> str:
    when = when or _dt.datetime.now(_dt.timezone.utc)
    return when.astimezone(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: Any) -> _dt.datetime | None:
    """A Kubernetes Time or MicroTime as written by the API server; None when absent or malformed."""
    if not isinstance(text, str) or not text:
        return None
    try:
        return _dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def conditions(obj: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """``status.conditions`` of any object, by type (malformed entries left out)."""
    status = (obj or {}).get("status")
    items = status.get("conditions") if isinstance(status, dict) else None
    return {c["type"]: c for c in items or [] if isinstance(c, dict) and isinstance(c.get("type"), str)}


class Kube:
    """The client. Create inside a running event loop or not; the HTTP session is made on first use."""

    def __init__(self, config: KubeConfig, *, impersonate_user: str | None = None,
                 impersonate_groups: Sequence[str] = (), request_timeout: float = DEFAULT_TIMEOUT,
                 connect_timeout: float = 5.0, user_agent: str = USER_AGENT,
                 field_manager: str = C.FIELD_MANAGER) -> None:
        self.config = config
        self.impersonate_user = impersonate_user
        self.impersonate_groups = tuple(impersonate_groups)
        self.request_timeout = request_timeout
        self.connect_timeout = connect_timeout
        self.user_agent = user_agent
        self.field_manager = field_manager
        self._ssl = config.ssl_context()
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def from_kubeconfig(cls, path: str | os.PathLike[str] | None = None, context: str | None = None,
                        **kw: Any) -> "Kube":
        return cls(KubeConfig.from_kubeconfig(path, context), **kw)

    @classmethod
    def in_cluster(cls, **kw: Any) -> "Kube":
        return cls(KubeConfig.in_cluster(), **kw)

    @classmethod
    def auto(cls, kubeconfig: str | os.PathLike[str] | None = None, context: str | None = None, **kw: Any) -> "Kube":
        return cls(KubeConfig.auto(kubeconfig, context), **kw)

    def impersonating(self, user: str, groups: Sequence[str] = ()) -> "Kube":
        """A second client with the same credentials that acts as ``user`` (RBAC checked as that user)."""
        return Kube(self.config, impersonate_user=user, impersonate_groups=groups,
                    request_timeout=self.request_timeout, connect_timeout=self.connect_timeout,
                    user_agent=self.user_agent, field_manager=self.field_manager)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> "Kube":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    # ---------------------------------------------------------------------------------------- plumbing

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(ssl=self._ssl, limit=64, enable_cleanup_closed=True)
            self._session = aiohttp.ClientSession(connector=connector, trust_env=False)
        return self._session

    def _headers(self, content_type: str | None = None) -> list[tuple[str, str]]:
        h = [("Accept", "application/json"), ("User-Agent", self.user_agent)]
        bearer = self.config.bearer()
        if bearer:
            h.append(("Authorization", bearer))
        if self.impersonate_user:
            h.append(("Impersonate-User", self.impersonate_user))
            for g in self.impersonate_groups:
                h.append(("Impersonate-Group", g))
        if content_type:
            h.append(("Content-Type", content_type))
        return h

    def path(self, res: Resource, namespace: str | None = None, name: str | None = None,
             subresource: str | None = None) -> str:
        base = f"/apis/{res.group}/{res.version}" if res.group else f"/api/{res.version}"
        if res.namespaced and namespace:
            base += f"/namespaces/{quote(namespace, safe='')}"
        base += f"/{res.plural}"
        if name:
            base += f"/{quote(name, safe='')}"
            if subresource:
                base += f"/{subresource}"
        return base

    async def request(self, method: str, path: str, *, params: dict[str, str] | None = None,
                      body: Any = None, content_type: str | None = None,
                      timeout: float | None = None) -> Any:
        """One bounded request; returns the decoded JSON body (or None for an empty body)."""
        data = None
        if body is not None:
            data = body if isinstance(body, (bytes, str)) else json.dumps(body, separators=(",", ":"))
            content_type = content_type or "application/json"
        to = aiohttp.ClientTimeout(total=timeout or self.request_timeout, connect=self.connect_timeout)
        server_hostname = self.config.tls_server_name or None
        try:
            async with self._get_session().request(
                    method, self.config.host + path, params=params, data=data,
                    headers=self._headers(content_type), timeout=to,
                    server_hostname=server_hostname) as resp:
                raw = await resp.read()
                status = resp.status
        except asyncio.TimeoutError as exc:
            raise ApiUnavailable(0, "Timeout", f"{method} {path}: no answer in time") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise ApiUnavailable(0, "ConnectionError", f"{method} {path}: {exc}") from exc
        decoded: Any = None
        if raw:
            try:
                decoded = json.loads(raw)
            except ValueError:
                decoded = raw.decode("utf-8", "replace")
        if status >= 400:
            raise _error_for(status, decoded)
        return decoded

    # ---------------------------------------------------------------------------------------- verbs

    async def get(self, res: Resource, name: str, namespace: str | None = None,
                  subresource: str | None = None) -> dict[str, Any]:
        return await self.request("GET", self.path(res, namespace, name, subresource))

    async def list(self, res: Resource, namespace: str | None = None, *, label_selector: str | None = None,
                   field_selector: str | None = None, limit: int = 500,
                   transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> ListResult:
        """All items (following ``continue`` pages) and the list's resourceVersion.

        Items get ``apiVersion``/``kind`` filled in (the API server leaves them out of list items of
        built-in types). ``transform`` is applied to each item as its page arrives, so only one page of
        whole objects is in memory at a time (an informer keeping slim copies of 10,000 objects would
        otherwise hold all 10,000 whole ones at once, and the process keeps that peak).
        """
        params: dict[str, str] = {"limit": str(limit)}
        if label_selector:
            params["labelSelector"] = label_selector
        if field_selector:
            params["fieldSelector"] = field_selector
        items: list[dict[str, Any]] = []
        rv = ""
        path = self.path(res, namespace)
        for _ in range(100000):
            body = await self.request("GET", path, params=params, timeout=max(self.request_timeout, 60.0))
            for item in body.get("items") or []:
                item.setdefault("apiVersion", res.api_version)
                item.setdefault("kind", res.kind)
                items.append(transform(item) if transform is not None else item)
            meta = body.get("metadata") or {}
            rv = meta.get("resourceVersion") or rv
            cont = meta.get("continue")
            if not cont:
                break
            params["continue"] = cont
        return ListResult(items, rv)

    async def watch(self, res: Resource, namespace: str | None = None, *, resource_version: str | None = None,
                    label_selector: str | None = None, field_selector: str | None = None,
                    timeout_seconds: int = 300, bookmarks: bool = True) -> AsyncIterator[dict[str, Any]]:
        """Yield watch events ``{"type": ADDED|MODIFIED|DELETED|BOOKMARK, "object": {...}}``.

        Ends when the server closes the watch (after ``timeout_seconds``); raises ``Gone`` when the
        resourceVersion is too old (the caller relists), ``ApiUnavailable`` when the connection breaks.
        """
        params = {"watch": "true", "timeoutSeconds": str(int(timeout_seconds))}
        if bookmarks:
            params["allowWatchBookmarks"] = "true"
        if resource_version:
            params["resourceVersion"] = resource_version
        if label_selector:
            params["labelSelector"] = label_selector
        if field_selector:
            params["fieldSelector"] = field_selector
        path = self.path(res, namespace)
        to = aiohttp.ClientTimeout(total=None, connect=self.connect_timeout,
                                   sock_connect=self.connect_timeout, sock_read=timeout_seconds + 30)
        try:
            async with self._get_session().get(
                    self.config.host + path, params=params, headers=self._headers(), timeout=to,
                    server_hostname=self.config.tls_server_name or None) as resp:
                if resp.status >= 400:
                    raw = await resp.read()
                    try:
                        decoded: Any = json.loads(raw)
                    except ValueError:
                        decoded = raw.decode("utf-8", "replace")
                    raise _error_for(resp.status, decoded)
                buf = b""
                async for chunk in resp.content.iter_any():
                    buf += chunk
                    while True:
                        nl = buf.find(b"\n")
                        if nl < 0:
                            break
                        line, buf = buf[:nl], buf[nl + 1:]
                        if not line.strip():
                            continue
                        event = json.loads(line)
                        if event.get("type") == "ERROR":
                            status = event.get("object") or {}
                            code = int(status.get("code") or 500)
                            raise _error_for(code, status)
                        obj = event.get("object")
                        if isinstance(obj, dict):
                            obj.setdefault("apiVersion", res.api_version)
                            obj.setdefault("kind", res.kind)
                        yield event
        except asyncio.TimeoutError as exc:
            raise ApiUnavailable(0, "Timeout", f"watch {path}: no data in time") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise ApiUnavailable(0, "ConnectionError", f"watch {path}: {exc}") from exc

    async def create(self, res: Resource, obj: dict[str, Any], namespace: str | None = None) -> dict[str, Any]:
        ns = namespace or (obj.get("metadata") or {}).get("namespace")
        return await self.request("POST", self.path(res, ns), body=obj,
                                  params={"fieldManager": self.field_manager})

    async def replace(self, res: Resource, obj: dict[str, Any], namespace: str | None = None) -> dict[str, Any]:
        """PUT (optimistic concurrency: include ``metadata.resourceVersion``)."""
        meta = obj.get("metadata") or {}
        ns = namespace or meta.get("namespace")
        return await self.request("PUT", self.path(res, ns, meta["name"]), body=obj,
                                  params={"fieldManager": self.field_manager})

    async def apply(self, res: Resource, obj: dict[str, Any], namespace: str | None = None, *,
                    force: bool = True, field_manager: str | None = None) -> dict[str, Any]:
        """Server-side apply of ``obj`` (our field manager; ``force`` takes over conflicting fields)."""
        meta = obj.get("metadata") or {}
        ns = namespace or meta.get("namespace")
        params = {"fieldManager": field_manager or self.field_manager}
        if force:
            params["force"] = "true"
        return await self.request("PATCH", self.path(res, ns, meta["name"]), params=params,
                                  body=json.dumps(obj, separators=(",", ":")),
                                  content_type=PATCH_TYPES["apply"])

    async def patch(self, res: Resource, name: str, patch: Any, namespace: str | None = None, *,
                    patch_type: str = "merge", subresource: str | None = None) -> dict[str, Any]:
        """A merge (``patch_type="merge"``), JSON (``"json"``) or strategic merge patch."""
        return await self.request("PATCH", self.path(res, namespace, name, subresource),
                                  params={"fieldManager": self.field_manager},
                                  body=json.dumps(patch, separators=(",", ":")),
                                  content_type=PATCH_TYPES[patch_type])

    async def delete(self, res: Resource, name: str, namespace: str | None = None, *,
                     propagation_policy: str = "Background", uid: str | None = None,
                     resource_version: str | None = None) -> Any:
        """Delete (background propagation). ``uid``/``resource_version`` become preconditions."""
        body: dict[str, Any] = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": propagation_policy}
        pre = {}
        if uid:
            pre["uid"] = uid
        if resource_version:
            pre["resourceVersion"] = resource_version
        if pre:
            body["preconditions"] = pre
        return await self.request("DELETE", self.path(res, namespace, name), body=body)

    async def create_event(self, involved: dict[str, Any], reason: str, message: str, *, type: str = "Normal",
                           component: str = C.MANAGED_BY, instance: str = "",
                           action: str = "") -> dict[str, Any]:
        """A core/v1 Event about ``involved`` (a full object or an ObjectReference-like dict)."""
        meta = involved.get("metadata") or {}
        name = meta.get("name") or involved.get("name") or "unknown"
        namespace = meta.get("namespace") or involved.get("namespace") or "default"
        ref = {"apiVersion": involved.get("apiVersion", ""), "kind": involved.get("kind", ""), "name": name,
               "namespace": namespace}
        for src, dst in (("uid", "uid"), ("resourceVersion", "resourceVersion")):
            value = meta.get(src) or involved.get(src)
            if value:
                ref[dst] = value
        now = rfc3339()
        event = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": f"{name}.{uuid.uuid4().hex[:16]}", "namespace": namespace},
            "involvedObject": ref,
            "reason": reason,
            "message": message[:1024],
            "type": type,
            "count": 1,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "source": {"component": component},
            "reportingComponent": component,
            "reportingInstance": instance or component,
        }
        if action:
            event["action"] = action
        return await self.create(EVENTS, event, namespace)
