"""The CPU pool end to end: jobs run in worker processes, in parallel, and a
timeout, a cancel or a crash kills one worker, fails its job with the reason
and leaves a pool that runs the next job normally."""

import os
import signal
import time

import harness
from harness import DaemonTestCase, parse_time, poll_until, proc_alive, proc_cpu_ticks

SQRT_SUM_MAX = 10_000_000_000   # the largest n the task accepts


class TestCpu(DaemonTestCase):
        DAEMON_ARGS = {"io_threads": 2, "cpu_workers": 2}
        rate = None     # sqrt_sum iterations per second in one worker

        @classmethod
        def setUpClass(cls):
                super().setUpClass()
                d = cls.daemon
                n = 10_000_000
                while True:
                        j = d.wait(d.submit({"task": "sqrt_sum", "args": {"n": n}, "timeout": 60})["id"], timeout=30)
                        assert j["state"] == "succeeded", j
                        took = parse_time(j["finished_at"]) - parse_time(j["started_at"])
                        if took >= 0.1 or n >= SQRT_SUM_MAX:
                                break
                        n *= 10
                cls.rate = n / max(took, 0.001)

        def n_for(self, seconds):
                return min(int(self.rate * seconds), SQRT_SUM_MAX)

        def long_job(self, **kw):
                """A sqrt_sum that would run about 30 s; returns it once running."""
                d = self.daemon
                spec = {"task": "sqrt_sum", "args": {"n": self.n_for(30)}, "timeout": 120}
                spec.update(kw)
                j = d.submit(spec)
                return d.wait_state(j["id"], "running")

        def restarts(self):
                return self.daemon.stats()["pools"]["cpu"]["restarts"]

        def assertPoolRecovered(self, restarts_before, dead_pid=None):
                """The worker that ran the job was killed and replaced (issue 2:
                "the worker is killed and replaced at once"), and the pool runs
                jobs again."""
                d = self.daemon
                poll_until(lambda: self.restarts() > restarts_before, 5,
                           "stats pools.cpu.restarts to grow past %d (the worker killed and replaced)"
                           % restarts_before)
                pids = poll_until(lambda: (lambda p: p if len(p) == 2 else None)(d.cpu_pids()), 5,
                                  "two cpu workers again")
                if dead_pid is not None:
                        self.assertNotIn(dead_pid, pids)
                for pid in pids:
                        self.assertTrue(proc_alive(pid), "stats lists worker %d, which is not alive" % pid)
                # Both workers take jobs again.
                jobs = [d.submit({"task": "sqrt_sum", "args": {"n": 1000}}) for _ in range(6)]
                for j in jobs:
                        j = d.wait(j["id"])
                        self.assertEqual(j["state"], "succeeded", j)
                        self.assertIn(j["result"]["pid"], d.cpu_pids())
                self.assertEqual(d.request("GET", "/healthz").status, 200)
                poll_until(lambda: d.stats()["pools"]["cpu"]["busy"] == 0, 5, "cpu busy back to 0")

        def test_runs_in_worker_process(self):
                d = self.daemon
                pids = d.cpu_pids()
                self.assertEqual(len(pids), 2)
                self.assertNotIn(d.pid, pids)
                for _ in range(6):
                        j = d.wait(d.submit({"task": "sqrt_sum", "args": {"n": 1000}})["id"])
                        self.assertEqual(j["state"], "succeeded", j)
                        pid = j["result"]["pid"]
                        self.assertNotEqual(pid, d.pid, "sqrt_sum ran inside the daemon process")
                        self.assertIn(pid, pids)
                        self.assertTrue(proc_alive(pid))
                j = d.wait(d.submit({"task": "noop", "kind": "cpu", "args": {"k": [1, 2]}})["id"])
                self.assertEqual(j["state"], "succeeded", j)
                self.assertEqual(j["result"], {"k": [1, 2]})

        def test_parallel(self):
                d = self.daemon
                n = self.n_for(0.8)
                jobs = [d.submit({"task": "sqrt_sum", "args": {"n": n}, "timeout": 60}) for _ in range(2)]
                done = [d.wait(j["id"], timeout=30) for j in jobs]
                for j in done:
                        self.assertEqual(j["state"], "succeeded", j)
                a, b = ((parse_time(j["started_at"]), parse_time(j["finished_at"])) for j in done)
                overlap = min(a[1], b[1]) - max(a[0], b[0])
                self.assertGreater(overlap, 0, "the two cpu jobs ran one after the other: %r %r" % (a, b))
                self.assertGreater(overlap, 0.5 * min(a[1] - a[0], b[1] - b[0]),
                                   "the two cpu jobs barely overlapped: %r %r" % (a, b))
                self.assertNotEqual(done[0]["result"]["pid"], done[1]["result"]["pid"])

        def test_timeout(self):
                d = self.daemon
                r0 = self.restarts()
                j = d.submit({"task": "sqrt_sum", "args": {"n": self.n_for(30)}, "timeout": 0.5})
                t0 = time.monotonic()
                j = d.wait(j["id"], timeout=10)
                self.assertLess(time.monotonic() - t0, 3.0, "a 0.5 s timeout took too long")
                self.assertEqual(j["state"], "failed", j)
                self.assertEqual(j["error"]["type"], "timeout", j)
                self.assertIsNone(j["result"])
                self.assertPoolRecovered(r0)

        def test_cancel_running(self):
                d = self.daemon
                r0 = self.restarts()
                j = self.long_job()
                t0 = time.monotonic()
                r = d.request("POST", "/v1/jobs/%s/cancel" % j["id"])
                self.assertIn(r.status, (200, 202), r)
                if r.status == 200:
                        self.assertEqual(r.json["state"], "cancelled", r)
                j = d.wait(j["id"], timeout=10)
                self.assertLess(time.monotonic() - t0, 3.0, "cancel of a running cpu job took too long")
                self.assertEqual(j["state"], "cancelled", j)
                self.assertEqual(j["error"]["type"], "cancelled", j)
                self.assertPoolRecovered(r0)

        def test_crash(self):
                d = self.daemon
                r0 = self.restarts()
                j = self.long_job(max_attempts=1)
                pids = d.cpu_pids()
                base = {p: proc_cpu_ticks(p) for p in pids}

                def busy():
                        for p in pids:
                                if proc_cpu_ticks(p) - base[p] >= 5:
                                        return p
                        return None
                victim = poll_until(busy, 10, "the worker running the job to burn CPU")
                os.kill(victim, signal.SIGKILL)
                j = d.wait(j["id"], timeout=10)
                self.assertEqual(j["state"], "failed", j)
                self.assertEqual(j["error"]["type"], "crashed", j)
                self.assertTrue(d.running(), "the daemon died with its worker")
                self.assertPoolRecovered(r0, dead_pid=victim)

        def test_many_small(self):
                d = self.daemon
                jobs = [d.submit({"task": "sqrt_sum", "args": [i * 100]}) for i in range(1, 41)]
                for i, j in enumerate(jobs, 1):
                        j = d.wait(j["id"])
                        self.assertEqual(j["state"], "succeeded", j)
                        self.assertEqual(j["attempts"], 1)
                        self.assertEqual(j["args"], {"n": i * 100})


if __name__ == "__main__":
        harness.main()
