"""A model-server stand-in that answers like vLLM, one process per pod of the live stack.

It behaves the way a vLLM container does from the outside, which is all the scaling chain sees:

* nothing listens until the model has "loaded" (``--load-delay`` seconds): a readiness probe gets a refused
  connection, exactly as with vLLM, whose HTTP server starts after the weights are in GPU memory;
* ``GET /health`` -> 200, ``GET /v1/models``, ``POST /v1/chat/completions`` (OpenAI shape) with a service
  time per request and ``--slots`` requests served at once (continuous batching), the rest waiting;
* ``GET /metrics`` in Prometheus text format with ``vllm:num_requests_waiting`` and
  ``vllm:num_requests_running`` (labelled ``model_name``), the metrics the ``queue-depth`` preset reads;
* with ``--redis`` and ``--queue`` it consumes jobs from a Redis list while it is up (one at a time per free
  slot), and records each finished job in the list ``<queue>:done`` as ``<job>|<pod>``; a job written
  ``<name>@<seconds>`` takes that long;
* ``"stream": true`` answers as server-sent events, one token chunk every ``x_token_interval`` seconds for
  ``x_service_seconds``, then ``data: [DONE]``; each token counts in ``vllm:generation_tokens_total``;
  ``"x_hang": true`` is a request that runs and never produces a token (a hung engine);
* on SIGTERM it does what vLLM does (vllm-project/vllm #34730 / #36666): with ``--shutdown-timeout 0`` (the
  default) it aborts everything in flight and exits at once; with ``--shutdown-timeout N`` it refuses new
  requests (503; ``/health`` and ``/metrics`` still answer), closes idle keep-alive connections, stops taking
  jobs, and exits when the requests in flight are done or N seconds have passed.

It binds the pod's own IP (``--host``), so traffic routed by the cluster reaches it. Run as
``python -m tests.e2e.standin --host 10.244.0.5 --port 8080 --model qwen --load-delay 3``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time

from aiohttp import web


class Redis:
    """The four Redis commands the stand-in needs, over RESP on one connection (no client library)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._r: asyncio.StreamReader | None = None
        self._w: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        self._r, self._w = await asyncio.open_connection(self.host, self.port)

    async def call(self, *args: str | bytes) -> object:
        assert self._r is not None and self._w is not None
        parts = [b"*%d\r\n" % len(args)]
        for a in args:
            b = a.encode() if isinstance(a, str) else a
            parts.append(b"$%d\r\n%s\r\n" % (len(b), b))
        self._w.write(b"".join(parts))
        await self._w.drain()
        return await self._read()

    async def _read(self) -> object:
        assert self._r is not None
        line = await self._r.readline()
        if not line:
            raise ConnectionError("redis closed the connection")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = await self._r.readexactly(n + 2)
            return data[:-2]
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [await self._read() for _ in range(n)]
        raise RuntimeError(f"unexpected redis reply {line!r}")

    async def close(self) -> None:
        if self._w is not None:
            self._w.close()


class Model:
    def __init__(self, name: str, pod: str, slots: int, service_time: float, token_interval: float = 0.25) -> None:
        self.name, self.pod, self.service_time = name, pod, service_time
        self.token_interval = token_interval
        self.slots = asyncio.Semaphore(slots)
        self.running = 0
        self.waiting = 0
        self.served = 0
        self.tokens = 0
        self.draining = False

    @property
    def busy(self) -> int:
        return self.running + self.waiting

    async def serve_one(self, seconds: float | None = None, on_token=None, hang: bool = False) -> None:
        """One request: wait for a slot, then produce a token every ``token_interval`` for ``seconds``."""
        self.waiting += 1
        try:
            await self.slots.acquire()
        finally:
            self.waiting -= 1
        self.running += 1
        try:
            if hang:
                await asyncio.Event().wait()
            total = self.service_time if seconds is None else seconds
            end = time.monotonic() + total
            i = 0
            while True:
                left = end - time.monotonic()
                if left <= 0:
                    break
                await asyncio.sleep(min(self.token_interval, left))
                self.tokens += 1
                if on_token is not None:
                    await on_token(i)
                i += 1
            self.served += 1
        finally:
            self.running -= 1
            self.slots.release()


