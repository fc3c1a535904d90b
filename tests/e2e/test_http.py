"""The http task end to end against a stand-in API (fakeapi.py, started
here on a free loopback port): a JSON round trip, retries that honour
Retry-After, a status failure that keeps status and body, the response
cap, per-batch concurrency and rate limits as the server sees them, the
allowlist, bad limits, and the cancel of a request in flight."""

import os
import subprocess
import sys
import time
import uuid

import harness
from harness import DaemonTestCase, poll_until

FAKEAPI = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fakeapi.py")


class FakeAPI:
        """fakeapi.py in a child process, for the life of a test class."""

        def __init__(self):
                self.proc = subprocess.Popen([sys.executable, FAKEAPI, "--port", "0"],
                                             stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
                line = self.proc.stdout.readline().decode()
                if not line.startswith("PORT "):
                        self.proc.kill()
                        raise AssertionError("fakeapi did not start: %r" % line)
                self.port = int(line.split()[1])
                self.base = "http://127.0.0.1:%d" % self.port
                self.client = harness.Client(self.port)

        def stats(self, key):
                r = self.client.request("GET", "/__stats?key=" + key)
                assert r.status == 200, r
                return r.json

        def stop(self):
                self.client.close()
                self.proc.kill()
                self.proc.wait()


def fresh_key():
        return uuid.uuid4().hex


class FakeAPITestCase(DaemonTestCase):
        """A daemon and a fakeapi.py for the test class: the daemon may call
        the fake's ALLOW path, with fast retries and EXTRA_ARGS."""
        ALLOW = "/"
        EXTRA_ARGS = ()

        @classmethod
        def setUpClass(cls):
                cls.api = FakeAPI()
                cls.DAEMON_ARGS = {
                        "io_threads": 32,
                        "retry_base": 0.05,
                        "args": ("--allow", cls.api.base + cls.ALLOW) + cls.EXTRA_ARGS,
                }
                try:
                        super().setUpClass()
                except BaseException:
                        cls.api.stop()
                        raise

        @classmethod
        def tearDownClass(cls):
                try:
                        super().tearDownClass()
                finally:
                        cls.api.stop()


class HttpTest(FakeAPITestCase):
        EXTRA_ARGS = ("--max-response", "64K", "--retry-max", "5")

        def run_http(self, args, timeout=20.0, **spec):
                job = self.daemon.submit(dict({"task": "http", "args": args}, **spec))
                return self.daemon.wait(job["id"], timeout=timeout)

        def test_json_and_headers_round_trip(self):
                j = self.run_http({"url": self.api.base + "/echo?x=1", "method": "PUT",
                                   "json": {"a": [1, "two"], "b": None},
                                   "headers": {"X-Test": "yes"}})
                self.assertEqual(j["state"], "succeeded", j)
                res = j["result"]
                self.assertEqual(res["status"], 200, res)
                echo = res["json"]
                self.assertEqual(echo["method"], "PUT")
                self.assertEqual(echo["json"], {"a": [1, "two"], "b": None})
                self.assertEqual(echo["query"], {"x": "1"})
                self.assertEqual(echo["headers"]["x-test"], "yes")
                self.assertTrue(echo["headers"]["content-type"].startswith("application/json"), echo)

        def test_429_twice_then_200_honours_retry_after(self):
                key = fresh_key()
                j = self.run_http({"url": self.api.base + "/flaky?fail=2&retry_after=1&key=" + key},
                                  max_attempts=5)
                self.assertEqual(j["state"], "succeeded", j)
                self.assertEqual(j["attempts"], 3, j)
                self.assertEqual(j["result"]["json"]["attempt"], 3)
                times = self.api.stats(key)["times"]
                self.assertEqual(len(times), 3)
                for a, b in zip(times, times[1:]):
                        self.assertGreaterEqual(b - a, 0.95, "Retry-After: 1 not waited: %r" % times)
                        self.assertLess(b - a, 3.0, times)

        def test_400_fails_with_status_and_body(self):
                j = self.run_http({"url": self.api.base + "/status/400"}, max_attempts=3)
                self.assertEqual(j["state"], "failed", j)
                self.assertEqual(j["attempts"], 1, "a 400 is not retried: %r" % j)
                err = j["error"]
                self.assertEqual(err["type"], "http_status", err)
                self.assertEqual(err["status"], 400, err)
                self.assertIn("status 400", str(err.get("json", err.get("body"))), err)

        def test_response_over_the_cap_fails_and_daemon_stays_healthy(self):
                j = self.run_http({"url": self.api.base + "/huge?bytes=4000000"})
                self.assertEqual(j["state"], "failed", j)
                self.assertEqual(j["error"]["type"], "response_too_large", j)
                self.assertEqual(self.daemon.request("GET", "/healthz").status, 200)
                j = self.run_http({"url": self.api.base + "/echo"})
                self.assertEqual(j["state"], "succeeded", j)

        def test_closed_connection_is_a_transport_error(self):
                j = self.run_http({"url": self.api.base + "/close"}, max_attempts=1)
                self.assertEqual(j["state"], "failed", j)
                self.assertEqual(j["error"]["type"], "http_error", j)

        def test_batch_concurrency_limit(self):
                key = fresh_key()
                url = self.api.base + "/delay?ms=200&key=" + key
                b = self.daemon.submit_batch({"task": "http", "limits": {"concurrency": 4},
                                              "items": [{"url": url} for _ in range(24)]})
                b = self.daemon.wait_batch(b["id"], timeout=20)
                self.assertEqual(b["counts"]["succeeded"], 24, b)
                st = self.api.stats(key)
                self.assertEqual(st["requests"], 24, st)
                self.assertLessEqual(st["max_inflight"], 4, st)
                self.assertEqual(st["max_inflight"], 4, "the limit was never reached: %r" % st)

        def test_batch_rate_limit(self):
                key = fresh_key()
                url = self.api.base + "/echo?key=" + key
                b = self.daemon.submit_batch({"task": "http", "limits": {"per_second": 10},
                                              "items": [{"url": url} for _ in range(30)]})
                b = self.daemon.wait_batch(b["id"], timeout=20)
                self.assertEqual(b["counts"]["succeeded"], 30, b)
                times = self.api.stats(key)["times"]
                self.assertEqual(len(times), 30)
                rate = (len(times) - 1) / (times[-1] - times[0])
                self.assertLess(abs(rate - 10) / 10, 0.10, "rate %.2f/s, wanted 10" % rate)

        def test_bad_limits_are_400(self):
                for limits, field in (({"concurrency": 0}, "limits.concurrency"),
                                      ({"per_second": "fast"}, "limits.per_second"),
                                      ({"burst": 3}, "limits.burst"),
                                      (5, "limits")):
                        r = self.daemon.request("POST", "/v1/batches", body={
                                "task": "noop", "limits": limits, "items": [{}]})
                        self.assertError(r, 400, "invalid_request", "limits %r" % (limits,))
                        self.assertIn(field, r.json["error"]["message"])

        def test_url_outside_the_allowlist_is_400(self):
                for url in ("http://127.0.0.1:1/echo", "http://localhost:%d/echo" % self.api.port):
                        r = self.daemon.request("POST", "/v1/jobs",
                                                body={"task": "http", "args": {"url": url}})
                        self.assertEqual(r.status, 400, "%s: %r" % (url, r))

        def test_cancel_aborts_a_request_in_flight(self):
                key = fresh_key()
                job = self.daemon.submit({"task": "http", "timeout": 60,
                                          "args": {"url": self.api.base + "/delay?ms=20000&key=" + key}})
                poll_until(lambda: self.api.stats(key)["inflight"] == 1, 10, "the request to arrive")
                t0 = time.monotonic()
                r = self.daemon.request("POST", "/v1/jobs/%s/cancel" % job["id"])
                self.assertIn(r.status, (200, 202), r)
                j = self.daemon.wait(job["id"], timeout=5)
                # the call takes 20 s unless the cancel aborts it
                self.assertLess(time.monotonic() - t0, 3.0)
                self.assertEqual(j["state"], "cancelled", j)


if __name__ == "__main__":
        harness.main()
