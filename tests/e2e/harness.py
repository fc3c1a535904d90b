"""End-to-end harness: starts the built futured on a free loopback port and
speaks HTTP to it.

Every daemon started here lives in its own temporary directory (database and
log) and its own session, so cleanup can find it and the CPU workers it
spawned by process group; cleanup runs at exit, on SIGTERM and from the
watchdog that bounds each test file's run time. No daemon outlives a run.

FUTURED_BIN names the binary; FUTURED_KEEP=1 keeps the temp directories;
FUTURED_TEST_DEADLINE (seconds, default 120) bounds a whole file's run.
"""

import atexit
import http.client
import json
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import traceback
import unittest

HOST = "127.0.0.1"
STATES = ("pending", "running", "succeeded", "failed", "cancelled")
FINISHED = ("succeeded", "failed", "cancelled")
TIME_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")

_daemons = []
_daemons_lock = threading.Lock()


def futured_bin():
        path = os.environ.get("FUTURED_BIN")
        if not path:
                raise RuntimeError("FUTURED_BIN is not set (path of the built futured)")
        if not os.access(path, os.X_OK):
                raise RuntimeError("FUTURED_BIN=%s is not an executable file" % path)
        return os.path.abspath(path)


def free_port():
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind((HOST, 0))
                return s.getsockname()[1]


def poll_until(predicate, timeout, what, interval=0.01):
        """Polls an observable state until predicate() is truthy; returns its
        value, or fails naming what was awaited."""
        deadline = time.monotonic() + timeout
        while True:
                value = predicate()
                if value:
                        return value
                if time.monotonic() >= deadline:
                        raise AssertionError("timed out after %.1f s waiting for %s" % (timeout, what))
                time.sleep(interval)


def parse_time(s):
        """RFC 3339 UTC with milliseconds -> seconds since the epoch."""
        if not isinstance(s, str) or not TIME_RE.match(s):
                raise AssertionError("not an RFC 3339 UTC time with ms: %r" % (s,))
        import calendar
        t = time.strptime(s[:19], "%Y-%m-%dT%H:%M:%S")
        return calendar.timegm(t) + int(s[20:23]) / 1000.0


class Response:
        def __init__(self, status, headers, body):
                self.status = status
                self.headers = headers          # dict, lower-case names
                self.body = body                # bytes
                self._json = None

        @property
        def json(self):
                if self._json is None and self.body:
                        try:
                                self._json = json.loads(self.body)
                        except ValueError as e:
                                raise AssertionError("response is not JSON (%s): %r" % (e, self.body[:300]))
                return self._json

        def header(self, name):
                return self.headers.get(name.lower())

        def __repr__(self):
                return "<%d %s>" % (self.status, self.body[:500].decode("utf-8", "replace"))


class Client:
        """One keep-alive HTTP/1.1 connection. Not thread-safe: one per thread."""

        def __init__(self, port, timeout=30.0):
                self.port = port
                self.timeout = timeout
                self.conn = None

        def close(self):
                if self.conn is not None:
                        self.conn.close()
                        self.conn = None

        def request(self, method, path, body=None, raw=None, headers=None, timeout=None):
                """body: an object sent as JSON; raw: bytes sent as they are."""
                hdrs = {}
                if body is not None:
                        raw = json.dumps(body).encode()
                        hdrs["Content-Type"] = "application/json"
                elif raw is not None:
                        hdrs["Content-Type"] = "application/json"
                if headers:
                        hdrs.update(headers)
                # Only a request that cannot change anything is retried on a
                # keep-alive connection the server had closed.
                retry = method in ("GET", "HEAD") and self.conn is not None
                while True:
                        if self.conn is None:
                                self.conn = http.client.HTTPConnection(HOST, self.port, timeout=timeout or self.timeout)
                        elif timeout is not None:
                                self.conn.timeout = timeout
                                if self.conn.sock is not None:
                                        self.conn.sock.settimeout(timeout)
                        try:
                                self.conn.request(method, path, body=raw, headers=hdrs)
                                r = self.conn.getresponse()
                                data = r.read()
                        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                                self.close()
                                if retry:
                                        retry = False
                                        continue
                                raise
                        except Exception:
                                self.close()
                                raise
                        if timeout is not None and self.conn is not None:
                                self.conn.timeout = self.timeout
                                if self.conn.sock is not None:
                                        self.conn.sock.settimeout(self.timeout)
                        resp = Response(r.status, {k.lower(): v for k, v in r.getheaders()}, data)
                        if r.will_close:
                                self.close()
                        return resp


