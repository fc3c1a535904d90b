#!/usr/bin/env python3
"""A stand-in OpenAI-compatible API for the tests: a threaded HTTP/1.1
server on 127.0.0.1. Run as a program, it binds the port given by --port
(0: any free one), prints "PORT <n>" on stdout and serves until killed.

Routes (every one takes ?key=K: requests are counted per key, default the
path; /__stats reports them):
  /echo             200 {"method", "path", "query", "headers", "body", "json"}
  /delay?ms=N       200 {"ok": true} after N ms
  /flaky?fail=N&retry_after=S
                    429 with "Retry-After: S" for the first N requests of
                    the key, then 200 {"ok": true, "attempt": i}
  /status/CODE      CODE with {"error": {"message": "status CODE"}}
  /huge?bytes=N     200 with N bytes of "x" (text/plain), written in pieces
  /close            closes the connection without an answer
  /v1/chat/completions
                    an OpenAI-shaped chat completion with an x-request-id
                    header: 200 {"id", "object", "model", "choices",
                    "usage"}, the reply being "echo: " + the last message's
                    content; a "model" of "status-CODE" answers CODE with an
                    OpenAI error body, "deep-N" 200 with N nested JSON arrays,
                    and "close" closes the connection
  /__stats?key=K    {"requests", "inflight", "max_inflight", "times"}: times
                    are the monotonic seconds at which each request came
  /__reset          forgets every key
"""

import argparse
import json
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


class Counters:
        def __init__(self):
                self.lock = threading.Lock()
                self.keys = {}

        def _get(self, key):
                return self.keys.setdefault(key, {"requests": 0, "inflight": 0,
                                                  "max_inflight": 0, "times": []})

        def begin(self, key):
                """Counts a request; returns how many of the key came before."""
                with self.lock:
                        k = self._get(key)
                        n = k["requests"]
                        k["requests"] += 1
                        k["inflight"] += 1
                        k["max_inflight"] = max(k["max_inflight"], k["inflight"])
                        k["times"].append(time.monotonic())
                        return n

        def end(self, key):
                with self.lock:
                        self._get(key)["inflight"] -= 1

        def snapshot(self, key):
                with self.lock:
                        k = self._get(key)
                        return dict(k, times=list(k["times"]))

        def reset(self):
                with self.lock:
                        self.keys = {}


COUNTERS = Counters()


class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):
                pass

        def answer(self, status, obj=None, body=None, ctype="application/json", headers=()):
                data = body if body is not None else json.dumps(obj).encode()
                # Out of flight before the client can see the answer and
                # send its next request.
                self.done()
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                for name, value in headers:
                        self.send_header(name, value)
                self.end_headers()
                if self.command != "HEAD":
                        self.wfile.write(data)

        def done(self):
                if self.counted is not None:
                        COUNTERS.end(self.counted)
                        self.counted = None

        def handle_any(self):
                self.counted = None
                url = urlsplit(self.path)
                q = {k: v[-1] for k, v in parse_qs(url.query).items()}
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if url.path == "/__stats":
                        return self.answer(200, COUNTERS.snapshot(q.get("key", "")))
                if url.path == "/__reset":
                        COUNTERS.reset()
                        return self.answer(200, {})
                key = q.get("key", url.path)
                n = COUNTERS.begin(key)
                self.counted = key
                try:
                        self.route(url, q, body, n)
                finally:
                        self.done()

        def route(self, url, q, body, n):
                if url.path == "/echo":
                        try:
                                parsed = json.loads(body) if body else None
                        except ValueError:
                                parsed = None
                        return self.answer(200, {
                                "method": self.command,
                                "path": url.path,
                                "query": q,
                                "headers": {k.lower(): v for k, v in self.headers.items()},
                                "body": body.decode("utf-8", "replace"),
                                "json": parsed,
                        })
                if url.path == "/delay":
                        time.sleep(int(q.get("ms", "100")) / 1000.0)
                        return self.answer(200, {"ok": True})
                if url.path == "/flaky":
                        if n < int(q.get("fail", "2")):
                                return self.answer(429, {"error": {"message": "slow down"}},
                                                   headers=[("Retry-After", q.get("retry_after", "1"))])
                        return self.answer(200, {"ok": True, "attempt": n + 1})
                if url.path.startswith("/status/"):
                        code = int(url.path.rsplit("/", 1)[1])
                        return self.answer(code, {"error": {"message": "status %d" % code}})
                if url.path == "/huge":
                        size = int(q.get("bytes", str(1 << 20)))
                        self.send_response(200)
                        self.send_header("Content-Type", "text/plain")
                        self.send_header("Content-Length", str(size))
                        self.end_headers()
                        piece = b"x" * 65536
                        try:
                                while size > 0:
                                        self.wfile.write(piece[:min(size, len(piece))])
                                        size -= len(piece)
                        except OSError:
                                pass    # the client gave up, as it should
                        return None
                if url.path == "/close":
                        return self.hang_up()
                if url.path == "/v1/chat/completions":
                        return self.chat_completion(body)
                return self.answer(404, {"error": {"message": "no route %s" % url.path}})

        def hang_up(self):
                self.close_connection = True
                self.connection.shutdown(2)

        def chat_completion(self, body):
                rid = [("x-request-id", "req_" + uuid.uuid4().hex)]
                try:
                        req = json.loads(body)
                        model = req["model"]
                        content = req["messages"][-1]["content"]
                except (ValueError, KeyError, IndexError, TypeError):
                        return self.answer(400, {"error": {"message": "bad request body",
                                                           "type": "invalid_request_error"}},
                                           headers=rid)
                if model == "close":
                        return self.hang_up()
                if model.startswith("deep-"):
                        depth = int(model[len("deep-"):])
                        return self.answer(200, body=b"[" * depth + b"]" * depth, headers=rid)
                if model.startswith("status-"):
                        code = int(model[len("status-"):])
                        return self.answer(code, {"error": {"message": "status %d" % code,
                                                            "type": "invalid_request_error",
                                                            "param": None, "code": None}},
                                           headers=rid)
                reply = "echo: " + content
                return self.answer(200, {
                        "id": "chatcmpl-" + uuid.uuid4().hex,
                        "object": "chat.completion",
                        "created": int(time.time()),
                        "model": model,
                        "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": reply}}],
                        "usage": {"prompt_tokens": len(content.split()),
                                  "completion_tokens": len(reply.split()),
                                  "total_tokens": len(content.split()) + len(reply.split())},
                }, headers=rid)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = handle_any


class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 128


def main():
        ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
        ap.add_argument("--port", type=int, default=0)
        args = ap.parse_args()
        server = Server(("127.0.0.1", args.port), Handler)
        sys.stdout.write("PORT %d\n" % server.server_address[1])
        sys.stdout.flush()
        server.serve_forever()


if __name__ == "__main__":
        main()
