"""Process life: SIGTERM with work in flight answers open long-polls, exits 0
within the grace period, leaves no worker behind and requeues what it
interrupted; start-up errors are clear; an idle daemon burns no CPU."""

import http.client
import json
import os
import signal
import sqlite3
import subprocess
import tempfile
import threading
import time
import unittest

import harness
from harness import HOST, Daemon, poll_until, proc_alive, proc_cpu_ticks, server_rx_queue


class LongPoll:
        """A GET ?wait on its own connection and thread; ready() once the
        daemon has read the whole request."""

        def __init__(self, d, jid, wait):
                self.d = d
                self.conn = http.client.HTTPConnection(HOST, d.port, timeout=wait + 30)
                self.conn.connect()
                self.client_port = self.conn.sock.getsockname()[1]
                self.sent = threading.Event()
                self.status = self.body = self.error = None
                self.answered_at = None
                self.thread = threading.Thread(target=self.run, args=(jid, wait))
                self.thread.start()

        def run(self, jid, wait):
                try:
                        self.conn.request("GET", "/v1/jobs/%s?wait=%g" % (jid, wait))
                        self.sent.set()
                        r = self.conn.getresponse()
                        self.status, self.body = r.status, r.read()
                except Exception as e:      # reported by the test
                        self.error = e
                finally:
                        self.answered_at = time.monotonic()
                        self.sent.set()
                        self.conn.close()

        def wait_read(self):
                assert self.sent.wait(5), "long-poll request not sent"
                poll_until(lambda: server_rx_queue(self.d.port, self.client_port) == 0, 5,
                           "the daemon to read the long-poll request")

        def join(self, timeout):
                self.thread.join(timeout)
                assert not self.thread.is_alive(), "the long-poll got no answer within %.0f s" % timeout
                assert self.error is None, "the long-poll failed: %r" % (self.error,)
                return self.status, json.loads(self.body)