def server_rx_queue(server_port, client_port):
        """Bytes the daemon has not read yet on the connection from
        client_port, or None while the kernel shows no such socket."""
        want_local = "%04X" % server_port
        want_remote = "%04X" % client_port
        with open("/proc/net/tcp") as f:
                next(f)
                for line in f:
                        fields = line.split()
                        local, remote = fields[1], fields[2]
                        if local.endswith(":" + want_local) and remote.endswith(":" + want_remote):
                                return int(fields[4].split(":")[1], 16)
        return None


class Daemon:
        """One futured process on a fixed port and database across restarts."""

        def __init__(self, io_threads=4, cpu_workers=2, args=(), shutdown_grace=None,
                     retry_base=None, log_level="debug"):
                self.bin = futured_bin()
                self.dir = tempfile.mkdtemp(prefix="futured-e2e-")
                self.db = os.path.join(self.dir, "futured.db")
                self.port = free_port()
                self.argv = [self.bin, "--listen", "%s:%d" % (HOST, self.port), "--db", self.db]
                if io_threads is not None:
                        self.argv += ["--io-threads", str(io_threads)]
                if cpu_workers is not None:
                        self.argv += ["--cpu-workers", str(cpu_workers)]
                if shutdown_grace is not None:
                        self.argv += ["--shutdown-grace", str(shutdown_grace)]
                if retry_base is not None:
                        self.argv += ["--retry-base", str(retry_base)]
                if log_level:
                        self.argv += ["--log-level", log_level]
                self.argv += list(args)
                self.proc = None
                self.pgids = []
                self.runs = 0
                self.log_path = None
                self.client = None
                self.failed = False
                with _daemons_lock:
                        _daemons.append(self)

        # ---- process life ----

        def start(self, timeout=10.0):
                import subprocess
                assert self.proc is None or self.proc.poll() is not None, "already running"
                self.runs += 1
                self.log_path = os.path.join(self.dir, "futured.%d.log" % self.runs)
                log = open(self.log_path, "wb")
                try:
                        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log,
                                                     stderr=log, cwd=self.dir, start_new_session=True)
                finally:
                        log.close()
                self.pgids.append(self.proc.pid)
                self.client = Client(self.port)
                deadline = time.monotonic() + timeout
                while True:
                        rc = self.proc.poll()
                        if rc is not None:
                                self.failed = True
                                raise AssertionError("futured exited with %d at start\n%s" % (rc, self.log_tail()))
                        probe = Client(self.port, timeout=2)
                        try:
                                if probe.request("GET", "/healthz").status == 200:
                                        return self
                        except OSError:
                                pass
                        finally:
                                probe.close()
                        if time.monotonic() >= deadline:
                                self.failed = True
                                raise AssertionError("futured not healthy within %.0f s\n%s" % (timeout, self.log_tail()))
                        time.sleep(0.02)

        @property
        def pid(self):
                return self.proc.pid

        def running(self):
                return self.proc is not None and self.proc.poll() is None

        def send_signal(self, sig):
                self.proc.send_signal(sig)

        def stop(self, sig=signal.SIGTERM, timeout=15.0):
                """Signals the daemon, waits, asserts exit code 0; returns the
                seconds it took."""
                if self.client:
                        self.client.close()
                t0 = time.monotonic()
                self.proc.send_signal(sig)
                rc = self.wait_exit(timeout)
                took = time.monotonic() - t0
                if rc != 0:
                        self.failed = True
                        raise AssertionError("futured exited with %r after %s, expected 0\n%s"
                                             % (rc, signal.Signals(sig).name, self.log_tail()))
                self.check_log()
                return took

        def finish(self):
                """At the end of a test: stops the daemon (exit code 0
                asserted); one that is gone already died on its own, which
                fails the test whatever its assertions said."""
                if self.proc is None:
                        return
                if self.running():
                        self.stop()
                        return
                self.failed = True
                self.check_log()
                raise AssertionError("futured had already exited with %r\n%s"
                                     % (self.proc.returncode, self.log_tail()))

        def wait_exit(self, timeout):
                import subprocess
                try:
                        return self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                        self.failed = True
                        self.proc.kill()
                        self.proc.wait()
                        raise AssertionError("futured did not exit within %.1f s\n%s" % (timeout, self.log_tail()))

        def kill9(self):
                if self.client:
                        self.client.close()
                self.proc.kill()
                self.proc.wait()
                self.check_log()

        def check_log(self):
                """Fails on a sanitizer report from the daemon or a worker."""
                try:
                        with open(self.log_path, "rb") as f:
                                text = f.read().decode("utf-8", "replace")
                except OSError:
                        return
                for mark in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:"):
                        if mark in text:
                                self.failed = True
                                raise AssertionError("sanitizer report in the daemon's log\n%s"
                                                     % self.log_tail(200))

        def restart(self, timeout=10.0):
                return self.start(timeout)

        def log_tail(self, lines=60):
                try:
                        with open(self.log_path, "rb") as f:
                                data = f.read().decode("utf-8", "replace").splitlines()
                except (OSError, TypeError):
                        return "(no log)"
                return "---- %s (last %d lines) ----\n%s\n----" % (self.log_path, lines, "\n".join(data[-lines:]))

        def cleanup(self):
                if self.client:
                        self.client.close()
                if self.proc is not None and self.proc.poll() is None:
                        self.proc.kill()
                        self.proc.wait()
                # Workers a killed daemon left behind: only processes of the
                # sessions this object started, running our binary.
                for pid in _group_members(self.pgids, self.bin):
                        try:
                                os.kill(pid, signal.SIGKILL)
                        except ProcessLookupError:
                                pass
                if self.failed or os.environ.get("FUTURED_KEEP"):
                        sys.stderr.write("kept %s\n" % self.dir)
                else:
                        shutil.rmtree(self.dir, ignore_errors=True)

        # ---- HTTP helpers (on this thread's default client) ----

        def request(self, method, path, body=None, **kw):
                return self.client.request(method, path, body=body, **kw)

        def new_client(self):
                return Client(self.port)

        def submit(self, spec, expect=202, client=None):
                r = (client or self.client).request("POST", "/v1/jobs", body=spec)
                if r.status != expect:
                        raise AssertionError("POST /v1/jobs %s: expected %d, got %r" % (json.dumps(spec), expect, r))
                return r.json

        def job(self, jid, client=None):
                r = (client or self.client).request("GET", "/v1/jobs/%s" % jid)
                if r.status != 200:
                        raise AssertionError("GET /v1/jobs/%s: expected 200, got %r" % (jid, r))
                return r.json

        def wait(self, jid, timeout=10.0, client=None):
                """Long-polls until the job finishes; fails past timeout."""
                deadline = time.monotonic() + timeout
                c = client or self.client
                while True:
                        left = deadline - time.monotonic()
                        w = max(0.1, min(5.0, left))
                        r = c.request("GET", "/v1/jobs/%s?wait=%.3f" % (jid, w), timeout=w + 10)
                        if r.status != 200:
                                raise AssertionError("GET /v1/jobs/%s?wait: expected 200, got %r" % (jid, r))
                        if r.json["state"] in FINISHED:
                                return r.json
                        if time.monotonic() >= deadline:
                                raise AssertionError("job %s not finished within %.1f s: %r" % (jid, timeout, r.json))

        def wait_state(self, jid, states, timeout=10.0):
                if isinstance(states, str):
                        states = (states,)
                return poll_until(lambda: (lambda j: j if j["state"] in states else None)(self.job(jid)),
                                  timeout, "job %s in %s" % (jid, states))

        def stats(self, client=None):
                r = (client or self.client).request("GET", "/v1/stats")
                if r.status != 200:
                        raise AssertionError("GET /v1/stats: expected 200, got %r" % (r,))
                return r.json

        def cpu_pids(self):
                return list(self.stats()["pools"]["cpu"]["pids"])

        def job_counts(self):
                jobs = self.stats()["jobs"]
                return {s: int(jobs[s]) for s in STATES}

        def list_all(self, query="", limit=100):
                """Walks every page; returns the jobs in the order given."""
                jobs, cursor, pages = [], None, 0
                while True:
                        q = "limit=%d" % limit + ("&" + query if query else "")
                        if cursor is not None:
                                q += "&cursor=" + str(cursor)
                        r = self.request("GET", "/v1/jobs?" + q)
                        if r.status != 200:
                                raise AssertionError("GET /v1/jobs?%s: expected 200, got %r" % (q, r))
                        page = r.json
                        if len(page["jobs"]) > limit:
                                raise AssertionError("page of %d jobs with limit %d" % (len(page["jobs"]), limit))
                        jobs += page["jobs"]
                        cursor = page.get("next_cursor")
                        pages += 1
                        if cursor is None or pages > 100000:
                                return jobs


        # ---- batches and streams ----

        def submit_batch(self, body, expect=202, client=None):
                """POST /v1/batches with a JSON body; returns the batch."""
                r = (client or self.client).request("POST", "/v1/batches", body=body)
                if r.status != expect:
                        raise AssertionError("POST /v1/batches: expected %d, got %r" % (expect, r))
                return r.json

        def submit_ndjson(self, chunks, query=""):
                """POST /v1/batches as chunked NDJSON; chunks: an iterable of
                bytes. Returns the Response."""
                return post_chunked(self.port, "/v1/batches" + ("?" + query if query else ""), chunks)

        def batch(self, bid, client=None):
                r = (client or self.client).request("GET", "/v1/batches/%s" % bid)
                if r.status != 200:
                        raise AssertionError("GET /v1/batches/%s: expected 200, got %r" % (bid, r))
                return r.json

        def wait_batch(self, bid, timeout=10.0):
                """Polls the batch until it is done; returns it."""
                return poll_until(lambda: (lambda b: b if b["done"] else None)(self.batch(bid)),
                                  timeout, "batch %s to be done" % bid)

        def stream(self, bid, query="", sse=False, headers=None, timeout=30.0):
                """Opens GET /v1/batches/{bid}/results?query; returns a Stream
                whose head has been read."""
                hdrs = dict(headers or {})
                if sse:
                        hdrs["Accept"] = "text/event-stream"
                path = "/v1/batches/%s/results" % bid + ("?" + query if query else "")
                return Stream(self.port, path, headers=hdrs, timeout=timeout)

        def batch_jobs(self, bid):
                """Every job of the batch (GET /v1/jobs?batch=), by index."""
                return sorted(self.list_all("batch=%s" % bid, limit=1000), key=lambda j: j["index"])


