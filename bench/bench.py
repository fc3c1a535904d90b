#!/usr/bin/env python3
"""futured benchmark: durable submissions/s, end-to-end noop jobs/s, submit
latency, CPU pool speedup, idle CPU, and batches (a big NDJSON batch: items/s
submitted and streamed back, peak RSS; stream delivery latency), against a
freshly started daemon on a free loopback port. Prints a table, then one
JSON line.

  python3 bench/bench.py --futured PATH [--quick] [--reps N] [--no-peers]
                         [--only batch]

Each daemon runs in its own temporary directory (see tests/e2e/harness.py,
which this reuses) and is stopped, with its workers, whatever happens.
"""

import argparse
import datetime
import http.client
import json
import multiprocessing
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "e2e"))

import harness  # noqa: E402

PEERS = "/work/shared/peers/futures_baseline.py"
NOOP_BODY = b'{"task":"noop"}'
TARGETS = {"submit_per_s": 15000, "e2e_per_s": 10000, "p50_ms": 1.0, "speedup": 1.9, "idle_cpu_percent": 0.0,
           "batch_submit_per_s": 200000, "batch_rss_mb": 150, "delivery_p99_ms": 2.0}


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
        stats show every one of them finished."""
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
                        stored = harness.poll_until(drained, 600, "every submitted job to finish", interval=0.002)
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


def bench_cpu(workers, tasks, n):
        d = start_daemon(cpu_workers=workers)
        try:
                d.wait(d.submit({"task": "sqrt_sum", "args": {"n": 1000}})["id"])     # warm
                t0 = time.monotonic()
                jobs = [d.submit({"task": "sqrt_sum", "args": {"n": n}, "timeout": 600}) for _ in range(tasks)]
                done = [d.wait(j["id"], timeout=600) for j in jobs]
                wall = time.monotonic() - t0
                bad = [j for j in done if j["state"] != "succeeded"]
                if bad:
                        raise RuntimeError("sqrt_sum failed: %r" % bad[0])
                return wall
        finally:
                stop_daemon(d)


def bench_idle(seconds):
        d = start_daemon()
        try:
                pids = [d.pid] + d.cpu_pids()
                for kind in ("io", "cpu", "cpu", "cpu"):
                        d.wait(d.submit({"task": "noop", "kind": kind})["id"])
                d.client.close()
                time.sleep(1.0)         # let start-up work (worker exec, first checkpoint) settle
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
        """One SSE stream on a batch of n sleep jobs with distinct durations
        (5 ms apart, all running at once on n I/O threads, so each finishes
        alone): the wall-clock time each event reaches the client minus the
        job's finished_at. finished_at has 1 ms resolution, so each sample
        is off by up to 1 ms (up to +1 ms if the daemon truncates)."""
        d = harness.Daemon(io_threads=n + 16, cpu_workers=None, log_level="warning").start()
        try:
                items = [{"seconds": round(0.3 + 0.005 * i, 3)} for i in range(n)]
                b = d.submit_batch({"task": "sleep", "timeout": 60, "items": items})
                s = d.stream(b["id"], sse=True, timeout=60)
                if s.status != 200:
                        raise RuntimeError("SSE stream answered %r" % (s,))
                lat = []
                while True:
                        ev = s.read_event(timeout=60)
                        if ev is None or ev["event"] == "done":
                                break
                        j = json.loads(ev["data"])
                        lat.append((ev["wall"] - harness.parse_time(j["finished_at"])) * 1e3)
                s.close()
                if len(lat) != n:
                        raise RuntimeError("delivery: %d events for %d jobs" % (len(lat), n))
                lat.sort()
                return lat[len(lat) // 2], lat[min(len(lat) - 1, int(len(lat) * 0.99))]
        finally:
                stop_daemon(d)


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
        res["delivery_ms"] = {"p50": summary(p50, 3), "p99": summary(p99, 3), "jobs": delivery_n,
                              "resolution_ms": 1}
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
                ("stream delivery p50 (+-1 ms)", "%.3f ms" % res["delivery_ms"]["p50"]["median"], ""),
                ("stream delivery p99 (+-1 ms)", "%.3f ms" % res["delivery_ms"]["p99"]["median"], "< 2 ms"),
        ]


def main():
        ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
        ap.add_argument("--futured", required=True, help="the built futured binary")
        ap.add_argument("--quick", action="store_true", help="1 rep, shorter runs (smoke test)")
        ap.add_argument("--reps", type=int, default=None, help="repetitions of each measurement (3)")
        ap.add_argument("--no-peers", action="store_true", help="skip the concurrent.futures baseline")
        ap.add_argument("--only", choices=("core", "batch"), default=None,
                        help="only the job measurements (core) or only the batch ones")
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
        if a.only in (None, "core"):
                rows += run_core(res, load, a, reps)
                if not a.no_peers:
                        peers = run_peers()
                        if peers:
                                res["peers"] = peer_ratios(res, peers)
        if a.only in (None, "batch"):
                rows += run_batch(res, a, reps)

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
