"""A real Kubernetes control plane on loopback for the integration tests.

``ControlPlane`` runs etcd, kube-apiserver and (optionally) kube-controller-manager as local
processes bound to 127.0.0.1 on free ports. No Docker, no cluster, no kubelet, no scheduler: pods are
created but never run. It generates its own PKI (CA, serving certificate, ``system:masters`` admin
client certificate, service-account key pair), writes an admin kubeconfig and can install CRDs.

The binaries come from ``$KUBEBUILDER_ASSETS`` (when it holds ``etcd`` and ``kube-apiserver``) or
from the cache that ``bash tests/integration/tools/provide.sh`` fills
(``${LLMAZ_SERVERLESS_CACHE:-~/.cache/llmaz-serverless}/bin``).

Usable outside pytest, e.g. from a benchmark::

    from tests.integration.controlplane import ControlPlane, crd_paths

    with ControlPlane(Path("/tmp/cp"), crds=crd_paths()) as cp:
        api = kubernetes.client.CoreV1Api(cp.api_client())
        ...

Design decisions (see also ``_apiserver_args`` / ``_controller_manager_args``):

* RBAC is the only authorizer, so impersonating a ServiceAccount really checks its RBAC; the admin
  is ``CN=admin, O=system:masters``.
* CRDs given to the constructor are installed *before* kube-controller-manager starts: its garbage
  collector then watches the custom resources from the start (otherwise it only notices new
  resources at its next 30 s discovery resync, and owner references to custom resources would not
  be collected until then).
* With the controller manager the ``ServiceAccount`` admission plugin stays enabled (pods get the
  ``default`` ServiceAccount and a projected token, as in a real cluster); without it the plugin is
  disabled, because nothing would create the ``default`` ServiceAccount of a namespace.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime as _dt
import http.client
import ipaddress
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# libyaml parses the 1.3 MB llmaz Service CRD ~10x faster than the pure-Python loader.
_YamlLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

__all__ = [
    "ControlPlane",
    "ControlPlaneError",
    "ControlPlaneUnavailable",
    "HOW_TO_PROVIDE",
    "cache_dir",
    "crd_paths",
    "find_binaries",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
PROVIDE_SCRIPT = Path(__file__).resolve().parent / "tools" / "provide.sh"

HOW_TO_PROVIDE = (
    "Provide them with:\n"
    "    bash tests/integration/tools/provide.sh\n"
    "(builds etcd, kube-apiserver, kube-controller-manager and helm, and fetches the upstream CRDs "
    "into ${LLMAZ_SERVERLESS_CACHE:-~/.cache/llmaz-serverless}; needs Go >= 1.24), or set "
    "KUBEBUILDER_ASSETS to a directory holding etcd, kube-apiserver and kube-controller-manager."
)

SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"
KUBERNETES_SERVICE_IP = "10.0.0.1"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc"

STOP_GRACE_SECONDS = 10.0
# kube-apiserver's graceful shutdown waits for open (watch) connections that nobody closes.
APISERVER_STOP_GRACE_SECONDS = 3.0
APISERVER_READY_TIMEOUT = 90.0
ETCD_READY_TIMEOUT = 30.0
CONTROLLER_MANAGER_READY_TIMEOUT = 60.0
CRD_ESTABLISHED_TIMEOUT = 60.0
# apiextensions-apiserver delays creates of custom resources whose CRD was Established < 2 s ago.
CRD_JUST_CREATED_SECONDS = 2.0


class ControlPlaneError(RuntimeError):
    """The control plane could not be started or did not behave."""


class ControlPlaneUnavailable(ControlPlaneError):
    """The control-plane binaries (or the CRDs) are not there; the message says how to get them."""


def _log(msg: str) -> None:
    print(f"[controlplane] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------
# Locating binaries and CRDs


def cache_dir() -> Path:
    env = os.environ.get("LLMAZ_SERVERLESS_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "llmaz-serverless"


def _is_exe(p: Path) -> bool:
    return p.is_file() and os.access(p, os.X_OK)


def find_binaries(with_controller_manager: bool = True) -> dict[str, Path]:
    """Return ``{"etcd": ..., "kube-apiserver": ..., ["kube-controller-manager": ...]}``.

    ``$KUBEBUILDER_ASSETS`` wins when it holds etcd and kube-apiserver (envtest assets usually lack
    kube-controller-manager; it is then taken from the cache). Raises ``ControlPlaneUnavailable``
    with instructions when something is missing.
    """
    wanted = ["etcd", "kube-apiserver"] + (["kube-controller-manager"] if with_controller_manager else [])
    dirs: list[Path] = []
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if assets:
        a = Path(assets).expanduser()
        if _is_exe(a / "etcd") and _is_exe(a / "kube-apiserver"):
            dirs.append(a)
    dirs.append(cache_dir() / "bin")

    found: dict[str, Path] = {}
    for name in wanted:
        for d in dirs:
            if _is_exe(d / name):
                found[name] = (d / name).resolve()
                break
    missing = [n for n in wanted if n not in found]
    if missing:
        searched = ", ".join(str(d) for d in dirs)
        raise ControlPlaneUnavailable(
            f"control-plane binaries not found: {', '.join(missing)} (searched: {searched}).\n"
            + HOW_TO_PROVIDE
        )
    return found


def crd_paths(projects: Sequence[str] = ("llmaz", "lws", "keda", "http-add-on")) -> list[Path]:
    """All CRD YAMLs that provide.sh fetched, in a stable order. Raises if none are there."""
    root = cache_dir() / "crds"
    paths: list[Path] = []
    missing: list[str] = []
    for proj in projects:
        found = sorted((root / proj).glob("*.yaml"))
        if not found:
            missing.append(proj)
        paths.extend(found)
    if missing:
        raise ControlPlaneUnavailable(
            f"upstream CRDs not found for {', '.join(missing)} under {root}.\n" + HOW_TO_PROVIDE
        )
    return paths


@contextlib.contextmanager
def partial_control_plane(workdir: Path, projects: Sequence[str]) -> Iterator["ControlPlane"]:
    """A control plane (no controller manager) with only some projects' CRDs, as a cluster that lacks the
    others; stopped on exit. For module-scoped fixtures of tests about missing prerequisites."""
    cp = ControlPlane(workdir, with_controller_manager=False, crds=crd_paths(projects))
    cp.start()
    try:
        yield cp
    finally:
        cp.stop()


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (bound to port 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------------------------------
# PKI


def _write_key(path: Path, key) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _new_cert(
    subject: x509.Name,
    public_key,
    issuer: x509.Name,
    issuer_key,
    *,
    ca: bool = False,
    sans: Sequence[x509.GeneralName] = (),
    usages: Sequence[x509.ObjectIdentifier] = (),
) -> x509.Certificate:
    now = _dt.datetime.now(_dt.timezone.utc)
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(minutes=5))
        .not_valid_after(now + _dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        b = b.add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        b = b.add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    else:
        b = b.add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=True,
                data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        b = b.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
        )
    if usages:
        b = b.add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


# --------------------------------------------------------------------------------------------------
# Processes

# Strong references: a running control plane must be stopped at exit even if nobody holds it.
_LIVE: "set[ControlPlane]" = set()


@atexit.register
def _stop_all_at_exit() -> None:  # pragma: no cover - fallback only
    for cp in list(_LIVE):
        try:
            cp.stop()
        except Exception as e:  # noqa: BLE001
            _log(f"atexit stop failed: {e!r}")


def _pdeathsig_preexec():
    """preexec_fn: SIGKILL the child when its parent dies (Linux), a fallback if atexit never runs."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except Exception:  # noqa: BLE001
        pass