def _group_members(pgids, exe):
        found = []
        wanted = set(pgids)
        for name in os.listdir("/proc"):
                if not name.isdigit():
                        continue
                pid = int(name)
                try:
                        if os.getpgid(pid) not in wanted:
                                continue
                        if os.readlink("/proc/%d/exe" % pid).replace(" (deleted)", "") != exe:
                                continue
                except OSError:
                        continue
                found.append(pid)
        return found



# ---- streaming: chunked responses read as they arrive, NDJSON and SSE ----

def raise_nofile(wanted):
        """Raises this process's RLIMIT_NOFILE soft limit to wanted (capped
        by the hard limit); returns the soft limit now in force. Children
        started afterwards (the daemon) inherit it."""
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and soft < wanted:
                new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
                resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
                soft = new
        return soft


def post_chunked(port, path, chunks, content_type="application/x-ndjson", timeout=120.0):
        """POSTs an iterable of bytes with Transfer-Encoding: chunked
        (http.client encodes a generator body so); returns the Response.
        An answer the server sends before it has read the whole body is
        still read."""
        conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
        try:
                try:
                        conn.request("POST", path, body=iter(chunks), headers={"Content-Type": content_type})
                except (BrokenPipeError, ConnectionResetError):
                        pass
                r = conn.getresponse()
                data = r.read()
                return Response(r.status, {k.lower(): v for k, v in r.getheaders()}, data)
        finally:
                conn.close()


