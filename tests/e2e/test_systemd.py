"""futured as systemd runs it: the test plays the service manager.

A NOTIFY_SOCKET (an AF_UNIX datagram socket in a temp directory) receives
READY=1, STATUS=, WATCHDOG=1 and STOPPING=1; a listening socket made here
is passed as fd 3 with LISTEN_FDS/LISTEN_PID (through a wrapper that sets
LISTEN_PID to its own pid and execs futured, so the pid is the daemon's); a Unix socket serves jobs;
SIGTERM under load exits 0 within the grace period and loses nothing
acknowledged; SIGHUP reloads log_level and survives a bad file. Several
inherited sockets share one server (one /metrics); the watchdog's probes
work over TLS and never show in the request counts."""

import fcntl
import http.client
import json
import os
import signal
import shutil
import socket
import sqlite3
import ssl
import stat
import subprocess
import sys
import tempfile
import threading
import time
import unittest

import harness
from harness import HOST, Daemon, poll_until
from test_ops import make_cert, parse_metrics, sample


class NotifySocket:
        """The service manager's end of sd_notify: every datagram, split in
        lines, with the monotonic time it came."""

        def __init__(self, directory):
                self.path = os.path.join(directory, "notify")
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self.sock.bind(self.path)
                self.sock.settimeout(0.2)
                self.lock = threading.Lock()
                self.messages = []      # (monotonic, line)
                self.closed = False
                self.thread = threading.Thread(target=self.run, daemon=True)
                self.thread.start()

        def run(self):
                while not self.closed:
                        try:
                                data = self.sock.recv(4096)
                        except socket.timeout:
                                continue
                        except OSError:
                                return
                        now = time.monotonic()
                        with self.lock:
                                for line in data.decode("utf-8", "replace").splitlines():
                                        self.messages.append((now, line))

        def close(self):
                self.closed = True
                self.thread.join(2)
                self.sock.close()

        def lines(self, prefix, since=0.0):
                with self.lock:
                        return [(t, l) for t, l in self.messages if l.startswith(prefix) and t >= since]

        def wait_for(self, prefix, timeout, since=0.0, what=None):
                return poll_until(lambda: self.lines(prefix, since), timeout,
                                  what or "%r on the notify socket" % prefix)[-1]


# argv[1]: the fds to pass, in order; argv[2:]: the command. The fds are
# first moved out of the way (to 100 and up), then to 3, 4, ...
EXEC_WRAPPER = """
import fcntl, os, sys
fds = [fcntl.fcntl(int(fd), fcntl.F_DUPFD_CLOEXEC, 100) for fd in sys.argv[1].split(",")]
for i, fd in enumerate(fds):
        os.dup2(fd, 3 + i)
        os.close(fd)
os.environ["LISTEN_PID"] = str(os.getpid())
if os.environ.pop("CLOSE_STDERR", None):
        os.close(2)
os.execv(sys.argv[2], sys.argv[2:])
"""


