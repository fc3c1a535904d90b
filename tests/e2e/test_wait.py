"""POST /v1/wait end to end: concurrent.futures.wait over HTTP. Each
return_when mode answers the moment its condition holds (not at the
timeout), the timeout itself, jobs already finished, many waiters at once,
10,000 ids, and bad requests."""

import threading
import time

import harness
from harness import DaemonTestCase

# An answer due at once that took this long waited for something (the 10 s
# sleepers, the 5 s timeouts): far enough from both to stay clear of a
# noisy machine's stalls.
WAITED_NOT = 2.0

MODES = ("FIRST_COMPLETED", "FIRST_EXCEPTION", "ALL_COMPLETED")


class TestWait(DaemonTestCase):
        DAEMON_ARGS = {"io_threads": 8, "cpu_workers": 1}

        def setUp(self):
                self.long = []
                self.assertIdle()

        def tearDown(self):
                d = self.daemon
                for jid in self.long:
                        r = d.request("POST", "/v1/jobs/%s/cancel" % jid)
                        self.assertIn(r.status, (200, 202, 409), r)
                self.assertHealthy()

        def sleeper(self, seconds, timeout=60):
                j = self.daemon.submit({"task": "sleep", "args": {"seconds": seconds}, "timeout": timeout})
                if seconds >= 5:
                        self.long.append(j["id"])
                return j["id"]

        def failing(self, after):
                """A job that fails (timeout) after `after` seconds."""
                return self.daemon.submit({"task": "sleep", "args": {"seconds": 30}, "timeout": after})["id"]

        def wait(self, body, client=None):
                """POSTs /v1/wait; returns (done, not_done, seconds taken)."""
                t0 = time.monotonic()
                r = (client or self.daemon.client).request("POST", "/v1/wait", body=body, timeout=60)
                took = time.monotonic() - t0
                self.assertEqual(r.status, 200, "POST /v1/wait %r: %r" % (body, r))
                self.assertEqual(sorted(r.json), ["done", "not_done"], r)
                done, not_done = r.json["done"], r.json["not_done"]
                self.assertEqual(sorted(done + not_done), sorted(body["ids"]),
                                 "done + not_done is not the ids asked for: %r" % (r.json,))
                return sorted(done), sorted(not_done), took

        def test_all_completed_is_default(self):
                d = self.daemon
                t0 = time.monotonic()
                a, b = self.sleeper(0.1), self.sleeper(0.4)
                done, not_done, _ = self.wait({"ids": [a, b]})
                took = time.monotonic() - t0
                self.assertEqual((done, not_done), (sorted([a, b]), []))
                self.assertGreaterEqual(took, 0.38)
                self.assertLess(took, 0.8, "ALL_COMPLETED answered %.3f s after a 0.4 s job began" % took)
                for jid in (a, b):
                        self.assertEqual(d.job(jid)["state"], "succeeded")
                done, not_done, _ = self.wait({"ids": [a, b], "return_when": "ALL_COMPLETED", "timeout": 5})
                self.assertEqual((done, not_done), (sorted([a, b]), []))

        def test_first_completed_answers_at_first(self):
                t0 = time.monotonic()
                a, b = self.sleeper(0.1), self.sleeper(10)
                done, not_done, _ = self.wait({"ids": [b, a], "return_when": "FIRST_COMPLETED", "timeout": 5})
                took = time.monotonic() - t0
                self.assertEqual((done, not_done), ([a], [b]))
                self.assertGreaterEqual(took, 0.09)
                self.assertLess(took, WAITED_NOT, "FIRST_COMPLETED answered %.3f s after a 0.1 s job began" % took)

        def test_first_completed_already_done(self):
                d = self.daemon
                a = d.wait(d.submit({"task": "noop"})["id"])["id"]
                b = self.sleeper(10)
                done, not_done, took = self.wait({"ids": [a, b], "return_when": "FIRST_COMPLETED"})
                self.assertEqual((done, not_done), ([a], [b]))
                self.assertLess(took, WAITED_NOT)

        def test_first_exception_answers_at_failure(self):
                d = self.daemon
                t0 = time.monotonic()
                a, f, c = self.sleeper(0.1), self.failing(0.3), self.sleeper(10)
                done, not_done, _ = self.wait({"ids": [a, f, c], "return_when": "FIRST_EXCEPTION", "timeout": 5})
                took = time.monotonic() - t0
                self.assertEqual((done, not_done), (sorted([a, f]), [c]))
                self.assertGreaterEqual(took, 0.28)
                self.assertLess(took, 0.8, "FIRST_EXCEPTION answered %.3f s after a job failing at 0.3 s" % took)
                self.assertEqual(d.job(f)["state"], "failed")

        def test_first_exception_without_failure_is_all_completed(self):
                t0 = time.monotonic()
                a, b = self.sleeper(0.1), self.sleeper(0.4)
                done, not_done, _ = self.wait({"ids": [a, b], "return_when": "FIRST_EXCEPTION", "timeout": 5})
                took = time.monotonic() - t0
                self.assertEqual((done, not_done), (sorted([a, b]), []))
                self.assertGreaterEqual(took, 0.38, "FIRST_EXCEPTION answered before every job finished")
                self.assertLess(took, 0.8)

        def test_first_exception_already_failed(self):
                d = self.daemon
                f = d.wait(self.failing(0.05))["id"]
                c = self.sleeper(10)
                done, not_done, took = self.wait({"ids": [c, f], "return_when": "FIRST_EXCEPTION"})
                self.assertEqual((done, not_done), ([f], [c]))
                self.assertLess(took, WAITED_NOT)

        def test_first_exception_cancelled_is_not_a_failure(self):
                # As in concurrent.futures: a cancelled job is done, but it
                # raised nothing.
                d = self.daemon
                c = self.sleeper(10)
                x = self.sleeper(10)
                self.assertIn(d.request("POST", "/v1/jobs/%s/cancel" % x).status, (200, 202))
                self.assertEqual(d.wait(x)["state"], "cancelled")
                done, not_done, took = self.wait({"ids": [c, x], "return_when": "FIRST_EXCEPTION", "timeout": 0.5})
                self.assertEqual((done, not_done), ([x], [c]))
                self.assertGreaterEqual(took, 0.45, "a cancelled job counted as an exception")

        def test_timeout(self):
                for mode in MODES:
                        with self.subTest(mode):
                                t0 = time.monotonic()
                                a, b = self.sleeper(0.1), self.sleeper(10)
                                body = {"ids": [a, b], "return_when": mode, "timeout": 0.6}
                                if mode == "FIRST_COMPLETED":
                                        body["ids"] = [b]
                                done, not_done, _ = self.wait(body)
                                took = time.monotonic() - t0
                                self.assertGreaterEqual(took, 0.55, "%s answered before its timeout" % mode)
                                self.assertLess(took, 1.2, "%s answered %.3f s after a 0.6 s timeout" % (mode, took))
                                self.assertIn(b, not_done)
                                if mode != "FIRST_COMPLETED":
                                        self.assertEqual(done, [a])

        def test_timeout_zero_is_a_snapshot(self):
                d = self.daemon
                a = d.wait(d.submit({"task": "noop"})["id"])["id"]
                b = self.sleeper(10)
                for mode in MODES:
                        with self.subTest(mode):
                                done, not_done, took = self.wait({"ids": [a, b], "return_when": mode, "timeout": 0})
                                self.assertEqual((done, not_done), ([a], [b]))
                                self.assertLess(took, WAITED_NOT)

        def test_all_finished_is_immediate(self):
                d = self.daemon
                ids = [d.wait(d.submit({"task": "noop", "args": {"i": i}})["id"])["id"] for i in range(3)]
                for mode in MODES:
                        with self.subTest(mode):
                                done, not_done, took = self.wait({"ids": ids, "return_when": mode})
                                self.assertEqual((done, not_done), (sorted(ids), []))
                                self.assertLess(took, WAITED_NOT)

        def test_many_waiters(self):
                d = self.daemon
                t0 = time.monotonic()
                a = self.sleeper(0.5)
                answers, errors = [], []

                def waiter(mode):
                        c = d.new_client()
                        try:
                                answers.append(self.wait({"ids": [a], "return_when": mode, "timeout": 10}, client=c))
                        except BaseException as e:      # reported on the main thread
                                errors.append(e)
                        finally:
                                c.close()
                threads = [threading.Thread(target=waiter, args=(MODES[i % 3],)) for i in range(60)]
                for t in threads:
                        t.start()
                for t in threads:
                        t.join(20)
                took = time.monotonic() - t0
                self.assertFalse(any(t.is_alive() for t in threads), "waiters still blocked")
                if errors:
                        raise errors[0]
                self.assertEqual(len(answers), 60)
                for done, not_done, _ in answers:
                        self.assertEqual((done, not_done), ([a], []))
                self.assertLess(took, 1.5, "60 waiters on a 0.5 s job answered after %.3f s" % took)

        def test_10000_ids(self):
                d = self.daemon
                b = d.submit_batch({"task": "noop", "items": [{"i": i} for i in range(10000)]})
                d.wait_batch(b["id"], timeout=30)
                ids = [j["id"] for j in d.batch_jobs(b["id"])]
                self.assertEqual(len(ids), 10000)
                done, not_done, took = self.wait({"ids": ids, "timeout": 10})
                self.assertEqual((len(done), not_done), (10000, []))
                self.assertLess(took, 5.0)
                r = d.request("POST", "/v1/wait", {"ids": ids + [ids[0]]})
                self.assertError(r, 400, None, "10,001 ids")
                r = d.request("DELETE", "/v1/batches/%s" % b["id"])
                self.assertEqual(r.status, 204, r)

        def test_unknown_id_is_404(self):
                d = self.daemon
                a = d.wait(d.submit({"task": "noop"})["id"])["id"]
                for ids in ([a, "987654321"], ["987654321"], ["abc"], [a, "0"]):
                        with self.subTest(repr(ids)):
                                self.assertError(d.request("POST", "/v1/wait", {"ids": ids}), 404, "not_found",
                                                 "wait on %r" % (ids,))

        def test_bad_requests(self):
                d = self.daemon
                a = d.wait(d.submit({"task": "noop"})["id"])["id"]
                counts = d.job_counts()
                bad = [
                        ("not JSON", b'{"ids":', 400, "invalid_json"),
                        ("an array", [a], 400, None),
                        ("no ids", {}, 400, None),
                        ("ids a string", {"ids": a}, 400, None),
                        ("ids an object", {"ids": {"a": a}}, 400, None),
                        ("id a number", {"ids": [int(a)] if a.isdigit() else [5]}, 400, None),
                        ("id null", {"ids": [None]}, 400, None),
                        ("id a list", {"ids": [[a]]}, 400, None),
                        ("return_when unknown", {"ids": [a], "return_when": "SOMETIMES"}, 400, None),
                        ("return_when a number", {"ids": [a], "return_when": 1}, 400, None),
                        ("return_when null", {"ids": [a], "return_when": None}, 400, None),
                        ("timeout negative", {"ids": [a], "timeout": -1}, 400, None),
                        ("timeout a string", {"ids": [a], "timeout": "5"}, 400, None),
                        ("timeout a bool", {"ids": [a], "timeout": True}, 400, None),
                        ("unknown field", {"ids": [a], "bogus": 1}, 400, "unknown_field"),
                        ("10,001 ids", {"ids": [str(i + 1) for i in range(10001)]}, 400, None),
                ]
                for what, body, status, code in bad:
                        with self.subTest(what):
                                if isinstance(body, bytes):
                                        r = d.request("POST", "/v1/wait", raw=body)
                                else:
                                        r = d.request("POST", "/v1/wait", body)
                                self.assertError(r, status, code, what)
                with self.subTest("empty ids"):
                        # Not in the contract: either an immediate empty answer
                        # or a 400, never a hang.
                        r = d.request("POST", "/v1/wait", {"ids": []}, timeout=5)
                        if r.status == 200:
                                self.assertEqual(r.json, {"done": [], "not_done": []})
                        else:
                                self.assertError(r, 400, None, "empty ids")
                with self.subTest("text/plain"):
                        r = d.request("POST", "/v1/wait", raw=b'{"ids":[]}', headers={"Content-Type": "text/plain"})
                        self.assertError(r, 415, "unsupported_media_type", "text/plain wait")
                with self.subTest("GET"):
                        r = d.request("GET", "/v1/wait")
                        self.assertError(r, 405, "method_not_allowed", "GET /v1/wait")
                        self.assertTrue(r.header("allow"))
                self.assertEqual(d.job_counts(), counts)
                self.assertEqual(d.request("GET", "/healthz").status, 200)


if __name__ == "__main__":
        harness.main()