class ChunkedDecoder:
        """Incremental decoder of a chunked body: feed() raw bytes, get the
        decoded bytes back; .done once the last chunk and trailer are in.
        Parses by offset, so a feed of many small chunks costs linear
        time."""

        def __init__(self):
                self.raw = b""
                self.left = 0           # data bytes left in the current chunk
                self.state = "size"     # size, data, crlf, trailer
                self.done = False

        def feed(self, data):
                raw = self.raw + data if self.raw else data
                pos, n = 0, len(raw)
                out = []
                while not self.done:
                        if self.state == "size":
                                i = raw.find(b"\r\n", pos)
                                if i < 0:
                                        break
                                line = raw[pos:i].split(b";", 1)[0].strip()
                                pos = i + 2
                                try:
                                        self.left = int(line, 16)
                                except ValueError:
                                        raise AssertionError("bad chunk size line %r" % (line,))
                                self.state = "data" if self.left else "trailer"
                        elif self.state == "data":
                                if pos >= n:
                                        break
                                take = min(self.left, n - pos)
                                out.append(raw[pos:pos + take])
                                pos += take
                                self.left -= take
                                if self.left == 0:
                                        self.state = "crlf"
                        elif self.state == "crlf":
                                if n - pos < 2:
                                        break
                                if raw[pos:pos + 2] != b"\r\n":
                                        raise AssertionError("chunk not followed by CRLF: %r" % (raw[pos:pos + 20],))
                                pos += 2
                                self.state = "size"
                        else:
                                i = raw.find(b"\r\n", pos)
                                if i < 0:
                                        break
                                line, pos = raw[pos:i], i + 2
                                if not line:
                                        self.done = True
                self.raw = raw[pos:]
                return b"".join(out)