class _Proc:
    def __init__(self, name: str, args: list[str], log_path: Path, env: dict[str, str]):
        self.name = name
        self.args = args
        self.log_path = log_path
        self.env = env
        self.popen: subprocess.Popen | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"\n==== {time.strftime('%H:%M:%S')} start {' '.join(self.args)}\n".encode())
            log.flush()
            # PR_SET_PDEATHSIG fires when the *thread* that forked exits, so only use it from the
            # main thread (a worker thread may exit long before the process does).
            preexec = _pdeathsig_preexec if threading.current_thread() is threading.main_thread() else None
            self.popen = subprocess.Popen(
                self.args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
                preexec_fn=preexec,
                close_fds=True,
            )

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def check_alive(self) -> None:
        if self.popen is not None and self.popen.poll() is not None:
            raise ControlPlaneError(
                f"{self.name} exited with code {self.popen.returncode}; log {self.log_path}:\n"
                + self.log_tail()
            )

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        p = self.popen
        if p is None:
            return
        if p.poll() is None:
            if grace > 0:
                self._signal(signal.SIGTERM)
                try:
                    p.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    _log(f"{self.name} did not stop within {grace:.0f}s of SIGTERM; sending SIGKILL")
            if p.poll() is None:
                self._signal(signal.SIGKILL)
                try:
                    p.wait(timeout=STOP_GRACE_SECONDS)
                except subprocess.TimeoutExpired:
                    _log(f"{self.name} (pid {p.pid}) survived SIGKILL")
        # No killpg after the leader was reaped: its pid (== pgid) may already belong to someone
        # else. etcd, kube-apiserver and kube-controller-manager do not fork children.
        self.popen = None

    def _signal(self, sig: int) -> None:
        assert self.popen is not None
        try:
            os.killpg(self.popen.pid, sig)  # start_new_session: pgid == pid
        except ProcessLookupError:
            pass
        except PermissionError:
            try:
                self.popen.send_signal(sig)
            except ProcessLookupError:
                pass


