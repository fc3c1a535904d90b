"""Concurrency: the I/O pool really runs its threads at once, many clients
submitting at once lose and double nothing, many long-polls on one job are
all woken, and one idempotency key raced by many clients makes one job."""

import threading
import time
import uuid

import harness
from harness import DaemonTestCase, parse_time, poll_until


def run_threads(n, fn):
        """Runs fn(i) on n threads; re-raises the first failure."""
        errors = []

        def wrap(i):
                try:
                        fn(i)
                except BaseException as e:      # reported on the main thread
                        errors.append(e)
        threads = [threading.Thread(target=wrap, args=(i,)) for i in range(n)]
        for t in threads:
                t.start()
        for t in threads:
                t.join(60)
        if any(t.is_alive() for t in threads):
                raise AssertionError("client threads still running after 60 s")
        if errors:
                raise errors[0]


class TestConcurrency(DaemonTestCase):
        DAEMON_ARGS = {"io_threads": 16, "cpu_workers": 2}

        def quiet(self):
                d = self.daemon
                poll_until(lambda: (lambda c: c["pending"] + c["running"] == 0)(d.job_counts()), 20,
                           "no pending or running job")

        def test_io_pool_runs_16_at_once(self):
                d = self.daemon
                self.quiet()
                t0 = time.monotonic()
                jobs = [d.submit({"task": "sleep", "args": {"seconds": 0.5}, "timeout": 30}) for _ in range(16)]
                done = [d.wait(j["id"], timeout=10) for j in jobs]
                wall = time.monotonic() - t0
                for j in done:
                        self.assertEqual(j["state"], "succeeded", j)
                self.assertLess(wall, 1.5, "16 x sleep 0.5 on 16 threads took %.2f s" % wall)
                # Two waves (a pool of 8) would start 0.5 s apart and span
                # 1 s; the wall-clock bound above lets that through.
                starts = sorted(parse_time(j["started_at"]) for j in done)
                self.assertLess(starts[-1] - starts[0], 0.4,
                                "16 x sleep 0.5 did not all start at once: %.2f s apart" % (starts[-1] - starts[0]))
                last = max(parse_time(j["finished_at"]) for j in done)
                self.assertLess(last - starts[0], 1.0, "16 x sleep 0.5 spanned %.2f s of job time" % (last - starts[0]))

        def test_8_clients_x_150(self):
                d = self.daemon
                self.quiet()
                before = d.job_counts()
                results = {}
                lock = threading.Lock()

                def client(t):
                        c = d.new_client()
                        mine = []
                        for i in range(150):
                                tag = {"client": t, "i": i}
                                r = c.request("POST", "/v1/jobs", {"task": "noop", "args": {"t": t, "i": i}, "tag": tag})
                                if r.status != 202:
                                        raise AssertionError("client %d submission %d: expected 202, got %r" % (t, i, r))
                                mine.append((r.json["id"], tag))
                        c.close()
                        with lock:
                                for jid, tag in mine:
                                        if jid in results:
                                                raise AssertionError("id %s given to two submissions" % jid)
                                        results[jid] = tag

                run_threads(8, client)
                self.assertEqual(len(results), 1200, "distinct ids for 1200 submissions")
                self.quiet()
                for jid, tag in results.items():
                        j = d.job(jid)
                        self.assertEqual(j["state"], "succeeded", j)
                        self.assertEqual(j["attempts"], 1, "job run more than once: %r" % (j,))
                        self.assertEqual(j["tag"], tag)
                        self.assertEqual(j["result"], {"t": tag["client"], "i": tag["i"]})
                after = d.job_counts()
                self.assertEqual(after["succeeded"] - before["succeeded"], 1200)
                self.assertEqual(sum(after.values()) - sum(before.values()), 1200, "jobs stored besides the 1200")

        def test_many_waiters_on_one_job(self):
                d = self.daemon
                j = d.submit({"task": "sleep", "args": {"seconds": 0.5}})
                answers = []
                t0 = time.monotonic()

                def waiter(i):
                        c = d.new_client()
                        r = c.request("GET", "/v1/jobs/%s?wait=20" % j["id"])
                        answers.append((r.status, r.json["state"], time.monotonic() - t0))
                        c.close()
                run_threads(64, waiter)
                self.assertEqual(len(answers), 64)
                for status, state, took in answers:
                        self.assertEqual((status, state), (200, "succeeded"))
                        self.assertLess(took, 3.0, "a waiter answered %.2f s after submit" % took)

        def test_key_race(self):
                d = self.daemon
                key = "race-" + uuid.uuid4().hex
                before = sum(d.job_counts().values())
                got = []
                barrier = threading.Barrier(8)

                def racer(i):
                        c = d.new_client()
                        c.request("GET", "/healthz")    # connect before the race
                        barrier.wait(10)
                        r = c.request("POST", "/v1/jobs", {"task": "noop", "key": key, "tag": i})
                        got.append((r.status, r.json.get("id")))
                        c.close()
                run_threads(8, racer)
                statuses = sorted(s for s, _ in got)
                self.assertEqual(statuses, [200] * 7 + [202], "one key raced by 8 clients: %r" % (got,))
                self.assertEqual(len({i for _, i in got}), 1, "one key gave several ids: %r" % (got,))
                self.assertEqual(sum(d.job_counts().values()) - before, 1)
                self.assertEqual(d.wait(got[0][1])["attempts"], 1)


if __name__ == "__main__":
        harness.main()