def make_app(model: Model) -> web.Application:
    async def health(_: web.Request) -> web.Response:
        return web.Response(text="")

    async def models(_: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": model.name, "object": "model"}]})

    async def chat(request: web.Request) -> web.StreamResponse:
        if model.draining:
            # vLLM rejects new requests once its shutdown has begun
            return web.json_response({"error": {"message": "server is shutting down"}}, status=503)
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return web.json_response({"error": {"message": "body is not JSON"}}, status=400)
        body = body if isinstance(body, dict) else {}
        # A test may ask for a longer request (to build a queue) with a non-OpenAI field.
        seconds = body.get("x_service_seconds")
        seconds = float(seconds) if isinstance(seconds, (int, float)) else None
        hang = body.get("x_hang") is True
        if body.get("stream") is True:
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
            await resp.prepare(request)

            async def token(i: int) -> None:
                chunk = {"id": "chatcmpl-s", "object": "chat.completion.chunk", "model": model.name,
                         "choices": [{"index": 0, "delta": {"content": f"t{i} "}, "finish_reason": None}]}
                await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
            await model.serve_one(seconds, on_token=token, hang=hang)
            await resp.write(f"data: {json.dumps({'answered_by': model.pod})}\n\ndata: [DONE]\n\n".encode())
            await resp.write_eof()
            return resp
        await model.serve_one(seconds, hang=hang)
        return web.json_response({
            "id": f"chatcmpl-{model.served}", "object": "chat.completion", "created": int(time.time()),
            "model": model.name,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": f"answered by {model.pod}"}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        })

    async def metrics(_: web.Request) -> web.Response:
        label = f'model_name="{model.name}"'
        text = (
            "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n"
            "# TYPE vllm:num_requests_waiting gauge\n"
            f"vllm:num_requests_waiting{{{label}}} {model.waiting}\n"
            "# HELP vllm:num_requests_running Number of requests currently running on GPU.\n"
            "# TYPE vllm:num_requests_running gauge\n"
            f"vllm:num_requests_running{{{label}}} {model.running}\n"
            "# HELP vllm:generation_tokens_total Number of generation tokens processed.\n"
            "# TYPE vllm:generation_tokens_total counter\n"
            f"vllm:generation_tokens_total{{{label}}} {model.tokens}\n"
            "# HELP vllm:request_success_total Count of successfully processed requests.\n"
            "# TYPE vllm:request_success_total counter\n"
            f"vllm:request_success_total{{{label}}} {model.served}\n"
        )
        return web.Response(text=text, content_type="text/plain")

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/metrics", metrics)
    return app


async def consume(model: Model, redis_addr: str, queue: str, stop: asyncio.Event) -> None:
    """Pop jobs while up; a job is recorded as done only after it was served."""
    host, _, port = redis_addr.rpartition(":")
    while not stop.is_set():
        r = Redis(host, int(port))
        try:
            await r.connect()
            while not stop.is_set():
                await model.slots.acquire()       # take a job only when a slot is free
                model.slots.release()
                got = await r.call("BRPOP", queue, "1")
                if got is None:
                    continue
                job = got[1].decode() if isinstance(got, list) else str(got)
                _, _, secs = job.partition("@")
                # a job taken is in flight: it is finished even while draining
                await model.serve_one(float(secs) if secs.replace(".", "", 1).isdigit() else None)
                await r.call("LPUSH", f"{queue}:done", f"{job}|{model.pod}")
        except (OSError, ConnectionError, RuntimeError) as e:
            print(f"standin: redis: {e}", file=sys.stderr, flush=True)
            await asyncio.sleep(0.5)
        finally:
            await r.close()


async def main_async(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    model = Model(args.model, args.pod, args.slots, args.service_time, args.token_interval)
    try:
        await asyncio.wait_for(stop.wait(), timeout=args.load_delay)   # "loading the weights"
        return                                                          # stopped while loading
    except asyncio.TimeoutError:
        pass
    runner = web.AppRunner(make_app(model), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, args.host, args.port).start()
    print(f"standin: {args.model} on {args.host}:{args.port} ready after {args.load_delay}s", flush=True)
    consumer = None
    consumer_stop = asyncio.Event()
    if args.redis and args.queue:
        consumer = asyncio.create_task(consume(model, args.redis, args.queue, consumer_stop))
    await stop.wait()
    if args.shutdown_timeout <= 0:
        # vLLM's default: in-flight requests are aborted, the process ends now
        print(f"standin: SIGTERM, aborting {model.busy} request(s) in flight", flush=True)
        os._exit(0)
    model.draining = True
    consumer_stop.set()                    # no new job is taken; the one being served finishes
    # Keep listening (/health and /metrics answer, new requests get 503) but close idle keep-alive
    # connections at once and the busy ones after their response, so a client's pooled connection is not used
    # for new work here (uvicorn, vLLM's server, does the same with the connections it shuts down).
    for conn in list(runner.server.connections if runner.server else []):
        conn.close()
    t0 = time.monotonic()
    print(f"standin: SIGTERM, draining {model.busy} request(s) for up to {args.shutdown_timeout}s", flush=True)
    deadline = t0 + args.shutdown_timeout
    while (model.busy or (consumer is not None and not consumer.done())) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    print(f"standin: drained in {time.monotonic() - t0:.2f}s, {model.busy} request(s) left", flush=True)
    if model.busy:
        os._exit(0)                        # the timeout passed: what is left is aborted
    await asyncio.sleep(0.1)               # the last bytes of finished streams leave the socket
    if consumer is not None:
        consumer.cancel()
    await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--model", default="model")
    p.add_argument("--pod", default=os.environ.get("HOSTNAME", "standin"))
    p.add_argument("--load-delay", type=float, default=0.0)
    p.add_argument("--service-time", type=float, default=0.05)
    p.add_argument("--slots", type=int, default=4)
    p.add_argument("--redis", default="")
    p.add_argument("--queue", default="")
    p.add_argument("--shutdown-timeout", type=float, default=0.0,
                   help="seconds to drain in-flight requests on SIGTERM (vLLM's flag); 0 aborts them")
    p.add_argument("--token-interval", type=float, default=0.25)
    asyncio.run(main_async(p.parse_args(argv)))


if __name__ == "__main__":
    main()