def _help_text(binary: Path) -> str:
    try:
        r = subprocess.run([str(binary), "--help"], capture_output=True, text=True, timeout=20)
        return r.stdout + r.stderr
    except (OSError, subprocess.TimeoutExpired):
        return ""


# --------------------------------------------------------------------------------------------------


def _http_get(conn: http.client.HTTPConnection, path: str) -> tuple[int, bytes]:
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def _poll(what: str, timeout: float, probe: Callable[[], tuple[bool, Any, str]], proc: "_Proc | None" = None,
          interval: float = 0.1) -> Any:
    """Call ``probe`` (-> done, value, what was seen) until done; fail after ``timeout`` seconds with the last
    observation and, for a process, its log tail. A dead process fails at once."""
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        if proc is not None:
            proc.check_alive()
        try:
            done, value, last = probe()
            if done:
                return value
        except (OSError, ssl.SSLError, http.client.HTTPException, ValueError) as e:
            last = repr(e)
        if time.monotonic() > deadline:
            tail = f":\n{proc.log_tail()}" if proc is not None else ""
            raise ControlPlaneError(f"{what} within {timeout:.0f}s ({last}){tail}")
        time.sleep(interval)


class ControlPlane:
    """etcd + kube-apiserver (+ kube-controller-manager) on loopback, with an admin kubeconfig."""

    def __init__(
        self,
        workdir: Path,
        with_controller_manager: bool = True,
        *,
        crds: Iterable[Path] = (),
        extra_apiserver_args: Sequence[str] = (),
        extra_controller_manager_args: Sequence[str] = (),
    ):
        self.workdir = Path(workdir).resolve()
        self.with_controller_manager = with_controller_manager
        self.crds = [Path(p) for p in crds]
        self.extra_apiserver_args = list(extra_apiserver_args)
        self.extra_controller_manager_args = list(extra_controller_manager_args)

        self.pki_dir = self.workdir / "pki"
        self.logs_dir = self.workdir / "logs"
        self.etcd_data_dir = self.workdir / "etcd"
        self.kubeconfig = self.workdir / "kubeconfig"
        self.ca_cert = self.pki_dir / "ca.crt"
        self.ca_key = self.pki_dir / "ca.key"
        self.serving_cert = self.pki_dir / "apiserver.crt"
        self.serving_key = self.pki_dir / "apiserver.key"
        self.admin_cert = self.pki_dir / "admin.crt"
        self.admin_key = self.pki_dir / "admin.key"
        self.sa_key = self.pki_dir / "sa.key"
        self.sa_pub = self.pki_dir / "sa.pub"

        self.etcd_port = 0
        self.etcd_peer_port = 0
        self.apiserver_port = 0
        self.controller_manager_port = 0
        self.timings: dict[str, float] = {}
        self._binaries: dict[str, Path] = {}
        self._procs: dict[str, _Proc] = {}
        self._started = False
        self._crd_settled_at = 0.0  # wall clock; see install_crds(settle=...)
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ public properties

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"

    @property
    def etcd_url(self) -> str:
        return f"http://127.0.0.1:{self.etcd_port}"

    @property
    def ca_pem(self) -> bytes:
        return self.ca_cert.read_bytes()

    @property
    def binaries(self) -> dict[str, Path]:
        return dict(self._binaries)

    @property
    def startup_seconds(self) -> float:
        return self.timings.get("total", 0.0)

    def __enter__(self) -> "ControlPlane":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"ControlPlane(server={self.server if self.apiserver_port else None}, workdir={self.workdir})"

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> "ControlPlane":
        with self._lock:
            if self._started:
                return self
            self._binaries = find_binaries(self.with_controller_manager)
            t0 = time.monotonic()
            _LIVE.add(self)
            self._started = True
            try:
                self._start(t0)
            except BaseException:
                self.stop()
                raise
            return self

    def _start(self, t0: float) -> None:
        for d in (self.workdir, self.pki_dir, self.logs_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.etcd_port, self.etcd_peer_port, self.apiserver_port = free_port(), free_port(), free_port()
        while len({self.etcd_port, self.etcd_peer_port, self.apiserver_port}) < 3:
            self.etcd_peer_port, self.apiserver_port = free_port(), free_port()

        t = time.monotonic()
        self._generate_pki()
        self._write_kubeconfig()
        self.timings["pki"] = time.monotonic() - t

        t = time.monotonic()
        self._procs["etcd"] = _Proc("etcd", self._etcd_args(), self.logs_dir / "etcd.log", self._env())
        self._procs["etcd"].start()
        self._wait_etcd()
        self.timings["etcd"] = time.monotonic() - t

        t = time.monotonic()
        self._procs["kube-apiserver"] = _Proc(
            "kube-apiserver", self._apiserver_args(), self.logs_dir / "kube-apiserver.log", self._env()
        )
        self._procs["kube-apiserver"].start()
        self.wait_apiserver_ready()
        self.timings["kube-apiserver"] = time.monotonic() - t

        if self.crds:
            t = time.monotonic()
            # The 2 s "just created" window of the CRDs passes while the controller manager starts.
            self.install_crds(self.crds, settle=False)
            self.timings["crds"] = time.monotonic() - t

        if self.with_controller_manager:
            t = time.monotonic()
            self.controller_manager_port = free_port()
            self._procs["kube-controller-manager"] = _Proc(
                "kube-controller-manager",
                self._controller_manager_args(),
                self.logs_dir / "kube-controller-manager.log",
                self._env(),
            )
            self._procs["kube-controller-manager"].start()
            self._wait_controller_manager()
            self.timings["kube-controller-manager"] = time.monotonic() - t

        if self.crds:
            t = time.monotonic()
            self.wait_crds_settled()
            self.timings["crds-settle"] = time.monotonic() - t

        self.timings["total"] = time.monotonic() - t0
        parts = ", ".join(f"{k} {v:.2f}s" for k, v in self.timings.items() if k != "total")
        _log(f"control plane up at {self.server} in {self.timings['total']:.2f}s ({parts}); logs in {self.logs_dir}")

    def stop(self) -> None:
        """Stop every process (controller manager, apiserver, etcd); safe to call repeatedly."""
        with self._lock:
            for name in ("kube-controller-manager", "kube-apiserver", "etcd"):
                proc = self._procs.get(name)
                if proc is not None:
                    try:
                        proc.stop(APISERVER_STOP_GRACE_SECONDS if name == "kube-apiserver" else STOP_GRACE_SECONDS)
                    except Exception as e:  # noqa: BLE001
                        _log(f"stopping {name} failed: {e!r}")
            self._procs.clear()
            self._started = False
            _LIVE.discard(self)

    def restart_apiserver(self, downtime: float = 0.0, graceful: bool = False) -> float:
        """Stop kube-apiserver and start it again on the same port; etcd (all data) keeps running.

        ``graceful=False`` (default) SIGKILLs it, like a crash: every write it acknowledged is in
        etcd already. ``graceful=True`` sends SIGTERM first; note that a kube-apiserver with open
        watch connections (the controller manager always has some) does not finish its graceful
        shutdown by itself, so that costs ``APISERVER_STOP_GRACE_SECONDS`` before the SIGKILL.
        Returns the seconds until it was ready again.
        """
        with self._lock:
            proc = self._procs.get("kube-apiserver")
            if proc is None:
                raise ControlPlaneError("control plane is not running")
            t = time.monotonic()
            proc.stop(grace=APISERVER_STOP_GRACE_SECONDS if graceful else 0.0)
            if downtime:
                time.sleep(downtime)
            proc.start()
            self.wait_apiserver_ready()
            took = time.monotonic() - t
            _log(f"kube-apiserver restarted in {took:.2f}s")
            return took

    def stop_apiserver(self, graceful: bool = False) -> None:
        """Stop only kube-apiserver (``start_apiserver`` brings it back on the same port)."""
        with self._lock:
            proc = self._procs.get("kube-apiserver")
            if proc is not None:
                proc.stop(grace=APISERVER_STOP_GRACE_SECONDS if graceful else 0.0)

    def start_apiserver(self) -> None:
        with self._lock:
            proc = self._procs.get("kube-apiserver")
            if proc is None:
                raise ControlPlaneError("control plane is not running")
            if not proc.alive():
                proc.start()
            self.wait_apiserver_ready()

    def is_running(self) -> bool:
        return bool(self._procs) and all(p.alive() for p in self._procs.values())

    # ------------------------------------------------------------------ clients

    def api_client(self, impersonate: str | None = None, impersonate_groups: Sequence[str] = ()):
        """A fresh ``kubernetes.client.ApiClient`` authenticated as the admin (``system:masters``).

        ``impersonate="system:serviceaccount:NS:NAME"`` sends Impersonate-User headers, so requests
        are authorized as that user (RBAC is really enforced). Close the client when done.
        """
        import kubernetes.client

        cfg = kubernetes.client.Configuration()
        cfg.host = self.server
        cfg.ssl_ca_cert = str(self.ca_cert)
        cfg.cert_file = str(self.admin_cert)
        cfg.key_file = str(self.admin_key)
        cfg.verify_ssl = True
        cfg.proxy = None
        client = kubernetes.client.ApiClient(cfg)
        if impersonate:
            client.set_default_header("Impersonate-User", impersonate)
            # Only one value per header is possible with set_default_header; the apiserver adds
            # system:authenticated (and, for service accounts, the serviceaccount groups) itself.
            for g in impersonate_groups[:1]:
                client.set_default_header("Impersonate-Group", g)
        return client

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca_cert))
        ctx.load_cert_chain(str(self.admin_cert), str(self.admin_key))
        return ctx

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None, timeout: float = 10.0) -> tuple[int, bytes]:
        """A raw admin request to the apiserver (no kubernetes client involved)."""
        conn = http.client.HTTPSConnection("127.0.0.1", self.apiserver_port, context=self.ssl_context(),
                                           timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            return r.status, r.read()
        finally:
            conn.close()

    # ------------------------------------------------------------------ CRDs

    def install_crds(self, paths: Iterable[Path], timeout: float = CRD_ESTABLISHED_TIMEOUT,
                     settle: bool = True) -> list[str]:
        """Create (or replace) the CRDs in ``paths`` and wait until each is Established.

        Uses raw JSON create/replace so the large upstream schemas (the llmaz Service CRD is 1.3 MB)
        are neither turned into client models nor stored in a last-applied annotation.

        ``settle``: kube-apiserver makes every *create* of a custom resource sleep 2 s while its CRD
        became Established less than 2 s ago (apiextensions-apiserver customresource_handler.go,
        "justCreated"); wait that window out so tests do not see a 2 s stall on their first
        create. Returns the CRD names.
        """
        names: list[str] = []
        for path in paths:
            with open(path, "rb") as f:
                for doc in yaml.load_all(f, Loader=_YamlLoader):
                    if not doc:
                        continue
                    if doc.get("kind") != "CustomResourceDefinition":
                        raise ControlPlaneError(f"{path}: not a CustomResourceDefinition: {doc.get('kind')}")
                    self._create_or_replace_crd(doc)
                    names.append(doc["metadata"]["name"])
        deadline = time.monotonic() + timeout
        for name in names:
            established_at = self.wait_crd_established(name, max(0.0, deadline - time.monotonic()))
            # lastTransitionTime has 1 s resolution (truncated); the apiserver compares against it.
            self._crd_settled_at = max(self._crd_settled_at, established_at + CRD_JUST_CREATED_SECONDS + 0.05)
        if settle:
            self.wait_crds_settled()
        return names

    def wait_crds_settled(self) -> None:
        """Sleep until no installed CRD is inside the apiserver's 2 s "just created" window."""
        delay = self._crd_settled_at - time.time()
        if delay > 0:
            time.sleep(min(delay, CRD_JUST_CREATED_SECONDS + 1.5))

    def _create_or_replace_crd(self, doc: dict) -> None:
        base = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
        name = doc["metadata"]["name"]
        doc = json.loads(json.dumps(doc))  # copy; drop YAML specifics
        doc.setdefault("metadata", {}).pop("resourceVersion", None)
        hdrs = {"Content-Type": "application/json", "Accept": "application/json"}
        for _ in range(5):
            status, body = self.request("POST", f"{base}?fieldManager=llmaz-serverless-tests",
                                        json.dumps(doc).encode(), hdrs, timeout=60)
            if status == 201:
                return
            if status != 409:
                raise ControlPlaneError(f"creating CRD {name}: HTTP {status}: {body[:2000]!r}")
            status, body = self.request("GET", f"{base}/{name}", headers={"Accept": "application/json"})
            if status != 200:
                continue
            doc["metadata"]["resourceVersion"] = json.loads(body)["metadata"]["resourceVersion"]
            status, body = self.request("PUT", f"{base}/{name}?fieldManager=llmaz-serverless-tests",
                                        json.dumps(doc).encode(), hdrs, timeout=60)
            doc["metadata"].pop("resourceVersion", None)
            if status == 200:
                return
            if status != 409:
                raise ControlPlaneError(f"replacing CRD {name}: HTTP {status}: {body[:2000]!r}")
        raise ControlPlaneError(f"could not create or replace CRD {name} (conflicts)")

    def wait_crd_established(self, name: str, timeout: float = CRD_ESTABLISHED_TIMEOUT) -> float:
        """Wait until the CRD is Established; returns its lastTransitionTime (epoch seconds)."""
        def probe() -> tuple[bool, float, str]:
            status, body = self.request("GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}",
                                        headers={"Accept": "application/json"})
            if status != 200:
                return False, 0.0, f"HTTP {status}"
            conds = {c.get("type"): c for c in (json.loads(body).get("status") or {}).get("conditions") or []}
            est = conds.get("Established", {})
            if est.get("status") != "True":
                return False, 0.0, json.dumps(list(conds.values()))
            try:
                return True, _dt.datetime.fromisoformat(est["lastTransitionTime"].replace("Z", "+00:00")).timestamp(), ""
            except (KeyError, ValueError):
                return True, time.time(), ""

        return _poll(f"CRD {name} not Established", timeout, probe)

    # ------------------------------------------------------------------ internals

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG",)}
        no_proxy = "127.0.0.1,localhost,::1"
        for k in ("NO_PROXY", "no_proxy"):
            env[k] = f"{no_proxy},{env[k]}" if env.get(k) else no_proxy
        return env

    def _generate_pki(self) -> None:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "llmaz-serverless-test-ca")])
        ca = _new_cert(ca_name, ca_key.public_key(), ca_name, ca_key, ca=True)
        _write_key(self.ca_key, ca_key)
        _write_cert(self.ca_cert, ca)

        srv_key = ec.generate_private_key(ec.SECP256R1())
        sans: list[x509.GeneralName] = [
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address(KUBERNETES_SERVICE_IP)),
            x509.DNSName("localhost"),
            x509.DNSName("kubernetes"),
            x509.DNSName("kubernetes.default"),
            x509.DNSName("kubernetes.default.svc"),
            x509.DNSName("kubernetes.default.svc.cluster.local"),
        ]
        srv = _new_cert(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]),
            srv_key.public_key(), ca_name, ca_key, sans=sans,
            usages=[ExtendedKeyUsageOID.SERVER_AUTH],
        )
        _write_key(self.serving_key, srv_key)
        _write_cert(self.serving_cert, srv)

        adm_key = ec.generate_private_key(ec.SECP256R1())
        adm = _new_cert(
            x509.Name([
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:masters"),
                x509.NameAttribute(NameOID.COMMON_NAME, "admin"),
            ]),
            adm_key.public_key(), ca_name, ca_key, usages=[ExtendedKeyUsageOID.CLIENT_AUTH],
        )
        _write_key(self.admin_key, adm_key)
        _write_cert(self.admin_cert, adm)

        sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        _write_key(self.sa_key, sa_key)
        self.sa_pub.write_bytes(
            sa_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    def _write_kubeconfig(self) -> None:
        import base64

        b64 = lambda p: base64.b64encode(p.read_bytes()).decode()  # noqa: E731
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "test", "cluster": {
                "server": self.server, "certificate-authority-data": b64(self.ca_cert)}}],
            "users": [{"name": "admin", "user": {
                "client-certificate-data": b64(self.admin_cert), "client-key-data": b64(self.admin_key)}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "admin", "namespace": "default"}}],
            "current-context": "test",
            "preferences": {},
        }
        self.kubeconfig.write_text(yaml.safe_dump(cfg, sort_keys=False))
        self.kubeconfig.chmod(0o600)

    def _etcd_args(self) -> list[str]:
        etcd = self._binaries["etcd"]
        client = f"http://127.0.0.1:{self.etcd_port}"
        peer = f"http://127.0.0.1:{self.etcd_peer_port}"
        args = [
            str(etcd),
            "--name", "default",
            "--data-dir", str(self.etcd_data_dir),
            "--listen-client-urls", client,
            "--advertise-client-urls", client,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"default={peer}",
            "--initial-cluster-state", "new",
            "--listen-metrics-urls", "",
            "--log-level", "warn",
        ]
        if "--unsafe-no-fsync" in _help_text(etcd):
            args.append("--unsafe-no-fsync")
        return args

    def _wait_etcd(self, timeout: float = ETCD_READY_TIMEOUT) -> None:
        def probe() -> tuple[bool, None, str]:
            status, body = _http_get(http.client.HTTPConnection("127.0.0.1", self.etcd_port, timeout=2), "/health")
            return status == 200 and json.loads(body).get("health") == "true", None, f"HTTP {status} {body[:200]!r}"

        _poll("etcd not healthy", timeout, probe, proc=self._procs["etcd"], interval=0.05)

    def _apiserver_args(self) -> list[str]:
        args = [
            str(self._binaries["kube-apiserver"]),
            "--etcd-servers", self.etcd_url,
            "--secure-port", str(self.apiserver_port),
            "--bind-address", "127.0.0.1",
            "--advertise-address", "127.0.0.1",
            "--cert-dir", str(self.pki_dir),
            "--tls-cert-file", str(self.serving_cert),
            "--tls-private-key-file", str(self.serving_key),
            "--client-ca-file", str(self.ca_cert),
            "--service-account-key-file", str(self.sa_pub),
            "--service-account-signing-key-file", str(self.sa_key),
            "--service-account-issuer", SERVICE_ACCOUNT_ISSUER,
            "--service-cluster-ip-range", SERVICE_CLUSTER_IP_RANGE,
            "--authorization-mode", "RBAC",
            "--allow-privileged=true",
            # APF only adds background work here; nothing under test depends on it.
            "--enable-priority-and-fairness=false",
            "--profiling=false",
            "--endpoint-reconciler-type", "none",
        ]
        if not self.with_controller_manager:
            # Nothing creates the `default` ServiceAccount of a namespace without the controller
            # manager, and the admission plugin would reject every pod for lack of it.
            args += ["--disable-admission-plugins", "ServiceAccount"]
        return args + self.extra_apiserver_args

    def wait_apiserver_ready(self, timeout: float = APISERVER_READY_TIMEOUT) -> None:
        def probe() -> tuple[bool, None, str]:
            status, body = self.request("GET", "/readyz", timeout=3)
            return status == 200, None, f"HTTP {status} {body[-500:]!r}"

        _poll("kube-apiserver not ready", timeout, probe, proc=self._procs["kube-apiserver"])

    def _controller_manager_args(self) -> list[str]:
        kcm_cert_dir = self.workdir / "kcm-certs"
        kcm_cert_dir.mkdir(exist_ok=True)
        return [
            str(self._binaries["kube-controller-manager"]),
            "--kubeconfig", str(self.kubeconfig),
            "--authentication-kubeconfig", str(self.kubeconfig),
            "--authorization-kubeconfig", str(self.kubeconfig),
            "--controllers", "*",
            "--service-account-private-key-file", str(self.sa_key),
            "--root-ca-file", str(self.ca_cert),
            "--use-service-account-credentials=false",
            "--leader-elect=false",
            "--bind-address", "127.0.0.1",
            "--secure-port", str(self.controller_manager_port),
            "--cert-dir", str(kcm_cert_dir),
            "--service-cluster-ip-range", SERVICE_CLUSTER_IP_RANGE,
            "--profiling=false",
        ] + self.extra_controller_manager_args

    def _wait_controller_manager(self, timeout: float = CONTROLLER_MANAGER_READY_TIMEOUT) -> None:
        """healthz of the controller manager, then the `default` ServiceAccount in `default` (proof
        that its controllers run)."""
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE
        healthy = False

        def probe() -> tuple[bool, None, str]:
            nonlocal healthy
            if not healthy:
                status, body = _http_get(http.client.HTTPSConnection(
                    "127.0.0.1", self.controller_manager_port, context=insecure, timeout=3), "/healthz")
                healthy = status == 200
                if not healthy:
                    return False, None, f"healthz HTTP {status} {body[-300:]!r}"
            status, _ = self.request("GET", "/api/v1/namespaces/default/serviceaccounts/default")
            return status == 200, None, f"ServiceAccount default/default: HTTP {status}"

        _poll("kube-controller-manager not ready", timeout, probe, proc=self._procs["kube-controller-manager"])


if __name__ == "__main__":  # pragma: no cover - manual smoke run
    import tempfile

    with tempfile.TemporaryDirectory(prefix="controlplane-") as d:
        with ControlPlane(Path(d), crds=crd_paths()) as cp:
            print(cp.kubeconfig, cp.server)
            status, _ = cp.request("GET", "/readyz")
            print("readyz", status)
