"""Reference costs for the gateway: the thinnest servers that could stand where localroute stands.

    python -m bench.floors [--seconds 5] [--clients 16]

Each is uvicorn (httptools, uvloop, no access log) with one Starlette route, measured like
localroute (closed-loop clients, CPU time of the serving process per reply), in front of the same
mock upstream:

- `fixed`: answers the mock's completion itself, no upstream call: the server + framework floor;
- `httpx`: forwards the body with one shared `httpx.AsyncClient`, parses the JSON, returns a
  JSONResponse: the floor of any gateway built on httpx;
- `raw`: the same with a pool of raw keep-alive asyncio connections (`bench.loadclient`) instead
  of httpx: the floor with a lean upstream client (a stream is relayed as its bytes arrive, untouched:
  `bench.overhead --floor` uses it as a latency floor);
- `localroute`: the real gateway, for comparison.

The differences price each layer: localroute - httpx is localroute's own per-request work;
httpx - raw is what httpx costs per call.
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import time
from pathlib import Path

from bench import servers
from bench.loadclient import closed_loop
from bench.overhead import cpu_seconds, make_target

APP = """
import asyncio, json, sys
import httpx, uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from bench.loadclient import Connection, request_bytes
from bench.mock_upstream import COMPLETION

kind, port, mock = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
FIXED = COMPLETION.split(b"\\r\\n\\r\\n", 1)[1]
URL = f"http://127.0.0.1:{mock}/v1/chat/completions"
state = {}
idle = []

async def fixed(request):
    await request.body()
    return Response(FIXED, media_type="application/json")

async def via_httpx(request):
    body = json.loads(await request.body())
    if "client" not in state:  # as RemoteBackend builds and calls it
        state["client"] = httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=5.0, pool=5.0))
    client = state["client"]
    req = client.build_request("POST", URL, json=body, headers={"Accept": "application/json"})
    r = await client.send(req, stream=True)
    try:
        content = await r.aread()
    finally:
        await r.aclose()
    return JSONResponse(json.loads(content))

class Relay(Connection):  # a raw connection that also hands each piece of a stream on as it comes

    queue = None
    sent = 0

    def data_received(self, data):
        super().data_received(data)
        ended = self.fut is not None and self.fut.done()
        if self.queue is not None and (len(self.body) > self.sent or ended):
            self.queue.put_nowait(bytes(self.body[self.sent :]))  # b"" once only the end came
            self.sent = len(self.body)

    def connection_lost(self, exc):
        super().connection_lost(exc)  # fails the reply's future
        if self.queue is not None:
            self.queue.put_nowait(b"")  # wakes the relay, which sees the failure

async def relay(conn, done):
    while True:
        piece = await conn.queue.get()
        if piece:
            yield piece
        if done.done() and conn.queue.empty():
            break
    conn.queue = None
    done.result()  # the upstream dropped mid-stream: the response fails, the connection is not reused
    idle.append(conn)

async def via_raw(request):
    body = json.loads(await request.body())
    conn = idle.pop() if idle else await Relay.open("127.0.0.1", mock)
    if body.get("stream"):  # relayed as it comes, bytes untouched (bench.overhead --floor)
        conn.queue, conn.sent = asyncio.Queue(), 0
        done = conn.request(request_bytes("127.0.0.1", mock, "/v1/chat/completions", body), True)
        return StreamingResponse(relay(conn, done), media_type="text/event-stream")
    await conn.request(request_bytes("127.0.0.1", mock, "/v1/chat/completions", body), False)
    idle.append(conn)
    return JSONResponse(json.loads(conn.body))

handler = {"fixed": fixed, "httpx": via_httpx, "raw": via_raw}[kind]
app = Starlette(routes=[Route("/v1/chat/completions", handler, methods=["POST"])])
uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
"""
KINDS = ("fixed", "raw", "httpx")


def measure(port: int, pid: int, clients: int, seconds: float) -> tuple[float, float, int]:
    """(rps, CPU µs per reply of `pid`, errors) for `clients` closed-loop json clients."""
    import uvloop

    target = make_target("x", port, None, pid)
    cpu0 = cpu_seconds(pid)
    res = uvloop.run(
        closed_loop("127.0.0.1", port, target.payloads["json"], False, clients, seconds, 1.0, 10**7)
    )
    cpu = (cpu_seconds(pid) - cpu0) / res.completed * 1e6 if res.completed else float("nan")
    return res.rps, cpu, res.errors


def floors_table(seconds: float, clients: int, audit: bool = True) -> str:
    rows = [
        f"| server ({clients} clients, json) | rps | CPU µs/request | errors |",
        "|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory(prefix="localroute-floors-") as tmp:
        work = Path(tmp)
        mock = servers.start_mock(work)
        try:
            for kind in KINDS:
                child = start_floor(kind, mock.port, work)
                try:
                    rps, cpu, errors = measure(child.port, child.proc.pid, clients, seconds)
                finally:
                    child.stop()
                rows.append(f"| {kind} | {rps:.0f} | {cpu:.0f} | {errors} |")
            for feedback in (True, False):  # the second prices the feedback store (on by default)
                side = work / f"localroute-{feedback}"
                side.mkdir()
                lr = servers.start_localroute(mock.port, side, audit=audit, feedback=feedback)
                try:
                    rps, cpu, errors = measure(lr.port, lr.proc.pid, clients, seconds)
                finally:
                    lr.stop()
                what = f"audit {'on' if audit else 'off'}, feedback store {'on' if feedback else 'off'}"
                rows.append(f"| localroute ({what}) | {rps:.0f} | {cpu:.0f} | {errors} |")
        finally:
            mock.stop()
    return "\n".join(rows)


def start_floor(kind: str, mock_port: int, work: Path) -> servers.Child:
    """One floor server (`fixed`, `raw` or `httpx`) in front of the mock, listening."""
    port = servers.free_port()
    child = servers.spawn(kind, [sys.executable, "-c", APP, kind, str(port), str(mock_port)], port, work)
    try:
        _wait_port(child)
    except BaseException:
        child.stop()
        raise
    return child


def _wait_port(child: servers.Child, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.proc.poll() is not None:
            raise RuntimeError(f"{child.name} exited:\n{child.tail()}")
        try:
            with socket.create_connection(("127.0.0.1", child.port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{child.name} did not listen:\n{child.tail()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5.0, help="measured seconds per server")
    ap.add_argument("--clients", type=int, default=16, help="closed-loop clients")
    ap.add_argument("--no-audit", action="store_true", help="run localroute with audit_enabled = false")
    args = ap.parse_args()
    print(floors_table(args.seconds, args.clients, audit=not args.no_audit))


if __name__ == "__main__":
    main()