class TestShutdown(unittest.TestCase):
        def tearDown(self):
                d = getattr(self, "d", None)
                if d is not None and d.running():
                        d.stop()

        def assertAnswered(self, lp, jid):
                status, body = lp.join(10)
                if status == 200:
                        self.assertEqual(body["id"], jid)
                        self.assertIn(body["state"], harness.STATES)
                else:
                        self.assertEqual(status, 503, "long-poll at shutdown got %r %r" % (status, body))
                        self.assertIsInstance(body["error"]["code"], str)
                return status, body

        def test_sigterm_interrupts_and_requeues(self):
                self.d = d = Daemon(io_threads=2, cpu_workers=2, shutdown_grace=0.5)
                d.start()
                j = d.submit({"task": "sleep", "args": {"seconds": 2}, "max_attempts": 1, "timeout": 30})
                d.wait_state(j["id"], "running")
                lp = LongPoll(d, j["id"], 20)
                lp.wait_read()
                workers = d.cpu_pids()
                took = d.stop(signal.SIGTERM, timeout=10)
                self.assertLess(took, 0.5 + 3.0, "exit %.2f s after SIGTERM with a 0.5 s grace" % took)
                self.assertAnswered(lp, j["id"])
                poll_until(lambda: not any(proc_alive(p) for p in workers), 2,
                           "no cpu worker to outlive the daemon")
                d.restart()
                j = d.wait(j["id"], timeout=10)
                self.assertEqual(j["state"], "succeeded", "the job interrupted by SIGTERM was not requeued: %r" % (j,))
                self.assertEqual(j["attempts"], 1, "the shutdown counted as an attempt: %r" % (j,))
                self.assertIsNone(j["error"])

        def test_sigterm_lets_running_jobs_finish(self):
                self.d = d = Daemon(io_threads=2, cpu_workers=1, shutdown_grace=10)
                d.start()
                j = d.submit({"task": "sleep", "args": {"seconds": 0.8}, "timeout": 30})
                d.wait_state(j["id"], "running")
                lp = LongPoll(d, j["id"], 20)
                lp.wait_read()
                took = d.stop(signal.SIGTERM, timeout=15)
                self.assertLess(took, 5.0, "a 0.8 s job held the shutdown %.2f s" % took)
                self.assertAnswered(lp, j["id"])
                d.restart()
                j = d.job(j["id"])
                self.assertEqual(j["state"], "succeeded", "a job within the grace period did not finish: %r" % (j,))
                self.assertEqual(j["attempts"], 1)

        def test_new_requests_during_the_drain(self):
                """While running jobs get their grace, a new connection is
                still taken and its request answered 503 shutting_down. (One
                that comes between the signal and the HTTP side hearing of
                it may still be accepted: it is stored, and runs later.)"""
                self.d = d = Daemon(io_threads=1, cpu_workers=1, shutdown_grace=10)
                d.start()
                j = d.submit({"task": "sleep", "args": {"seconds": 5}, "timeout": 30})
                d.wait_state(j["id"], "running")
                d.client.close()
                d.send_signal(signal.SIGTERM)
                accepted = []

                def refused():
                        fresh = harness.Client(d.port)
                        try:
                                r = fresh.request("POST", "/v1/jobs", {"task": "noop"})
                        finally:
                                fresh.close()
                        if r.status == 202:
                                accepted.append(r.json["id"])
                                return None
                        self.assertEqual(r.status, 503, r)
                        self.assertEqual(r.json["error"]["code"], "shutting_down")
                        return True
                poll_until(refused, 3, "a 503 shutting_down for a new request", 0.05)
                self.assertEqual(d.wait_exit(15), 0, d.log_tail())
                d.restart()
                self.assertEqual(d.job(j["id"])["state"], "succeeded")
                for jid in accepted:
                        self.assertEqual(d.wait(jid)["state"], "succeeded")

        def test_sigterm_cpu_job(self):
                self.d = d = Daemon(io_threads=1, cpu_workers=2, shutdown_grace=0.2)
                d.start()
                j = d.submit({"task": "sqrt_sum", "args": {"n": 3_000_000_000}, "timeout": 120})
                d.wait_state(j["id"], "running")
                workers = d.cpu_pids()
                took = d.stop(signal.SIGTERM, timeout=10)
                self.assertLess(took, 3.0, "exit %.2f s after SIGTERM with a 0.2 s grace" % took)
                poll_until(lambda: not any(proc_alive(p) for p in workers), 2,
                           "no cpu worker to outlive the daemon")
                d.restart()
                j = d.job(j["id"])
                self.assertIn(j["state"], ("pending", "running"), "a requeued cpu job: %r" % (j,))
                r = d.request("POST", "/v1/jobs/%s/cancel" % j["id"])
                self.assertIn(r.status, (200, 202), r)
                self.assertEqual(d.wait(j["id"])["state"], "cancelled")

        def test_sigterm_with_the_store_locked(self):
                """SIGTERM while another process holds the database's write
                lock: the requeue of the interrupted job cannot be stored,
                and the daemon still exits (writes are given up after a few
                seconds), leaving the job as a crash would."""
                self.d = d = Daemon(io_threads=1, cpu_workers=1, shutdown_grace=0.2, retry_base=0.1)
                d.start()
                j = d.submit({"task": "sleep", "args": {"seconds": 3}, "max_attempts": 2, "timeout": 60})
                d.wait_state(j["id"], "running")
                holder = sqlite3.connect(d.db, isolation_level=None, timeout=5)
                try:
                        holder.execute("BEGIN IMMEDIATE")
                        took = d.stop(signal.SIGTERM, timeout=30)
                finally:
                        holder.close()
                self.assertIn("storing its requeue failed", d.log_tail())
                d.restart()
                j = d.wait(j["id"], timeout=20)
                self.assertEqual(j["state"], "succeeded", j)
                self.assertEqual(j["attempts"], 2, "the crash-like stop counts the attempt: %r" % (j,))
                # The drain's DRAIN_OPS_WAIT (5 s), then the writer's last
                # try at the lock (STORE_BUSY_TIMEOUT_MS, 5 s).
                self.assertLess(took, 20)

        def test_signals_to_the_process_group(self):
                """A reload or stop sent to the daemon's whole process group
                (a terminal, kill -- -PGID, systemctl kill) reaches its
                workers too; they leave it to the daemon, so the running CPU
                job goes on through SIGHUP and is requeued by SIGTERM rather
                than crashed."""
                self.d = d = Daemon(io_threads=1, cpu_workers=1, shutdown_grace=0.2)
                d.start()
                j = d.submit({"task": "sqrt_sum", "args": {"n": 3_000_000_000}, "timeout": 120, "max_attempts": 1})
                d.wait_state(j["id"], "running")
                workers = d.cpu_pids()
                os.killpg(d.proc.pid, signal.SIGHUP)
                poll_until(lambda: "SIGHUP" in d.log_tail(), 5, "the reload")
                self.assertEqual(d.cpu_pids(), workers, "a worker died of the group's SIGHUP")
                self.assertEqual(d.job(j["id"])["state"], "running")
                t0 = time.monotonic()
                os.killpg(d.proc.pid, signal.SIGTERM)
                self.assertEqual(d.wait_exit(10), 0, d.log_tail())
                self.assertLess(time.monotonic() - t0, 5.0)
                self.assertNotIn("killed by signal", d.log_tail())
                d.restart()
                j = d.job(j["id"])
                self.assertIn(j["state"], ("pending", "running"), "a requeued cpu job: %r" % (j,))
                self.assertEqual(d.request("POST", "/v1/jobs/%s/cancel" % j["id"]).status, 200)

        def test_sigint(self):
                self.d = d = Daemon(io_threads=1, cpu_workers=1)
                d.start()
                d.wait(d.submit({"task": "noop"})["id"])
                d.stop(signal.SIGINT, timeout=10)

        def test_idle_cpu(self):
                self.d = d = Daemon(io_threads=4, cpu_workers=2)
                d.start()
                d.wait(d.submit({"task": "sqrt_sum", "args": {"n": 1000}})["id"])
                pids = [d.pid] + d.cpu_pids()
                d.client.close()
                harness.wait_quiet(pids)
                t0 = [proc_cpu_ticks(p) for p in pids]
                time.sleep(2.0)         # the measurement window itself
                used = [proc_cpu_ticks(p) - t for p, t in zip(pids, t0)]
                self.assertLessEqual(sum(used), 2, "idle daemon and workers used %r ticks in 2 s" % (used,))