class ResponseReader:
        """Parses one HTTP response fed in pieces: the head, then the body
        (chunked, Content-Length or until close) split into lines, each
        stamped with the time (monotonic, wall) of the recv that completed
        it."""

        def __init__(self):
                self.head = b""
                self.status = None
                self.headers = {}
                self.decoder = None
                self.length = None
                self.partial = b""
                self.lines = []         # [(line without its newline, mono, wall)]
                self.body_bytes = 0
                self.ended = False

        def _body(self, data, mono, wall):
                if self.decoder is not None:
                        data = self.decoder.feed(data)
                        if self.decoder.done:
                                self.ended = True
                elif self.length is not None:
                        data = data[:self.length - self.body_bytes]
                        if self.body_bytes + len(data) >= self.length:
                                self.ended = True
                self.body_bytes += len(data)
                if not data:
                        return
                self.partial += data
                if b"\n" in data:
                        parts = self.partial.split(b"\n")
                        self.partial = parts.pop()
                        self.lines.extend((p, mono, wall) for p in parts)

        def feed(self, data, mono, wall):
                if self.status is None:
                        self.head += data
                        i = self.head.find(b"\r\n\r\n")
                        if i < 0:
                                if len(self.head) > 65536:
                                        raise AssertionError("response head too long")
                                return
                        head, rest = self.head[:i], self.head[i + 4:]
                        lines = head.decode("latin-1").split("\r\n")
                        self.status = int(lines[0].split()[1])
                        for line in lines[1:]:
                                name, _, value = line.partition(":")
                                self.headers[name.strip().lower()] = value.strip()
                        if "chunked" in self.headers.get("transfer-encoding", "").lower():
                                self.decoder = ChunkedDecoder()
                        elif "content-length" in self.headers:
                                self.length = int(self.headers["content-length"])
                                if self.length == 0:
                                        self.ended = True
                        data = rest
                        if not data:
                                return
                self._body(data, mono, wall)

        def body(self):
                """The body received so far."""
                return b"".join(l[0] + b"\n" for l in self.lines) + self.partial

        def eof(self):
                """The peer closed: a close-delimited body ends here."""
                if self.status is not None and self.decoder is None and self.length is None:
                        self.ended = True
                if self.partial and self.ended:
                        now = time.monotonic(), time.time()
                        self.lines.append((self.partial, now[0], now[1]))
                        self.partial = b""


