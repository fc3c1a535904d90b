#!/usr/bin/env python3
"""futured benchmark: durable submissions/s, end-to-end noop jobs/s, submit
latency, CPU pool speedup, idle CPU, batches (a big NDJSON batch: items/s
submitted and streamed back, peak RSS; stream delivery latency), and http
fan-out (1,000 calls to a 100 ms stand-in API against the ideal and against
ThreadPoolExecutor + urllib), against a freshly started daemon on a free
loopback port. Prints a table, then one JSON line.

  python3 bench/bench.py --futured PATH [--quick] [--reps N] [--no-peers]
                         [--only core,batch,http] [--stand-in epoll|fakeapi]

Each daemon runs in its own temporary directory (see tests/e2e/harness.py,
which this reuses) and is stopped, with its workers, whatever happens.
"""

import argparse
import concurrent.futures
import datetime
import heapq
import http.client
import itertools
import json
import multiprocessing
import os
import platform
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "e2e"))

import harness  # noqa: E402

PEERS = "/work/shared/peers/futures_baseline.py"
FAKEAPI = os.path.join(HERE, "..", "tests", "e2e", "fakeapi.py")
NOOP_BODY = b'{"task":"noop"}'
TARGETS = {"submit_per_s": 15000, "e2e_per_s": 10000, "p50_ms": 1.0, "speedup": 1.9, "idle_cpu_percent": 0.0,
           "batch_submit_per_s": 200000, "batch_rss_mb": 150, "delivery_p99_ms": 2.0,
           "http_wall_vs_ideal": 1.1, "http_vs_python": 1.0}


def log(msg):
        sys.stderr.write("bench: %s\n" % msg)
        sys.stderr.flush()


def summary(samples, digits=1):
        return {"median": round(statistics.median(samples), digits), "min": round(min(samples), digits),
                "max": round(max(samples), digits), "samples": [round(s, digits) for s in samples]}