class TestStartup(unittest.TestCase):
        def run_bin(self, *args):
                return subprocess.run([harness.futured_bin()] + list(args), stdin=subprocess.DEVNULL,
                                      capture_output=True, timeout=10)

        def test_help_and_version(self):
                r = self.run_bin("--help")
                self.assertEqual(r.returncode, 0, r)
                self.assertIn(b"--io-threads", r.stdout + r.stderr)
                r = self.run_bin("--version")
                self.assertEqual(r.returncode, 0, r)
                self.assertTrue((r.stdout + r.stderr).strip())

        def test_bad_flags(self):
                for args in (("--bogus",), ("--io-threads", "0"), ("--io-threads", "many"),
                             ("--cpu-workers", "-1"), ("--log-level", "loud")):
                        with self.subTest(args):
                                with tempfile.TemporaryDirectory() as tmp:
                                        r = self.run_bin(*args, "--listen", "%s:%d" % (HOST, harness.free_port()),
                                                         "--db", os.path.join(tmp, "x.db"))
                                self.assertNotEqual(r.returncode, 0, r)
                                self.assertTrue(r.stderr.strip(), "no message for %r" % (args,))

        def test_bad_values_set_up_refuses(self):
                """Values the flag parser takes but setting up refuses: exit 1
                before listening, with a message naming the key, and no
                database made."""
                for args, says in ((("--base-url", "ftp://api.example.com"), b"[openai] base_url"),
                                   (("--base-url", "https://api.example.com/v1?x=1"), b"[openai] base_url"),
                                   (("--allow", "api.example.com"), b"[http]"),
                                   (("--work-dir", "relative/dir"), b"[exec]"),
                                   (("--listen", "127.0.0.1:99999"), b"port 0 to 65535"),
                                   (("--listen", "127.0.0.1:80x"), b"port 0 to 65535"),
                                   (("--listen", "127.0.0.1: 80"), b"port 0 to 65535"),
                                   (("--listen", "unix:"), b"unix:PATH")):
                        with self.subTest(args):
                                if "--listen" not in args:
                                        args += ("--listen", "%s:%d" % (HOST, harness.free_port()))
                                with tempfile.TemporaryDirectory() as tmp:
                                        db = os.path.join(tmp, "x.db")
                                        r = self.run_bin(*args, "--db", db)
                                        self.assertFalse(os.path.exists(db), "a database was made")
                                self.assertEqual(r.returncode, 1, r)
                                self.assertIn(says, r.stderr)
                                self.assertNotIn(b"listening", r.stderr)

        def test_port_in_use(self):
                d = Daemon(io_threads=1, cpu_workers=1)
                d.start()
                try:
                        r = self.run_bin("--listen", "%s:%d" % (HOST, d.port), "--db", d.db + "-2")
                        self.assertNotEqual(r.returncode, 0, r)
                        self.assertTrue(r.stderr.strip())
                        self.assertEqual(d.request("GET", "/healthz").status, 200)
                finally:
                        d.stop()

        def test_store_in_use(self):
                """A second futured on the same database refuses to start,
                saying why, and changes nothing; the first goes on."""
                d = Daemon(io_threads=1, cpu_workers=1)
                d.start()
                try:
                        jid = d.submit({"task": "noop"})["id"]
                        d.wait(jid)
                        r = self.run_bin("--listen", "%s:%d" % (HOST, harness.free_port()), "--db", d.db)
                        self.assertNotEqual(r.returncode, 0, r)
                        self.assertIn(b"in use by another futured", r.stderr)
                        self.assertEqual(d.job(jid)["state"], "succeeded")
                        jid = d.submit({"task": "noop"})["id"]
                        self.assertEqual(d.wait(jid)["state"], "succeeded")
                finally:
                        d.stop()

        def test_store_not_ours(self):
                """A file that is not an SQLite database, another program's
                database, or one of a newer schema, is refused with a
                message saying which, and left as it was."""
                with tempfile.TemporaryDirectory(prefix="futured-e2e-db-") as tmp:
                        text = os.path.join(tmp, "text.db")
                        with open(text, "wb") as f:
                                f.write(b"not a database, only some text long enough for a header\n" * 4)
                        def database(name, *statements):
                                path = os.path.join(tmp, name)
                                db = sqlite3.connect(path)
                                for sql in statements:
                                        db.execute(sql)
                                db.commit()
                                db.close()
                                return path
                        newer = database("newer.db", "PRAGMA user_version = 999",
                                         "PRAGMA application_id = %d" % 0x46555452, "CREATE TABLE t (a)")
                        other = database("other.db", "CREATE TABLE accounts (id INTEGER PRIMARY KEY, name TEXT)")
                        # user_version 2 as futured's was, without its tables;
                        # and one with a jobs table but another program's id
                        other_v2 = database("other2.db", "PRAGMA user_version = 2", "CREATE TABLE t (a)")
                        other_id = database("other_id.db", "PRAGMA user_version = 3", "PRAGMA application_id = 7",
                                            "CREATE TABLE jobs (a)")
                        fifo = os.path.join(tmp, "fifo.db")
                        os.mkfifo(fifo)
                        for path, says in ((text, b"not a futured database"),
                                           (other, b"not a futured database"),
                                           (other_v2, b"not a futured database"),
                                           (other_id, b"not a futured database"),
                                           (fifo, b"not a futured database"),
                                           (newer, b"written by a newer futured")):
                                before = None
                                if path != fifo:
                                        with open(path, "rb") as f:
                                                before = f.read()
                                r = self.run_bin("--listen", "%s:%d" % (HOST, harness.free_port()), "--db", path)
                                self.assertEqual(r.returncode, 1, r)
                                self.assertIn(says, r.stderr)
                                if path != fifo:
                                        with open(path, "rb") as f:
                                                self.assertEqual(f.read(), before, "%s was changed" % path)
                                self.assertFalse(os.path.exists(path + "-wal"), "%s-wal made" % path)


if __name__ == "__main__":
        harness.main()
