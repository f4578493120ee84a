"""A bounded HTTP load client for the live stack: concurrent chat requests through the HTTP add-on's interceptor,
each one timed, none retried (a refused or failed request counts as lost)."""

from __future__ import annotations

import http.client
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

INTERCEPTOR = ("keda-add-ons-http-interceptor-proxy.keda", 8080)   # resolved and routed like in a cluster


@dataclass
class Answer:
    sent: float           # monotonic
    done: float
    status: int           # 0: no HTTP answer at all (connection refused, reset, client timeout)
    cold_start: str       # the add-on's X-KEDA-HTTP-Cold-Start header
    body: str
    error: str = ""

    @property
    def seconds(self) -> float:
        return self.done - self.sent


def chat(host_header: str | None, *, headers: dict[str, str] | None = None, service_seconds: float | None = None,
         timeout: float = 120, target: tuple[str, int] = INTERCEPTOR) -> Answer:
    body: dict = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    if service_seconds is not None:
        body["x_service_seconds"] = service_seconds
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    if host_header:
        hdrs["Host"] = host_header
    sent = time.monotonic()
    conn = http.client.HTTPConnection(*target, timeout=timeout)
    try:
        conn.request("POST", "/v1/chat/completions", body=json.dumps(body), headers=hdrs)
        r = conn.getresponse()
        data = r.read().decode(errors="replace")
        return Answer(sent, time.monotonic(), r.status, r.getheader("X-KEDA-HTTP-Cold-Start") or "", data)
    except (OSError, http.client.HTTPException) as e:
        return Answer(sent, time.monotonic(), 0, "", "", error=repr(e))
    finally:
        conn.close()


def burst(n: int, host_header: str | None, **kw) -> list[Answer]:
    """``n`` requests at once; returns when all are answered (each bounded by its timeout)."""
    start = threading.Barrier(n)

    def one(_: int) -> Answer:
        start.wait()
        return chat(host_header, **kw)
    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(one, range(n)))


class SteadyLoad:
    """Keeps ``concurrency`` requests in flight (each of ``service_seconds`` at the server) until stopped."""

    def __init__(self, host_header: str, concurrency: int, service_seconds: float, timeout: float = 120,
                 target: tuple[str, int] = INTERCEPTOR) -> None:
        self.host_header, self.concurrency, self.target = host_header, concurrency, target
        self.service_seconds, self.timeout = service_seconds, timeout
        self.answers: list[Answer] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(concurrency)]
        self._lock = threading.Lock()

    def _loop(self) -> None:
        while not self._stop.is_set():
            a = chat(self.host_header, service_seconds=self.service_seconds, timeout=self.timeout, target=self.target)
            with self._lock:
                self.answers.append(a)

    def __enter__(self) -> "SteadyLoad":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=self.timeout + 5)


@dataclass
class Stream:
    sent: float
    done: float
    status: int
    tokens: list[str]
    finished: bool        # the stream ended with data: [DONE]
    answered_by: str
    error: str = ""

    @property
    def complete(self) -> bool:
        """Every token in order, then the end marker: nothing was cut."""
        return self.status == 200 and self.finished and self.tokens == [f"t{i} " for i in range(len(self.tokens))]


def stream_chat(target: tuple[str, int], seconds: float, *, host_header: str | None = None,
                timeout: float = 120) -> Stream:
    """One streamed answer (server-sent events) of ``seconds`` at the server, read chunk by chunk."""
    body = {"model": "m", "stream": True, "x_service_seconds": seconds,
            "messages": [{"role": "user", "content": "write a long answer"}]}
    hdrs = {"Content-Type": "application/json", **({"Host": host_header} if host_header else {})}
    sent = time.monotonic()
    tokens: list[str] = []
    finished, by, status = False, "", 0
    conn = http.client.HTTPConnection(*target, timeout=timeout)
    try:
        conn.request("POST", "/v1/chat/completions", body=json.dumps(body), headers=hdrs)
        r = conn.getresponse()
        status = r.status
        while True:
            line = r.readline()
            if not line:
                break
            text = line.decode(errors="replace").strip()
            if not text.startswith("data: "):
                continue
            data = text[6:]
            if data == "[DONE]":
                finished = True
                break
            doc = json.loads(data)
            if "answered_by" in doc:
                by = doc["answered_by"]
            else:
                tokens.append(doc["choices"][0]["delta"]["content"])
        return Stream(sent, time.monotonic(), status, tokens, finished, by)
    except (OSError, http.client.HTTPException, ValueError) as e:
        return Stream(sent, time.monotonic(), status, tokens, finished, by, error=repr(e))
    finally:
        conn.close()