def machine():
        model = "unknown"
        try:
                with open("/proc/cpuinfo") as f:
                        for line in f:
                                if line.startswith("model name"):
                                        model = line.split(":", 1)[1].strip()
                                        break
        except OSError:
                pass
        return {"nproc": os.cpu_count(), "model_name": model, "kernel": platform.release(),
                "python": platform.python_version(),
                "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def start_daemon(cpu_workers=None):
        # Default pools unless told; warnings only, so logging costs nothing.
        return harness.Daemon(io_threads=None, cpu_workers=cpu_workers, log_level="warning").start()


def stop_daemon(d):
        try:
                d.stop()
        finally:
                d.cleanup()


# ---- a minimal keep-alive HTTP/1.1 client: the cheapest Python can do ----

class RawConn:
        def __init__(self, port):
                self.sock = socket.create_connection((harness.HOST, port))
                self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self.buf = b""

        def close(self):
                self.sock.close()

        def roundtrip(self, request):
                """Sends one request; returns the status of its response."""
                self.sock.sendall(request)
                while b"\r\n\r\n" not in self.buf:
                        data = self.sock.recv(65536)
                        if not data:
                                raise ConnectionError("server closed the connection")
                        self.buf += data
                head, self.buf = self.buf.split(b"\r\n\r\n", 1)
                lines = head.split(b"\r\n")
                status = int(lines[0].split()[1])
                length = 0
                for line in lines[1:]:
                        name, _, value = line.partition(b":")
                        if name.strip().lower() == b"content-length":
                                length = int(value)
                while len(self.buf) < length:
                        data = self.sock.recv(65536)
                        if not data:
                                raise ConnectionError("server closed the connection")
                        self.buf += data
                self.buf = self.buf[length:]
                return status


def post_request(port, body=NOOP_BODY):
        return (b"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (port, len(body), body))


def _py_submitter(port, deadline, limit, out):
        conn = RawConn(port)
        req = post_request(port)
        accepted = other = 0
        while time.monotonic() < deadline and (limit == 0 or accepted + other < limit):
                if conn.roundtrip(req) == 202:
                        accepted += 1
                else:
                        other += 1
        conn.close()
        out.put((accepted, other))


class PyLoad:
        """connections processes, one raw keep-alive socket each, posting
        noop jobs for seconds or until limit_total requests in all."""

        def __init__(self, port, connections, seconds, limit_total=0):
                ctx = multiprocessing.get_context("fork")
                self.out = ctx.Queue()
                per = -(-limit_total // connections) if limit_total else 0
                self.expected = per * connections
                self.seconds = seconds
                deadline = time.monotonic() + seconds
                self.procs = [ctx.Process(target=_py_submitter, args=(port, deadline, per, self.out))
                              for _ in range(connections)]
                for p in self.procs:
                        p.start()

        def done(self):
                return not any(p.is_alive() for p in self.procs)

        def finish(self):
                """Waits for every process; returns (accepted, other)."""
                results = [self.out.get(timeout=self.seconds + 60) for _ in self.procs]
                for p in self.procs:
                        p.join(10)
                return sum(r[0] for r in results), sum(r[1] for r in results)


WRK_SCRIPT = r"""
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args)
        accepted = 0
        other = 0
        limit = tonumber(args[1] or "0")
end
wrk.method = "POST"
wrk.body = '{"task":"noop"}'
wrk.headers["Content-Type"] = "application/json"
function response(status, headers, body)
        if status == 202 then accepted = accepted + 1 else other = other + 1 end
        if limit > 0 and accepted + other >= limit then wrk.thread:stop() end
end
function done(summary, latency, requests)
        local a, o = 0, 0
        for _, t in ipairs(threads) do a = a + t:get("accepted"); o = o + t:get("other") end
        local e = summary.errors
        io.write(string.format('BENCHJSON {"accepted":%d,"other":%d,' ..
                '"socket_errors":%d}\n', a, o, e.connect + e.read + e.write + e.timeout))
end
"""


class WrkLoad:
        """wrk with the Lua POST script. A thread that reached its share of
        limit_total stops, but wrk itself runs out its -d duration, so
        finish() interrupts it (SIGINT makes wrk report and exit)."""

        def __init__(self, port, connections, seconds, limit_total=0):
                threads = max(1, min(connections, os.cpu_count() or 1))
                per = -(-limit_total // threads) if limit_total else 0
                self.expected = per * threads
                self.seconds = seconds
                with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
                        f.write(WRK_SCRIPT)
                        self.script = f.name
                self.proc = subprocess.Popen(["wrk", "-t%d" % threads, "-c%d" % connections,
                                              "-d%ds" % max(1, round(seconds)), "-s", self.script,
                                              "http://%s:%d/v1/jobs" % (harness.HOST, port), "--", str(per)],
                                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

        def done(self):
                return self.proc.poll() is not None

        def finish(self):
                try:
                        if self.expected and self.proc.poll() is None:
                                self.proc.send_signal(signal.SIGINT)
                        out, err = self.proc.communicate(timeout=self.seconds + 60)
                finally:
                        if self.proc.poll() is None:
                                self.proc.kill()
                                self.proc.wait()
                        os.unlink(self.script)
                line = [x for x in out.splitlines() if x.startswith("BENCHJSON ")]
                if not line:
                        raise RuntimeError("wrk failed (%d): %s %s" % (self.proc.returncode, out, err))
                res = json.loads(line[0].split(" ", 1)[1])
                if res["socket_errors"]:
                        log("wrk saw %d socket errors" % res["socket_errors"])
                return res["accepted"], res["other"]


def load_generator():
        if shutil.which("wrk"):
                return WrkLoad, "wrk (Lua POST script, %d threads)" % max(1, min(8, os.cpu_count() or 1))
        return PyLoad, "python (8 processes, raw keep-alive sockets; wrk not found: apt-get install wrk)"


# ---- the measurements ----

def bench_submit(load, seconds):
        d = start_daemon()
        try:
                t0 = time.monotonic()
                accepted, other = load(d.port, 8, seconds).finish()
                elapsed = time.monotonic() - t0
                if other:
                        log("submissions: %d answers were not 202" % other)
                return accepted / elapsed
        finally:
                stop_daemon(d)


def bench_e2e(load, n):
        """n noop jobs over 8 connections: from the first request until the
        stats show every one of them finished. The stats count the store
        by state, so they are asked every 20 ms, not in a tight loop that
        would take a core of the daemon (+-1 % on a run of 2 s)."""
        d = start_daemon()
        try:
                before = sum(d.job_counts().values())
                t0 = time.monotonic()
                gen = load(d.port, 8, 600, limit_total=n)

                def drained():
                        c = d.job_counts()
                        if c["pending"] + c["running"]:
                                return None
                        stored = sum(c.values()) - before
                        return stored if stored >= gen.expected or gen.done() else None
                try:
                        stored = harness.poll_until(drained, 600, "every submitted job to finish", interval=0.02)
                        elapsed = time.monotonic() - t0
                finally:
                        accepted, other = gen.finish()
                if other:
                        log("e2e: %d answers were not 202" % other)
                c = d.job_counts()
                if c["succeeded"] < accepted:
                        log("e2e: only %d of %d jobs succeeded" % (c["succeeded"], accepted))
                return stored / elapsed
        finally:
                stop_daemon(d)


def bench_latency(n):
        d = start_daemon()
        try:
                conn = RawConn(d.port)
                req = post_request(d.port)
                for _ in range(min(200, n)):
                        conn.roundtrip(req)
                times = []
                for _ in range(n):
                        t0 = time.perf_counter()
                        status = conn.roundtrip(req)
                        times.append(time.perf_counter() - t0)
                        if status != 202:
                                raise RuntimeError("latency run: got %d" % status)
                conn.close()
                times.sort()
                return times[len(times) // 2] * 1e3, times[min(len(times) - 1, int(len(times) * 0.99))] * 1e3
        finally:
                stop_daemon(d)


def bench_cpu(workers, tasks, n, runs=5):
        """The tasks as one batch, as executor.map would send them: a run of
        0.1 s must not share the two cores with eight requests' worth of
        client and server work. The results stream ends when the last job
        does. The median of runs batches on one daemon: a run is short
        enough for a neighbour's burst on the shared cores to move it."""
        d = start_daemon(cpu_workers=workers)
        try:
                d.wait(d.submit({"task": "sqrt_sum", "args": {"n": 1000}})["id"])     # warm
                walls = []
                for _ in range(runs):
                        t0 = time.monotonic()
                        r = d.request("POST", "/v1/batches", body={"task": "sqrt_sum", "timeout": 600,
                                                                   "items": [[n]] * tasks})
                        if r.status != 202:
                                raise RuntimeError("sqrt_sum batch: %r" % (r,))
                        count, _ = read_stream_to_end(d.port, "/v1/batches/%s/results" % r.json["id"])
                        walls.append(time.monotonic() - t0)
                        counts = d.request("GET", "/v1/batches/%s" % r.json["id"]).json["counts"]
                        if count != tasks or counts.get("succeeded") != tasks:
                                raise RuntimeError("sqrt_sum batch: %d results, counts %r" % (count, counts))
                return statistics.median(walls)
        finally:
                stop_daemon(d)


def bench_idle(seconds):
        d = start_daemon()
        try:
                pids = [d.pid] + d.cpu_pids()
                for kind in ("io", "cpu", "cpu", "cpu"):
                        d.wait(d.submit({"task": "noop", "kind": kind})["id"])
                d.client.close()
                harness.wait_quiet(pids)        # start-up work: worker exec, first checkpoint
                t0 = [harness.proc_cpu_ticks(p) for p in pids]
                time.sleep(seconds)             # the measurement window
                ticks = sum(harness.proc_cpu_ticks(p) - t for p, t in zip(pids, t0))
                return ticks / os.sysconf("SC_CLK_TCK") / seconds * 100.0
        finally:
                stop_daemon(d)


# ---- batches: one big NDJSON batch, and stream delivery latency ----

def vm_hwm_mb(pid):
        """Peak resident set size of pid (VmHWM), in MB."""
        with open("/proc/%d/status" % pid) as f:
                for line in f:
                        if line.startswith("VmHWM:"):
                                return int(line.split()[1]) / 1024.0
        raise RuntimeError("no VmHWM for pid %d" % pid)


def read_stream_to_end(port, path, headers=b""):
        """GETs a chunked stream and reads it to its end as cheaply as Python
        can: decodes the chunks and counts the job lines (each ends in "}";
        the blank keepalive lines do not count), parsing none. Returns
        (lines, last line)."""
        sock = socket.create_connection((harness.HOST, port), timeout=600)
        try:
                sock.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\n%s\r\n" % (path.encode(), headers))
                reader = harness.ResponseReader()
                buf = b""
                while reader.status is None:
                        data = sock.recv(65536)
                        if not data:
                                raise RuntimeError("stream closed before its head")
                        buf += data
                        reader.feed(data, 0, 0)
                if reader.status != 200 or reader.decoder is None:
                        raise RuntimeError("stream answered %d: %r" % (reader.status, buf[:300]))
                dec = reader.decoder
                body = buf[buf.index(b"\r\n\r\n") + 4:]
                count, tail = 0, b""
                while True:
                        piece = dec.feed(body)
                        count += (tail[-1:] + piece).count(b"}\n")
                        tail = (tail + piece)[-4096:]
                        if dec.done:
                                break
                        body = sock.recv(1 << 20)
                        if not body:
                                raise RuntimeError("stream closed before its last chunk")
                lines = tail.rstrip(b"\n").rsplit(b"\n", 1)
                return count, lines[-1]
        finally:
                sock.close()


def bench_big_batch(n):
        """n noop items as one chunked NDJSON batch: items/s until the 202,
        then the results streamed in completion order until the stream ends;
        the daemon's peak RSS."""
        d = harness.Daemon(io_threads=None, cpu_workers=None, log_level="warning",
                           args=("--max-pending", str(max(1000000, 2 * n)))).start()
        try:
                body = b"".join(b'{"args":{"i":%d}}\n' % i for i in range(n))
                chunk = 1 << 18
                pieces = [body[i:i + chunk] for i in range(0, len(body), chunk)]
                del body
                conn = http.client.HTTPConnection(harness.HOST, d.port, timeout=600)
                t0 = time.monotonic()
                conn.request("POST", "/v1/batches?task=noop", body=iter(pieces),
                             headers={"Content-Type": "application/x-ndjson"})
                r = conn.getresponse()
                answer = r.read()
                t_202 = time.monotonic()
                conn.close()
                if r.status != 202:
                        raise RuntimeError("batch submit answered %d: %r" % (r.status, answer[:300]))
                bid = json.loads(answer)["id"]
                lines, last = read_stream_to_end(d.port, "/v1/batches/%s/results" % bid)
                t_end = time.monotonic()
                if lines != n:
                        raise RuntimeError("the stream gave %d lines for %d items" % (lines, n))
                b = d.batch(bid)
                if not b["done"] or b["counts"]["succeeded"] != n:
                        raise RuntimeError("batch after its stream ended: %r" % (b,))
                rss = vm_hwm_mb(d.pid)
                return {"items": n, "bytes": sum(len(p) for p in pieces),
                        "submit_s": round(t_202 - t0, 3), "submit_per_s": n / (t_202 - t0),
                        "e2e_s": round(t_end - t0, 3), "e2e_per_s": n / (t_end - t0), "rss_mb": rss,
                        "last_seq": json.loads(last)["seq"]}
        finally:
                stop_daemon(d)


def bench_delivery(n):
        """One SSE stream on a batch of n http jobs that the epoll stand-in
        answers 300 ms, 305 ms, 310 ms ... after their request (all running
        at once on n I/O threads, so each finishes alone): for each event,
        the CLOCK_MONOTONIC time it reached the client minus the time the
        stand-in sent the job's answer. The job's own end (curl reading the
        answer) counts as delivery too, so this bounds it from above."""
        stand_in = StandIn("epoll", 0)
        d = harness.Daemon(io_threads=n + 16, cpu_workers=None, log_level="warning",
                           args=("--allow", stand_in.base)).start()
        try:
                urls = [stand_in.base + "delay?ms=%d&i=%d" % (300 + 5 * i, i) for i in range(n)]
                b = d.submit_batch({"task": "http", "timeout": 60, "max_attempts": 1,
                                    "items": [{"url": u} for u in urls]})
                s = d.stream(b["id"], sse=True, timeout=60)
                if s.status != 200:
                        raise RuntimeError("SSE stream answered %r" % (s,))
                arrived = {}
                while True:
                        ev = s.read_event(timeout=60)
                        if ev is None or ev["event"] == "done":
                                break
                        j = json.loads(ev["data"])
                        if j["state"] != "succeeded":
                                raise RuntimeError("delivery: a job ended %r" % (j,))
                        arrived[j["args"]["url"]] = ev["mono"]
                s.close()
                sent = stand_in.sent()
                lat = sorted((arrived[u] - sent[u[len(stand_in.base) - 1:]]) * 1e3 for u in urls
                             if u in arrived and u[len(stand_in.base) - 1:] in sent)
                if len(lat) != n:
                        raise RuntimeError("delivery: %d events timed for %d jobs" % (len(lat), n))
                return lat[len(lat) // 2], lat[min(len(lat) - 1, int(len(lat) * 0.99))]
        finally:
                stop_daemon(d)
                stand_in.stop()


# ---- http: 1,000 calls to a stand-in API that answers after 100 ms ----

HTTP_CALLS = 1000
HTTP_DELAY_S = 0.1
HTTP_CONCURRENCY = (64, 256)
OK_BODY = b'{"ok": true}'
OK_ANSWER = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
             % (len(OK_BODY), OK_BODY))


def _parse_requests(buf):
        """Splits the complete requests off the front of buf: returns
        ([(path, close)], the rest)."""
        out = []
        while True:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                        return out, buf
                head = buf[:end].lower()
                length = 0
                at = head.find(b"content-length:")
                if at >= 0:
                        length = int(head[at + 15:].split(b"\r\n", 1)[0])
                if len(buf) < end + 4 + length:
                        return out, buf
                buf = buf[end + 4 + length:]
                out.append((head.split(b" ", 2)[1], b"connection: close" in head))


def _request_delay(path, delay):
        """The delay a request asks for with ms=N in its query, else delay."""
        at = path.find(b"ms=")
        if at < 0:
                return delay
        return int(path[at + 3:].split(b"&", 1)[0]) / 1000.0


def _epoll_stand_in(delay, conn):
        """The stand-in's loop: every request is answered 200 {"ok": true}
        after delay (or after the ms=N of its query), except /__stats (the
        counters), /__reset (zero them) and /__sent (the CLOCK_MONOTONIC
        time each path was last answered, right after the send), answered
        at once. One thread, raw epoll and a heap of answers by due time:
        about 0.1 ms of CPU per connection, kernel included, where an
        asyncio Protocol server spent about twice that here and
        fakeapi.py's thread per connection ten times. Keep-alive unless
        the request says "Connection: close"; no pipelining (curl and
        urllib never pipeline)."""
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        lsock.bind((harness.HOST, 0))
        lsock.listen(4096)
        ep = select.epoll()
        ep.register(lsock.fileno(), select.EPOLLIN)
        conns = {}              # fd -> [socket, unparsed bytes]
        due = []                # heap of (time, order, fd, entry of conns, path, close)
        order = itertools.count()
        counters = {"requests": 0, "inflight": 0, "max_inflight": 0}
        sent = {}
        conn.send(lsock.getsockname()[1])
        conn.close()

        def drop(fd):
                entry = conns.pop(fd)
                ep.unregister(fd)
                entry[0].close()

        def send(fd, entry, data, close):
                if conns.get(fd) is not entry:
                        return          # the client went away meanwhile
                try:
                        entry[0].send(data)
                except OSError:
                        close = True
                if close:
                        drop(fd)

        while True:
                timeout = max(0.0, due[0][0] - time.monotonic()) if due else -1
                for fd, _ in ep.poll(timeout):
                        if fd == lsock.fileno():
                                while True:
                                        try:
                                                sock, _ = lsock.accept()
                                        except BlockingIOError:
                                                break
                                        sock.setblocking(False)
                                        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                                        conns[sock.fileno()] = [sock, b""]
                                        ep.register(sock.fileno(), select.EPOLLIN)
                                continue
                        entry = conns.get(fd)
                        try:
                                data = entry[0].recv(65536)
                        except OSError:
                                data = b""
                        if not data:
                                drop(fd)
                                continue
                        requests, entry[1] = _parse_requests(entry[1] + data)
                        for path, close in requests:
                                if path.startswith(b"/__"):
                                        if path.startswith(b"/__reset"):
                                                counters.update(requests=0, inflight=0, max_inflight=0)
                                                sent.clear()
                                        body = json.dumps(sent if path.startswith(b"/__sent") else counters).encode()
                                        send(fd, entry, b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                             b"Content-Length: %d\r\n\r\n%s" % (len(body), body), close)
                                        continue
                                counters["requests"] += 1
                                counters["inflight"] += 1
                                counters["max_inflight"] = max(counters["max_inflight"], counters["inflight"])
                                heapq.heappush(due, (time.monotonic() + _request_delay(path, delay), next(order),
                                                     fd, entry, path, close))
                now = time.monotonic()
                while due and due[0][0] <= now:
                        _, _, fd, entry, path, close = heapq.heappop(due)
                        counters["inflight"] -= 1
                        send(fd, entry, OK_ANSWER, close)
                        sent[path.decode()] = time.monotonic()


class StandIn:
        """The stand-in API in a child process (never in this one, whose
        GIL the Python baseline's threads hold): "epoll", the loop above,
        or "fakeapi", tests/e2e/fakeapi.py (a thread per connection, too
        costly per request to keep up with 256 new connections a wave on
        2 cores). url: the delayed route; stats() and reset() use the
        counters both keep."""

        def __init__(self, impl, delay):
                self.impl = impl
                if impl == "epoll":
                        ctx = multiprocessing.get_context("fork")
                        parent, child = ctx.Pipe(duplex=False)
                        self.proc = ctx.Process(target=_epoll_stand_in, args=(delay, child), daemon=True)
                        self.proc.start()
                        child.close()
                        if not parent.poll(10):
                                self.stop()
                                raise RuntimeError("the epoll stand-in did not start")
                        self.port = parent.recv()
                        parent.close()
                        self.pid = self.proc.pid
                else:
                        self.proc = subprocess.Popen([sys.executable, FAKEAPI, "--port", "0"],
                                                     stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
                        line = self.proc.stdout.readline()
                        if not line.startswith("PORT "):
                                self.stop()
                                raise RuntimeError("fakeapi did not start: %r" % line)
                        self.port = int(line.split()[1])
                        self.pid = self.proc.pid
                self.base = "http://%s:%d/" % (harness.HOST, self.port)
                self.url = self.base + "delay?ms=%d&key=bench" % round(delay * 1000)
                self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

        def _get(self, path):
                with self.opener.open(self.base + path, timeout=10) as r:
                        return json.loads(r.read())

        def reset(self):
                self._get("__reset")

        def stats(self):
                """(requests, max in flight) since the last reset."""
                s = self._get("__stats?key=bench")
                return s["requests"], s["max_inflight"]

        def sent(self):
                """{path: CLOCK_MONOTONIC time of its last answer} since the
                last reset (the epoll stand-in only)."""
                return self._get("__sent")

        def cpu_seconds(self):
                return harness.proc_cpu_ticks(self.pid) / os.sysconf("SC_CLK_TCK")

        def stop(self):
                if self.impl == "epoll":
                        self.proc.terminate()
                        self.proc.join(5)
                        if self.proc.is_alive():
                                self.proc.kill()
                                self.proc.join()
                else:
                        self.proc.terminate()
                        try:
                                self.proc.wait(5)
                        except subprocess.TimeoutExpired:
                                self.proc.kill()
                                self.proc.wait()
                        self.proc.stdout.close()


def timed_at_stand_in(stand_in, n, concurrency, run):
        """Resets the stand-in, calls run() (which makes the n calls and
        returns its wall time), and checks the stand-in saw n requests;
        returns (wall, max in flight at the stand-in, its CPU seconds)."""
        stand_in.reset()
        cpu0 = stand_in.cpu_seconds()
        wall = run()
        cpu = stand_in.cpu_seconds() - cpu0
        requests, inflight = stand_in.stats()
        if requests != n:
                raise RuntimeError("the stand-in saw %d requests for %d calls" % (requests, n))
        if inflight > concurrency:
                raise RuntimeError("%d requests in flight with concurrency %d" % (inflight, concurrency))
        return wall, inflight, cpu


def bench_http_futured(stand_in, n, io_threads):
        """n http jobs as one batch on a daemon with io_threads I/O threads:
        from the first byte of POST /v1/batches until its results stream
        (completion order, opened right after the 202) ends. Returns what
        timed_at_stand_in() does and a dict: the seconds until the 202, and
        the CPU seconds of the daemon process (all its threads) meanwhile."""
        d = harness.Daemon(io_threads=io_threads, cpu_workers=None, log_level="warning",
                           args=("--allow", stand_in.base)).start()
        try:
                warm = d.wait(d.submit({"task": "http", "args": {"url": stand_in.base + "__stats"}})["id"])
                if warm["state"] != "succeeded":
                        raise RuntimeError("warm-up http job: %r" % (warm,))
                body = json.dumps({"task": "http", "items": [{"url": stand_in.url}] * n}).encode()
                extra = {}

                def run():
                        cpu0 = harness.proc_cpu_ticks(d.pid)
                        t0 = time.monotonic()
                        r = d.request("POST", "/v1/batches", raw=body, timeout=60)
                        extra["submit_s"] = time.monotonic() - t0
                        if r.status != 202:
                                raise RuntimeError("http batch answered %r" % (r,))
                        lines, _ = read_stream_to_end(d.port, "/v1/batches/%s/results" % r.json["id"])
                        wall = time.monotonic() - t0
                        extra["daemon_cpu_s"] = (harness.proc_cpu_ticks(d.pid) - cpu0) / os.sysconf("SC_CLK_TCK")
                        if lines != n:
                                raise RuntimeError("the stream gave %d lines for %d calls" % (lines, n))
                        b = d.batch(r.json["id"])
                        if b["counts"]["succeeded"] != n:
                                raise RuntimeError("http batch: %r" % (b,))
                        return wall
                return timed_at_stand_in(stand_in, n, io_threads, run) + (extra,)
        finally:
                stop_daemon(d)


def bench_http_python(stand_in, n, workers):
        """The same n calls from ThreadPoolExecutor(workers) + urllib, the
        way a Python pipeline would make them: from the first submit until
        the last result."""
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

        def call(url):
                with opener.open(url, timeout=60) as r:
                        r.read()
                        return r.status

        def run():
                t0 = time.monotonic()
                with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as ex:
                        statuses = list(ex.map(call, [stand_in.url] * n))
                wall = time.monotonic() - t0
                if statuses.count(200) != n:
                        raise RuntimeError("urllib: %d of %d calls answered 200" % (statuses.count(200), n))
                return wall
        return timed_at_stand_in(stand_in, n, workers, run) + ({},)


def run_peers():
        readme = os.path.join(os.path.dirname(PEERS), "README.md")
        if not os.path.exists(PEERS) or not os.path.exists(readme):
                return None
        log("running %s --quick --only noop,cpu" % PEERS)
        try:
                r = subprocess.run(["/usr/bin/python3", PEERS, "--quick", "--only", "noop,cpu"],
                                   capture_output=True, text=True, timeout=300)
                return json.loads(r.stdout.strip().splitlines()[-1])
        except (subprocess.SubprocessError, ValueError, IndexError, OSError) as e:
                log("peer baseline failed: %s" % e)
                return None


def peer_ratios(res, peers):
        out = {"source": PEERS + " --quick (smaller sizes; rough)"}
        noop = peers.get("noop", {}).get("results", {})
        for name in ("ThreadPoolExecutor(8)", "ProcessPoolExecutor(2)"):
                e2e = noop.get(name, {}).get("e2e_jobs_per_s", {}).get("median")
                if e2e:
                        out["e2e_vs_" + name] = round(res["e2e_noop_per_s"]["median"] / e2e, 2)
        cpu = peers.get("cpu", {})
        if cpu.get("speedup_median"):
                out["peer_cpu_speedup"] = cpu["speedup_median"]
                out["speedup_vs_peer"] = round(res["cpu"]["speedup"] / cpu["speedup_median"], 2)
        if cpu.get("process_pool_s", {}).get("median") and cpu.get("n") and cpu.get("tasks"):
                out["peer_cpu"] = "%d x %d in %.3f s (ProcessPoolExecutor(2))" % (
                        cpu["tasks"], cpu["n"], cpu["process_pool_s"]["median"])
        return out


def run_core(res, load, a, reps):
        """The job measurements; returns their table rows."""
        seconds = 2 if a.quick else 5
        e2e_n = 5000 if a.quick else 20000
        lat_n = 1000 if a.quick else 3000
        cpu_tasks, cpu_n = 8, 5_000_000

        s = []
        for i in range(reps):
                s.append(bench_submit(load, seconds))
                log("submissions rep %d: %.0f/s" % (i + 1, s[-1]))
        res["submit_per_s"] = summary(s)

        e = []
        for i in range(reps):
                e.append(bench_e2e(load, e2e_n))
                log("e2e rep %d: %.0f jobs/s" % (i + 1, e[-1]))
        res["e2e_noop_per_s"] = summary(e)
        res["e2e_noop_jobs"] = e2e_n

        p50, p99 = [], []
        for i in range(reps):
                a50, a99 = bench_latency(lat_n)
                p50.append(a50)
                p99.append(a99)
                log("latency rep %d: p50 %.3f ms, p99 %.3f ms" % (i + 1, a50, a99))
        res["submit_latency_ms"] = {"p50": summary(p50, 3), "p99": summary(p99, 3), "requests": lat_n}

        t1, t2 = [], []
        for i in range(reps):
                t1.append(bench_cpu(1, cpu_tasks, cpu_n))
                t2.append(bench_cpu(2, cpu_tasks, cpu_n))
                log("cpu rep %d: 1 worker %.3f s, 2 workers %.3f s" % (i + 1, t1[-1], t2[-1]))
        speedups = [x / y for x, y in zip(t1, t2)]
        res["cpu"] = {"tasks": cpu_tasks, "n": cpu_n, "one_worker_s": summary(t1, 3), "two_workers_s": summary(t2, 3),
                      "speedup": round(statistics.median(speedups), 2),
                      "speedup_samples": [round(x, 2) for x in speedups]}

        res["idle_cpu_percent"] = round(bench_idle(10.0), 2)
        log("idle: %.2f %% CPU over 10 s" % res["idle_cpu_percent"])

        got = {"submit_per_s": res["submit_per_s"]["median"], "e2e_per_s": res["e2e_noop_per_s"]["median"],
               "p50_ms": res["submit_latency_ms"]["p50"]["median"], "speedup": res["cpu"]["speedup"],
               "idle_cpu_percent": res["idle_cpu_percent"]}
        res["targets_met"].update({
                "submit_per_s": got["submit_per_s"] >= TARGETS["submit_per_s"],
                "e2e_per_s": got["e2e_per_s"] >= TARGETS["e2e_per_s"],
                "p50_ms": got["p50_ms"] < TARGETS["p50_ms"],
                "speedup": got["speedup"] >= TARGETS["speedup"],
                "idle_cpu_percent": got["idle_cpu_percent"] <= TARGETS["idle_cpu_percent"],
        })
        return [
                ("durable submissions/s (8 conns)", "%.0f" % got["submit_per_s"], ">= 15000"),
                ("end-to-end noop jobs/s (%d)" % e2e_n, "%.0f" % got["e2e_per_s"], ">= 10000"),
                ("submit latency p50 (1 conn)", "%.3f ms" % got["p50_ms"], "< 1 ms"),
                ("submit latency p99 (1 conn)", "%.3f ms" % res["submit_latency_ms"]["p99"]["median"], ""),
                ("sqrt_sum 8 x 5e6, 1 worker", "%.3f s" % res["cpu"]["one_worker_s"]["median"], ""),
                ("sqrt_sum 8 x 5e6, 2 workers", "%.3f s" % res["cpu"]["two_workers_s"]["median"], ""),
                ("speedup 2 vs 1 worker", "%.2f" % got["speedup"], ">= 1.9"),
                ("idle CPU over 10 s", "%.2f %%" % got["idle_cpu_percent"], "0 %"),
        ]


def run_batch(res, a, reps):
        """The batch measurements; returns their table rows."""
        n = a.batch_items or (100_000 if a.quick else 1_000_000)
        delivery_n = 200 if a.quick else 400
        runs = []
        for i in range(reps):
                runs.append(bench_big_batch(n))
                r = runs[-1]
                log("batch rep %d: %d items submitted in %.3f s (%.0f/s), last result after %.3f s (%.0f/s), "
                    "peak RSS %.1f MB" % (i + 1, n, r["submit_s"], r["submit_per_s"], r["e2e_s"], r["e2e_per_s"],
                                          r["rss_mb"]))
        res["batch"] = {"items": n, "ndjson_bytes": runs[0]["bytes"],
                        "submit_per_s": summary([r["submit_per_s"] for r in runs], 0),
                        "e2e_per_s": summary([r["e2e_per_s"] for r in runs], 0),
                        "rss_mb": summary([r["rss_mb"] for r in runs], 1)}
        p50, p99 = [], []
        for i in range(reps):
                a50, a99 = bench_delivery(delivery_n)
                p50.append(a50)
                p99.append(a99)
                log("delivery rep %d: p50 %.3f ms, p99 %.3f ms" % (i + 1, a50, a99))
        res["delivery_ms"] = {"p50": summary(p50, 3), "p99": summary(p99, 3), "jobs": delivery_n}
        b = res["batch"]
        res["targets_met"].update({
                "batch_submit_per_s": b["submit_per_s"]["median"] >= TARGETS["batch_submit_per_s"],
                "batch_rss_mb": b["rss_mb"]["max"] < TARGETS["batch_rss_mb"],
                "delivery_p99_ms": res["delivery_ms"]["p99"]["median"] < TARGETS["delivery_p99_ms"],
        })
        return [
                ("batch of %d noop: items/s to 202" % n, "%.0f" % b["submit_per_s"]["median"], ">= 200000"),
                ("batch: submit to last result, /s", "%.0f" % b["e2e_per_s"]["median"], ""),
                ("batch: daemon peak RSS (max)", "%.1f MB" % b["rss_mb"]["max"], "< 150 MB"),
                ("stream delivery p50", "%.3f ms" % res["delivery_ms"]["p50"]["median"], ""),
                ("stream delivery p99", "%.3f ms" % res["delivery_ms"]["p99"]["median"], "< 2 ms"),
        ]


def run_http(res, a, reps):
        """The http fan-out measurements; returns their table rows. Within a
        rep futured and Python run back to back at each concurrency, so the
        ratio compares runs under the same load on the machine."""
        n = HTTP_CALLS
        stand_in = StandIn(a.stand_in, HTTP_DELAY_S)
        log("http: %s stand-in on port %d, %d calls of %d ms" % (a.stand_in, stand_in.port, n, HTTP_DELAY_S * 1000))
        runs = {c: {"futured": [], "python": []} for c in HTTP_CONCURRENCY}
        try:
                for i in range(reps):
                        for c in HTTP_CONCURRENCY:
                                for who, bench in (("futured", bench_http_futured), ("python", bench_http_python)):
                                        runs[c][who].append(bench(stand_in, n, c))
                                        wall, inflight, cpu, extra = runs[c][who][-1]
                                        log("http rep %d, %s %d: %.3f s (ideal %.3f s), %d in flight at most, "
                                            "stand-in CPU %.2f s%s" % (
                                                    i + 1, who, c, wall, n * HTTP_DELAY_S / c, inflight, cpu,
                                                    "".join(", %s %.3f" % kv for kv in sorted(extra.items()))))
        finally:
                stand_in.stop()

        out = {"calls": n, "delay_ms": round(HTTP_DELAY_S * 1000), "stand_in": a.stand_in}
        rows = []
        for c in HTTP_CONCURRENCY:
                ideal = n * HTTP_DELAY_S / c
                f = [r[0] for r in runs[c]["futured"]]
                p = [r[0] for r in runs[c]["python"]]
                vs = [x / y for x, y in zip(f, p)]
                r = {"ideal_s": round(ideal, 4),
                     "futured_s": summary(f, 3), "python_s": summary(p, 3),
                     "futured_vs_ideal": round(statistics.median(f) / ideal, 2),
                     "futured_vs_python": round(statistics.median(vs), 2),
                     "futured_vs_python_samples": [round(x, 2) for x in vs],
                     "python_vs_ideal": round(statistics.median(p) / ideal, 2),
                     "max_inflight": {w: [x[1] for x in runs[c][w]] for w in ("futured", "python")},
                     "stand_in_cpu_s": {w: summary([x[2] for x in runs[c][w]], 2) for w in ("futured", "python")},
                     "futured_submit_s": summary([x[3]["submit_s"] for x in runs[c]["futured"]], 3),
                     "futured_daemon_cpu_s": summary([x[3]["daemon_cpu_s"] for x in runs[c]["futured"]], 2)}
                out[str(c)] = r
                res["targets_met"].update({
                        "http_wall_vs_ideal_%d" % c: r["futured_vs_ideal"] <= TARGETS["http_wall_vs_ideal"],
                        "http_vs_python_%d" % c: r["futured_vs_python"] < TARGETS["http_vs_python"],
                })
                rows += [
                        ("http %d x 100 ms, %d io threads" % (n, c), "%.3f s" % r["futured_s"]["median"],
                         "ideal %.3f s" % ideal),
                        ("http %d: futured wall / ideal" % c, "%.2f" % r["futured_vs_ideal"], "<= 1.1"),
                        ("http %d: ThreadPoolExecutor+urllib" % c, "%.3f s" % r["python_s"]["median"],
                         "%.2f x ideal" % r["python_vs_ideal"]),
                        ("http %d: futured / python" % c, "%.2f" % r["futured_vs_python"], "< 1"),
                ]
        res["http"] = out
        return rows


SECTIONS = ("core", "batch", "http")


def sections(text):
        """--only's value: a comma-separated list of SECTIONS."""
        names = [x for x in text.split(",") if x]
        bad = [x for x in names if x not in SECTIONS]
        if bad or not names:
                raise argparse.ArgumentTypeError("unknown group %r (core, batch, http)" % ",".join(bad or [text]))
        return names


def main():
        ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
        ap.add_argument("--futured", required=True, help="the built futured binary")
        ap.add_argument("--quick", action="store_true", help="1 rep, shorter runs (smoke test)")
        ap.add_argument("--reps", type=int, default=None, help="repetitions of each measurement (3)")
        ap.add_argument("--no-peers", action="store_true", help="skip the concurrent.futures baseline")
        ap.add_argument("--only", type=sections, default=SECTIONS,
                        help="comma-separated groups to run: core (jobs), batch, http (all of them)")
        ap.add_argument("--stand-in", choices=("epoll", "fakeapi"), default="epoll",
                        help="the stand-in API of the http measurements (epoll: a one-thread loop in a "
                        "child process; fakeapi: tests/e2e/fakeapi.py, a thread per connection)")
        ap.add_argument("--batch-items", type=int, default=None,
                        help="items in the big NDJSON batch (1,000,000; 100,000 with --quick)")
        a = ap.parse_args()
        os.environ["FUTURED_BIN"] = os.path.abspath(a.futured)
        signal.signal(signal.SIGTERM, lambda s, f: sys.exit(128 + s))
        reps = a.reps or (1 if a.quick else 3)

        load, client = load_generator()
        log("client: " + client)
        res = {"bench": "futured", "quick": a.quick, "reps": reps, "meta": machine(), "client": client,
               "targets_met": {}}
        res["meta"]["futured"] = os.environ["FUTURED_BIN"]

        rows = []
        if "core" in a.only:
                rows += run_core(res, load, a, reps)
                if not a.no_peers:
                        peers = run_peers()
                        if peers:
                                res["peers"] = peer_ratios(res, peers)
        if "batch" in a.only:
                rows += run_batch(res, a, reps)
        if "http" in a.only:
                rows += run_http(res, a, reps)

        m = res["meta"]
        print("futured bench: %d x %s, kernel %s, %d rep(s)%s" % (m["nproc"], m["model_name"], m["kernel"], reps,
                                                                  ", QUICK" if a.quick else ""))
        print("client: %s" % client)
        print("%-36s %14s  %s" % ("measure", "median", "target"))
        for name, value, target in rows:
                print("%-36s %14s  %s" % (name, value, target))
        for k, v in sorted(res.get("peers", {}).items()):
                print("peer %-31s %14s" % (k, v))
        print(json.dumps(res, sort_keys=True))
        sys.stdout.flush()


if __name__ == "__main__":
        main()