class SSEParser:
        """Server-Sent Events, one line at a time: feed() returns a dict
        {"id", "event", "data", "mono", "wall"} when a blank line ends an
        event (data lines joined by newlines), None otherwise. Comments
        (lines starting with ':') and unknown fields are ignored, as the
        SSE specification says."""

        def __init__(self):
                self._reset()

        def _reset(self):
                self.ev = {"id": None, "event": None, "data": None}
                self.seen = False

        def feed(self, line, mono=0.0, wall=0.0):
                text = line.decode("utf-8")
                if text.endswith("\r"):
                        text = text[:-1]
                if text == "":
                        if not self.seen:
                                return None
                        ev = self.ev
                        ev["mono"], ev["wall"] = mono, wall
                        self._reset()
                        return ev
                if text.startswith(":"):
                        return None
                name, _, value = text.partition(":")
                if value.startswith(" "):
                        value = value[1:]
                self.seen = True
                if name == "data":
                        self.ev["data"] = value if self.ev["data"] is None else self.ev["data"] + "\n" + value
                elif name in ("id", "event"):
                        self.ev[name] = value
                return None


def sse_events(lines):
        """Every complete event in lines [(bytes, mono, wall)]."""
        parser = SSEParser()
        out = []
        for line in lines:
                ev = parser.feed(*line)
                if ev is not None:
                        out.append(ev)
        return out


