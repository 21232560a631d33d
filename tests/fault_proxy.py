"""A seeded fault-injecting HTTP proxy in front of the test GCS emulator (tests/gcs_emulator.py).

`FaultProxy(target, rate=0.2, seed=0).start()` listens on 127.0.0.1 and forwards every request
to `target` (the emulator's URL), except that a seeded share `rate` of them fail, each in one of
the ways object storage fails under load:

    503    answered "503 Service Unavailable" without reaching the store;
    429    answered "429 Too Many Requests" without reaching the store;
    drop   forwarded (the store does the work: an upload completes, a delete deletes), and the
           connection is closed half-way through the response: the client sees a broken
           response to a request that took effect, the hardest case for a retry.

`kinds` picks which (default all three, equally likely). Point gcsfs and tensorstore at
`proxy.url` (`proxy.env`) instead of the emulator's. `requests` and `faults` count what it saw
(`faults_by_kind` per kind). Run alone: `python tests/fault_proxy.py TARGET_URL --rate 0.2
--port 8123` (prints the counts when stopped with Ctrl-C).
"""

from __future__ import annotations

import argparse
import collections
import http.client
import random
import socket
import threading
import urllib.parse
from http import server as http_server

KINDS = ("503", "429", "drop")
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "upgrade", "trailer"}


class FaultProxy:
    def __init__(
        self,
        target: str,
        *,
        rate: float = 0.2,
        seed: int = 0,
        kinds: tuple[str, ...] = KINDS,
        port: int = 0,
    ):
        unknown = set(kinds) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; known: {KINDS}")
        parsed = urllib.parse.urlsplit(target)
        self.target = (parsed.hostname, parsed.port or 80)
        self.rate, self.kinds = float(rate), tuple(kinds)
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self.requests = 0
        self.faults_by_kind: collections.Counter = collections.Counter()
        self._server = _Server(("127.0.0.1", port), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = None

    @property
    def faults(self) -> int:
        return sum(self.faults_by_kind.values())

    @property
    def env(self) -> dict[str, str]:
        """The variables that send gcsfs and tensorstore through this proxy."""
        return {"STORAGE_EMULATOR_HOST": self.url, "TENSORSTORE_GCS_HTTP_URL": self.url}

    def set_rate(self, rate: float) -> None:
        with self._lock:
            self.rate = float(rate)

    def decide(self) -> str | None:
        """The fault for the next request, or None (seeded; one draw per request)."""
        with self._lock:
            self.requests += 1
            draw, pick = self._random.random(), self._random.randrange(len(self.kinds))
            if draw >= self.rate:
                return None
            kind = self.kinds[pick]
            self.faults_by_kind[kind] += 1
            return kind

    def start(self) -> FaultProxy:
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _handler(self):
        proxy = self

        class Handler(http_server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the clients expect

            def log_message(self, *args):
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    parts = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0], 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return b"".join(parts)
                        parts.append(self.rfile.read(size))
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _refuse(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _forward(self, body: bytes):
                connection = http.client.HTTPConnection(*proxy.target, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                    if body or self.command in ("POST", "PUT", "PATCH"):
                        headers["Content-Length"] = str(len(body))
                    connection.request(self.command, self.path, body=body, headers=headers)
                    response = connection.getresponse()
                    return response.status, response.reason, response.getheaders(), response.read()
                finally:
                    connection.close()

            def _serve(self) -> None:
                body = self._body()
                kind = proxy.decide()
                if kind in ("503", "429"):
                    status = int(kind)
                    message = b'{"error": {"code": %d, "message": "injected fault"}}' % status
                    self._refuse(status, message)
                    return
                status, reason, headers, content = self._forward(body)
                self.send_response(status, reason)
                head = self.command == "HEAD"  # its Content-Length is the object's, no body
                for key, value in headers:
                    if key.lower() not in HOP_BY_HOP and (head or key.lower() != "content-length"):
                        self.send_header(key, value)
                if not head:
                    self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                if kind == "drop":  # half the body, then the connection goes away
                    self.wfile.write(content[: len(content) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    try:
                        self.connection.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    return
                self.wfile.write(content)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _serve

        return Handler


class _Server(http_server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # a listen backlog as large as the emulator's (gcs_emulator.py)

    def handle_error(self, request, client_address):
        pass  # a client that hung up (it gave up on a slow or broken answer): not ours to report


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", help="the emulator's URL, e.g. http://127.0.0.1:9023")
    parser.add_argument("--rate", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    proxy = FaultProxy(
        args.target,
        rate=args.rate,
        seed=args.seed,
        kinds=tuple(args.kinds.split(",")),
        port=args.port,
    )
    print(proxy.url, flush=True)
    try:
        proxy._server.serve_forever()
    except KeyboardInterrupt:
        pass
    print(f"{proxy.requests} requests, {proxy.faults} faults {dict(proxy.faults_by_kind)}")


if __name__ == "__main__":
    main()