class SystemdDaemon(Daemon):
        """A Daemon started the way systemd starts it: NOTIFY_SOCKET, and
        optionally WATCHDOG_USEC and an inherited listening socket."""

        def __init__(self, listen_socks=(), watchdog_usec=None, close_stderr=False, **kw):
                super().__init__(**kw)
                self.notify = NotifySocket(self.dir)
                self.listen_socks = list(listen_socks)
                self.watchdog_usec = watchdog_usec
                self.close_stderr = close_stderr
                if self.listen_socks:
                        # The --listen the harness put in argv must not be used.
                        self.unused_port = self.port
                        self.port = self.listen_socks[0].getsockname()[1]

        def start(self, timeout=10.0):
                env = dict(os.environ, NOTIFY_SOCKET=self.notify.path)
                argv = list(self.argv)
                if self.watchdog_usec is not None:
                        env["WATCHDOG_USEC"] = str(self.watchdog_usec)
                if self.close_stderr:
                        env["CLOSE_STDERR"] = "1"
                # Copies at 20 and up, moved to 3, 4, ... by the wrapper, which
                # then sets LISTEN_PID to its own pid and execs futured.
                high = [fcntl.fcntl(s.fileno(), fcntl.F_DUPFD_CLOEXEC, 20) for s in self.listen_socks]
                if high:
                        env["LISTEN_FDS"] = str(len(high))
                        argv = [sys.executable, "-c", EXEC_WRAPPER, ",".join(map(str, high))] + argv
                self.runs += 1
                self.log_path = os.path.join(self.dir, "futured.%d.log" % self.runs)
                try:
                        with open(self.log_path, "wb") as log:
                                self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                                             stderr=log, cwd=self.dir, env=env,
                                                             pass_fds=high, start_new_session=True)
                finally:
                        for fd in high:
                                os.close(fd)
                self.pgids.append(self.proc.pid)
                self.client = harness.Client(self.port)
                try:
                        self.notify.wait_for("READY=1", timeout, since=0.0)
                except AssertionError:
                        self.failed = True
                        raise AssertionError("no READY=1 within %.0f s\n%s" % (timeout, self.log_tail()))
                return self

        def cleanup(self):
                super().cleanup()
                self.notify.close()

        def log_text(self):
                with open(self.log_path, "rb") as f:
                        return f.read().decode("utf-8", "replace")


class UnixHTTPConnection(http.client.HTTPConnection):
        def __init__(self, path, timeout=10.0):
                super().__init__("localhost", timeout=timeout)
                self.unix_path = path

        def connect(self):
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.settimeout(self.timeout)
                self.sock.connect(self.unix_path)


def unix_request(path, method, url, body=None):
        conn = UnixHTTPConnection(path)
        try:
                raw = json.dumps(body).encode() if body is not None else None
                hdrs = {"Content-Type": "application/json"} if raw is not None else {}
                conn.request(method, url, body=raw, headers=hdrs)
                r = conn.getresponse()
                return r.status, json.loads(r.read() or b"null")
        finally:
                conn.close()


def unix_metrics(path):
        conn = UnixHTTPConnection(path)
        try:
                conn.request("GET", "/metrics")
                r = conn.getresponse()
                if r.status != 200:
                        raise AssertionError("GET /metrics on %s: %d" % (path, r.status))
                return parse_metrics(r.read().decode("utf-8"))
        finally:
                conn.close()


def healthz_count(families):
        return sample(families, "futured_http_requests_total", route="/healthz", code="200")


def healthy_on(path):
        try:
                return unix_request(path, "GET", "/healthz")[0] == 200
        except OSError:
                return False


def listening_socket():
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((HOST, 0))
        s.listen(64)
        return s


def sleep_job(seconds, **kw):
        spec = {"task": "sleep", "args": {"seconds": seconds}, "timeout": 60}
        spec.update(kw)
        return spec