class Stream:
        """GET of a streamed response on its own socket, read as it arrives:
        read_line() for NDJSON, read_event() for Server-Sent Events."""

        def __init__(self, port, path, headers=None, timeout=30.0):
                self.timeout = timeout
                self.sock = socket.create_connection((HOST, port), timeout=timeout)
                self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                req = "GET %s HTTP/1.1\r\nHost: %s:%d\r\n" % (path, HOST, port)
                for k, v in (headers or {}).items():
                        req += "%s: %s\r\n" % (k, v)
                self.sock.sendall((req + "\r\n").encode("latin-1"))
                self.reader = ResponseReader()
                self.closed_by_peer = False
                self.pos = 0            # lines already handed out
                deadline = time.monotonic() + timeout
                while self.reader.status is None:
                        if not self._recv(deadline):
                                raise AssertionError("connection closed before the response head of GET %s" % path)
                self.status = self.reader.status
                self.headers = self.reader.headers
                self.body = None
                if self.status != 200:
                        while not self.reader.ended and self._recv(deadline):
                                pass
                        self.body = self.reader.body()
                        self.close()

        def header(self, name):
                return self.headers.get(name.lower())

        @property
        def json(self):
                return json.loads(self.body)

        def __repr__(self):
                return "<stream %d %r>" % (self.status, (self.body or b"")[:300])

        def close(self):
                if self.sock is not None:
                        self.sock.close()
                        self.sock = None

        def _recv(self, deadline):
                """One recv into the reader; False at EOF. Raises
                socket.timeout past the deadline."""
                left = deadline - time.monotonic()
                if left <= 0:
                        raise socket.timeout("stream read deadline")
                self.sock.settimeout(left)
                data = self.sock.recv(262144)
                mono, wall = time.monotonic(), time.time()
                if not data:
                        self.closed_by_peer = True
                        self.reader.eof()
                        return False
                self.reader.feed(data, mono, wall)
                return True

        @property
        def ended(self):
                """The body is complete (last chunk seen) and every line read."""
                return self.reader.ended and self.pos >= len(self.reader.lines)

        def read_line(self, timeout=None):
                """The next body line as (bytes, monotonic, wall) or None when
                the body ended. Fails past timeout."""
                limit = self.timeout if timeout is None else timeout
                deadline = time.monotonic() + limit
                while self.pos >= len(self.reader.lines):
                        if self.reader.ended:
                                self.close()
                                return None
                        if self.sock is None:
                                raise AssertionError("stream already closed")
                        try:
                                if not self._recv(deadline):
                                        if not self.reader.ended:
                                                raise AssertionError("connection closed before the end of the "
                                                                     "chunked body")
                        except socket.timeout:
                                raise AssertionError("no stream line within %.1f s" % limit)
                line = self.reader.lines[self.pos]
                self.pos += 1
                return line

        def read_json(self, timeout=None):
                """The next NDJSON object (blank lines skipped) as (obj,
                monotonic, wall), or None when the body ended."""
                while True:
                        line = self.read_line(timeout)
                        if line is None:
                                return None
                        text = line[0].strip()
                        if not text:
                                continue
                        try:
                                return json.loads(text), line[1], line[2]
                        except ValueError as e:
                                raise AssertionError("stream line is not JSON (%s): %r" % (e, text[:300]))

        def read_all_json(self, timeout=30.0):
                """Every remaining NDJSON object until the body ends."""
                deadline = time.monotonic() + timeout
                out = []
                while True:
                        x = self.read_json(max(0.001, deadline - time.monotonic()))
                        if x is None:
                                return out
                        out.append(x)

        def read_event(self, timeout=None):
                """The next SSE event (see SSEParser) or None when the body
                ended."""
                deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
                parser = SSEParser()
                while True:
                        line = self.read_line(max(0.001, deadline - time.monotonic()))
                        if line is None:
                                if parser.seen:
                                        raise AssertionError("SSE stream ended inside an event: %r" % (parser.ev,))
                                return None
                        ev = parser.feed(*line)
                        if ev is not None:
                                return ev

        def read_all_events(self, timeout=30.0):
                deadline = time.monotonic() + timeout
                out = []
                while True:
                        ev = self.read_event(max(0.001, deadline - time.monotonic()))
                        if ev is None:
                                return out
                        out.append(ev)


def proc_alive(pid):
        """True while pid exists and is not a zombie."""
        try:
                with open("/proc/%d/stat" % pid) as f:
                        return f.read().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
                return False


def proc_state(pid):
        try:
                with open("/proc/%d/stat" % pid) as f:
                        return f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
                return None


def proc_cpu_ticks(pid):
        """utime + stime of pid, in clock ticks."""
        with open("/proc/%d/stat" % pid) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])


def wait_quiet(pids, timeout=10.0, window=0.2):
        """Waits until pids used no CPU tick for a whole window: start-up
        work (a worker exec'ing, under a sanitizer slowly) is over, so what
        is measured next is the idle process alone."""
        deadline = time.monotonic() + timeout
        last = [proc_cpu_ticks(p) for p in pids]
        while time.monotonic() < deadline:
                time.sleep(window)
                now = [proc_cpu_ticks(p) for p in pids]
                if now == last:
                        return
                last = now
        raise AssertionError("pids %r kept using CPU for %g s" % (pids, timeout))


def cleanup_all():
        with _daemons_lock:
                ds = list(_daemons)
                _daemons.clear()
        for d in ds:
                try:
                        d.cleanup()
                except Exception:
                        traceback.print_exc()


atexit.register(cleanup_all)


def _on_term(signum, frame):
        # unittest would record a SystemExit as one test's error and go on:
        # stop every daemon and leave now instead.
        sys.stderr.write("\nterminated by %s\n" % signal.Signals(signum).name)
        cleanup_all()
        print("0 passed, 1 failed (terminated)")
        sys.stdout.flush()
        os._exit(128 + signum)


def _watchdog(seconds):
        def fire():
                import faulthandler
                sys.stderr.write("\nWATCHDOG: the run exceeded %.0f s; stacks:\n" % seconds)
                faulthandler.dump_traceback(all_threads=True)
                for d in list(_daemons):
                        d.failed = True
                        sys.stderr.write(d.log_tail(30) + "\n")
                cleanup_all()
                print("0 passed, 1 failed (watchdog)")
                sys.stdout.flush()
                os._exit(1)
        t = threading.Timer(seconds, fire)
        t.daemon = True
        t.start()


class DaemonTestCase(unittest.TestCase):
        """A test class sharing one daemon, started in setUpClass with the
        class's DAEMON_ARGS and stopped (exit code 0 asserted) at the end."""

        DAEMON_ARGS = {}
        daemon = None

        @classmethod
        def setUpClass(cls):
                cls.daemon = Daemon(**cls.DAEMON_ARGS).start()

        @classmethod
        def tearDownClass(cls):
                d = cls.daemon
                if d is not None:
                        d.finish()

        def assertIdle(self, timeout=30):
                """Waits until the daemon holds no pending or running job: a
                test sharing the class's daemon starts from a quiet one."""
                d = self.daemon
                poll_until(lambda: (lambda c: c["pending"] + c["running"] == 0)(d.job_counts()), timeout,
                           "no pending or running job before the test")

        def assertHealthy(self):
                r = self.daemon.request("GET", "/healthz")
                self.assertEqual(r.status, 200, "healthz after the test: %r" % (r,))

        def assertError(self, r, status, codes, what=""):
                """r is a JSON error with that status and one of codes (None:
                any code)."""
                if isinstance(codes, str):
                        codes = (codes,)
                ctx = "%s: expected %d %s, got %r" % (what, status, "|".join(codes or ("*",)), r)
                self.assertEqual(r.status, status, ctx)
                ctype = r.header("content-type") or ""
                self.assertTrue(ctype.startswith("application/json"), "content-type %r; %s" % (ctype, ctx))
                err = r.json.get("error") if isinstance(r.json, dict) else None
                self.assertIsInstance(err, dict, ctx)
                self.assertIsInstance(err.get("code"), str, ctx)
                if codes is not None:
                        self.assertIn(err.get("code"), codes, ctx)
                self.assertIsInstance(err.get("message"), str, ctx)
                self.assertTrue(err["message"], ctx)


def main():
        signal.signal(signal.SIGTERM, _on_term)
        _watchdog(float(os.environ.get("FUTURED_TEST_DEADLINE", "120")))
        t0 = time.monotonic()
        prog = unittest.main(exit=False, verbosity=2)
        res = prog.result
        # A test with failing subtests counts once.
        failed = len({getattr(t, "test_case", t).id() for t, _ in res.failures + res.errors})
        failed += len(res.unexpectedSuccesses)
        passed = res.testsRun - failed - len(res.skipped)
        if failed:
                for d in list(_daemons):
                        d.failed = True
        cleanup_all()
        print("%d passed, %d failed (%.1f s)" % (passed, failed, time.monotonic() - t0))
        sys.stdout.flush()
        sys.exit(0 if failed == 0 and res.testsRun > 0 else 1)