class TestSystemd(unittest.TestCase):
        def assertRefusesToStart(self, d, says):
                """d never gets ready: it exits 1, saying says."""
                with self.assertRaises(AssertionError):
                        d.start(timeout=3)
                self.assertEqual(d.wait_exit(5), 1)
                self.assertIn(says, d.log_text())
                d.failed = False

        def tearDown(self):
                d = getattr(self, "d", None)
                if d is not None and d.running():
                        d.stop()
                for s in getattr(self, "socks", ()):
                        s.close()

        def test_notify_watchdog_and_inherited_socket(self):
                self.socks = [listening_socket()]
                self.d = d = SystemdDaemon(listen_socks=self.socks, watchdog_usec=2000000,
                                           io_threads=2, cpu_workers=1)
                d.start()
                t_ready = d.notify.wait_for("READY=1", 1)[0]

                # Jobs on the inherited socket; the --listen address is unused.
                ids = [d.submit(sleep_job(0.05))["id"] for _ in range(5)]
                ids.append(d.submit({"task": "sqrt_sum", "args": {"n": 1000}})["id"])
                for jid in ids:
                        self.assertEqual(d.wait(jid)["state"], "succeeded")
                with socket.socket() as probe:
                        self.assertNotEqual(probe.connect_ex((HOST, d.unused_port)), 0,
                                            "futured listened on --listen despite LISTEN_FDS")
                self.assertIn("socket activation", d.log_text())

                # STATUS= catches up with the jobs that ended.
                d.notify.wait_for("STATUS=serving: 0 queued, 0 running, %d done" % len(ids), 5)

                # Pings every second (half of WATCHDOG_USEC): at least 2 in 3 s;
                # no STATUS= while the counts stand still.
                t0 = time.monotonic()
                time.sleep(3.2)
                pings = d.notify.lines("WATCHDOG=1", since=t0)
                self.assertEqual(d.notify.lines("STATUS=", since=t0), [], "STATUS= with nothing changed")
                self.assertGreaterEqual(len(pings), 2, "pings in 3 s: %r" % (pings,))
                self.assertLessEqual(len(pings), 5, "pings in 3 s: %r" % (pings,))
                self.assertTrue(all(t >= t_ready for t, _ in d.notify.lines("WATCHDOG=1")),
                                "a ping before READY=1")

                took = d.stop(signal.SIGTERM, timeout=15)
                self.assertLess(took, 5)
                stopping = d.notify.lines("STOPPING=1")
                self.assertEqual(len(stopping), 1, d.notify.messages)

        def test_several_inherited_sockets(self):
                """A TCP and a Unix socket: both serve, a job's end wakes a
                long-poll on the other socket, and /metrics on either counts
                the requests of both, but none of the watchdog's probes."""
                unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.socks = [listening_socket(), unix]
                self.d = d = SystemdDaemon(listen_socks=self.socks, watchdog_usec=500000,
                                           io_threads=2, cpu_workers=1)
                path = os.path.join(d.dir, "activated.sock")
                unix.bind(path)
                unix.listen(16)
                d.start()
                jid = d.submit(sleep_job(0.5))["id"]
                t0 = time.monotonic()
                status, job = unix_request(path, "GET", "/v1/jobs/%s?wait=10" % jid)
                self.assertEqual((status, job["state"]), (200, "succeeded"), job)
                self.assertLess(time.monotonic() - t0, 5, "the long-poll ran to its deadline, not the job's end")
                self.assertEqual(d.log_text().count("<5>listening on"), 2, d.log_tail())

                # Pings every 0.25 s, each probing both sockets' daemons.
                t0 = time.monotonic()
                for _ in range(3):
                        self.assertEqual(d.request("GET", "/healthz").status, 200)
                for _ in range(2):
                        self.assertEqual(unix_request(path, "GET", "/healthz")[0], 200)
                poll_until(lambda: len(d.notify.lines("WATCHDOG=1", since=t0)) >= 4, 3,
                           "pings with both sockets probed")
                tcp_view = parse_metrics(d.request("GET", "/metrics").body.decode("utf-8"))
                # A request is counted once MHD is done with it, which may
                # come just after the client has its answer: the TCP scrape
                # shows on the Unix socket's scrapes in a moment.
                unix_view = poll_until(lambda: (lambda v: v if sample(v, "futured_http_requests_total",
                                                                      route="/metrics", code="200") >= 1
                                                else None)(unix_metrics(path)),
                                       5, "the TCP scrape seen on the Unix socket")
                self.assertEqual(healthz_count(tcp_view), 5, "probes or a socket's requests miscounted")
                self.assertEqual(healthz_count(unix_view), 5)
                self.assertNotIn("no ping", d.log_text())
                # The Unix socket is systemd's: left in place, mode untouched.
                d.stop()
                self.assertTrue(stat.S_ISSOCK(os.stat(path).st_mode))

        def test_inherited_fd_not_a_listening_socket(self):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)     # bound, not listening
                s.bind((HOST, 0))
                self.socks = [s]
                self.assertRefusesToStart(SystemdDaemon(listen_socks=self.socks, io_threads=1, cpu_workers=1),
                                          "not a listening TCP or Unix stream socket")

        def test_watchdog_interval_too_short(self):
                self.assertRefusesToStart(SystemdDaemon(watchdog_usec=1000, io_threads=1, cpu_workers=1),
                                          "WATCHDOG_USEC=1000 is below 200 ms")

        def test_stderr_closed(self):
                """Started with stderr closed and its socket inherited as fd
                3: the next file the daemon opened took fd 2 (a socket, or
                the database, whose log lines then went into it). fd 2 is
                /dev/null now."""
                self.socks = [listening_socket()]
                d = SystemdDaemon(listen_socks=self.socks, close_stderr=True, io_threads=1, cpu_workers=1)
                self.d = d.start()
                j = d.wait(d.submit({"task": "noop"})["id"])
                self.assertEqual(os.readlink("/proc/%d/fd/2" % d.proc.pid), "/dev/null")
                d.stop()        # which logs a few lines
                db = sqlite3.connect(d.db, isolation_level=None, timeout=5)
                try:
                        self.assertEqual(db.execute("PRAGMA integrity_check").fetchone(), ("ok",))
                        self.assertEqual(db.execute("SELECT state FROM jobs WHERE id = ?", (int(j["id"]),)).fetchone(),
                                         ("succeeded",))
                finally:
                        db.close()
                with open(d.db, "rb") as f:
                        self.assertNotIn(b"shutting down", f.read(), "log lines went into the database")

        def test_watchdog_over_tls(self):
                """The probe needs no handshake: a TLS server is pinged for
                too, and its clients are served."""
                pair = make_cert(tempfile.mkdtemp(prefix="futured-cert-"))
                if pair is None:
                        self.skipTest("openssl is not installed")
                self.socks = [listening_socket()]
                self.d = d = SystemdDaemon(listen_socks=self.socks, watchdog_usec=500000, io_threads=1,
                                           cpu_workers=1, args=["--tls-cert", pair[0], "--tls-key", pair[1]])
                d.start()
                t0 = time.monotonic()
                time.sleep(1.6)
                pings = d.notify.lines("WATCHDOG=1", since=t0)
                self.assertGreaterEqual(len(pings), 4, "pings over TLS: %r\n%s" % (pings, d.log_tail()))
                ctx = ssl.create_default_context(cafile=pair[0])
                conn = http.client.HTTPSConnection(HOST, d.port, context=ctx, timeout=10)
                try:
                        conn.request("GET", "/healthz")
                        self.assertEqual(conn.getresponse().status, 200)
                finally:
                        conn.close()
                self.assertNotIn("no ping", d.log_text())
                shutil.rmtree(os.path.dirname(pair[0]), ignore_errors=True)

        def test_status_follows_submissions(self):
                """STATUS= shows a long job before anything ends, with no
                watchdog pings to wake it."""
                self.d = d = SystemdDaemon(io_threads=1, cpu_workers=1)
                d.start()
                d.notify.wait_for("STATUS=serving: 0 queued, 0 running, 0 done", 3)
                t0 = time.monotonic()
                jid = d.submit(sleep_job(5))["id"]
                d.notify.wait_for("STATUS=serving: 0 queued, 1 running, 0 done", 2.5, since=t0,
                                  what="STATUS= for a running job before it ends")
                d.submit(sleep_job(5))
                d.notify.wait_for("STATUS=serving: 1 queued, 1 running, 0 done", 2.5, since=t0,
                                  what="STATUS= for a queued job")
                self.assertEqual(d.job(jid)["state"], "running")

        def test_stuck_writer_stops_pings(self):
                self.d = d = SystemdDaemon(watchdog_usec=2000000, io_threads=1, cpu_workers=1)
                d.start()
                d.notify.wait_for("WATCHDOG=1", 3)
                # Another process holds the write lock: the writer's next
                # transaction (the watchdog's probe) waits for it (up to the
                # store's 5 s busy timeout), as a stuck writer would.
                db = sqlite3.connect(d.db, isolation_level=None, timeout=5)
                try:
                        db.execute("BEGIN IMMEDIATE")
                        locked = time.monotonic()
                        time.sleep(3.5)
                        late = d.notify.lines("WATCHDOG=1", since=locked + 1.5)
                        self.assertEqual(late, [], "pings while the writer was stuck")
                        self.assertIn("watchdog: no ping: the store writer", d.log_text())
                finally:
                        db.execute("ROLLBACK")
                        db.close()
                released = time.monotonic()
                d.notify.wait_for("WATCHDOG=1", 4, since=released, what="pings to resume")
                poll_until(lambda: "every part is alive again" in d.log_text(), 3, "the recovery logged")
                self.assertEqual(d.log_text().count("watchdog: no ping"), 1, "the reason logged more than once")

        def test_unix_socket(self):
                self.d = d = Daemon(io_threads=1, cpu_workers=1)
                path = os.path.join(d.dir, "futured.sock")
                d.argv += ["--listen", "unix:" + path]
                d.client = None
                d.runs += 1
                d.log_path = os.path.join(d.dir, "futured.%d.log" % d.runs)
                with open(d.log_path, "wb") as log:
                        d.proc = subprocess.Popen(d.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                                  cwd=d.dir, start_new_session=True)
                d.pgids.append(d.proc.pid)
                poll_until(lambda: healthy_on(path) or d.proc.poll() is not None, 10, "the Unix socket to serve")
                self.assertIsNone(d.proc.poll(), d.log_tail())
                self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o660)

                status, job = unix_request(path, "POST", "/v1/jobs", sleep_job(0.01))
                self.assertEqual(status, 202, job)
                deadline = time.monotonic() + 10
                while True:
                        status, job = unix_request(path, "GET", "/v1/jobs/%s?wait=5" % job["id"])
                        self.assertEqual(status, 200, job)
                        if job["state"] in harness.FINISHED or time.monotonic() > deadline:
                                break
                self.assertEqual(job["state"], "succeeded", job)

                # A second daemon must not take a socket someone listens on.
                second = subprocess.run([d.bin, "--listen", "unix:" + path, "--db",
                                         os.path.join(d.dir, "other.db")],
                                        stdin=subprocess.DEVNULL, capture_output=True, timeout=10)
                self.assertNotEqual(second.returncode, 0)
                self.assertIn(b"Address already in use", second.stderr)
                d.stop()

                # The stale socket file of a stopped daemon is replaced...
                with open(d.log_path, "ab") as log:
                        d.proc = subprocess.Popen(d.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                                  cwd=d.dir, start_new_session=True)
                d.pgids.append(d.proc.pid)
                poll_until(lambda: healthy_on(path), 10, "a restart on the stale socket")
                d.stop()
                # ... but a file that is not a socket never is.
                os.unlink(path)
                with open(path, "w") as f:
                        f.write("precious")
                third = subprocess.run(d.argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=10)
                self.assertNotEqual(third.returncode, 0)
                with open(path) as f:
                        self.assertEqual(f.read(), "precious")

        def test_sigterm_under_load(self):
                grace = 1.0
                self.d = d = SystemdDaemon(io_threads=2, cpu_workers=1, shutdown_grace=grace)
                d.start()
                short = d.submit(sleep_job(0.5))["id"]
                longs = [d.submit(sleep_job(4))["id"] for _ in range(2)]
                queued = [d.submit(sleep_job(0.1))["id"] for _ in range(3)]
                batch = d.submit_batch({"task": "sleep", "timeout": 60,
                                        "items": [{"seconds": 0.1}, {"seconds": 0.1}]})
                for jid in longs:
                        d.wait_state(jid, "running")
                stream = d.stream(batch["id"])
                polls = []
                for jid in longs:
                        c = http.client.HTTPConnection(HOST, d.port, timeout=30)
                        c.request("GET", "/v1/jobs/%s?wait=60" % jid)
                        polls.append(c)
                # The long-polls are read, so suspended, before the signal.
                for c in polls:
                        port = c.sock.getsockname()[1]
                        poll_until(lambda: harness.server_rx_queue(d.port, port) == 0, 5,
                                   "the daemon to read the long-poll request")

                t0 = time.monotonic()
                d.proc.send_signal(signal.SIGTERM)
                for c in polls:
                        r = c.getresponse()
                        self.assertIn(r.status, (200, 503), r.read())
                        r.read()
                        c.close()
                stream.read_all_json(timeout=10)       # ends, not hangs
                rc = d.wait_exit(grace + 5)
                took = time.monotonic() - t0
                self.assertEqual(rc, 0, d.log_tail())
                self.assertLess(took, grace + 4, "exit %.2f s after SIGTERM with a %.1f s grace" % (took, grace))
                d.check_log()
                d.notify.wait_for("STOPPING=1", 1)

                d.notify.messages.clear()
                d.start()
                every = [short] + longs + queued
                for jid in every:
                        self.assertEqual(d.wait(jid, timeout=20)["state"], "succeeded", jid)
                d.wait_batch(batch["id"], timeout=20)
                self.assertEqual(d.batch(batch["id"])["counts"]["succeeded"], 2)

        def test_sighup_reload(self):
                d = Daemon(io_threads=1, cpu_workers=1, log_level=None)
                conf = os.path.join(d.dir, "futured.conf")
                with open(conf, "w") as f:
                        f.write("[log]\nlog_level = notice\n")
                d.argv += ["-c", conf]
                self.d = d
                d.start()
                d.wait(d.submit(sleep_job(0.01))["id"])
                with open(d.log_path, "rb") as f:
                        self.assertNotIn(b"<7>", f.read(), "a debug line at log_level notice")

                with open(conf, "w") as f:
                        f.write("[log]\nlog_level = debug\n[jobs]\nmax_pending = 5000\n")
                d.send_signal(signal.SIGHUP)
                text = lambda: d.log_tail(1000)
                poll_until(lambda: "<7>SIGHUP: debug messages" in text(), 5, "debug logging after SIGHUP")
                poll_until(lambda: "max_pending changed and need a restart" in text(), 5,
                           "a key that needs a restart reported")

                with open(conf, "w") as f:
                        f.write("[log]\nlog_level = loud\n")
                d.send_signal(signal.SIGHUP)
                poll_until(lambda: "nothing changed" in text(), 5, "the bad file refused")

                # A lower level does not hide the notice of its own change.
                with open(conf, "w") as f:
                        f.write("[log]\nlog_level = warning\n[jobs]\nmax_pending = 5000\n")
                d.send_signal(signal.SIGHUP)
                poll_until(lambda: text().count("the new log_level applies") == 2, 5,
                           "the notice of the change to warning")
                # Nor the warning about keys that need a restart.
                with open(conf, "w") as f:
                        f.write("[log]\nlog_level = error\n[jobs]\nmax_pending = 5000\ndefault_timeout = 7\n")
                d.send_signal(signal.SIGHUP)
                poll_until(lambda: "default_timeout, max_pending changed and need a restart" in text(), 5,
                           "the warning said under warning, not error")
                # A file the next start would refuse is said so now.
                with open(conf, "w") as f:
                        f.write("[log]\nlog_level = error\n[jobs]\nmax_pending = 5000\ndefault_timeout = 7\n"
                                "[commands]\ngone = /nonexistent/program {x}\n")
                d.send_signal(signal.SIGHUP)
                poll_until(lambda: "the next start would refuse this configuration" in text(), 5,
                           "the set-up checks run on reload")
                self.assertIn("/nonexistent/program", text())
                self.assertTrue(d.running())
                self.assertEqual(d.request("GET", "/healthz").status, 200)


if __name__ == "__main__":
        harness.main()
