"""Batches end to end: the three ways to submit (items, jobs, NDJSON), the
batch object, all or nothing on a bad item, the size cap, cancel of running
I/O and CPU batches, delete, listing by batch, retention, and bad
requests on every batch endpoint."""

import socket
import sqlite3
import threading
import time
import unittest

import harness
from harness import Daemon, DaemonTestCase, parse_time, poll_until, proc_alive

BATCH_FIELDS = ("id", "size", "counts", "done", "priority", "created_at", "finished_at")
MAX_ITEMS = 5000
# Jobs per ITEMS op of an upload (api/batches.c's UPLOAD_CHUNK): a batch of
# more is stored a chunk at a time while the next is parsed.
CHUNK = 10000


def ndjson(lines):
        """One chunk per line: the daemon must parse a body that arrives in
        pieces."""
        for line in lines:
                yield line.encode() if isinstance(line, str) else line


class BatchChecks:
        def assertBatch(self, b, size=None, done=None):
                for f in BATCH_FIELDS:
                        self.assertIn(f, b, "batch lacks %r: %r" % (f, b))
                self.assertIsInstance(b["id"], str)
                self.assertTrue(b["id"])
                self.assertIsInstance(b["done"], bool)
                self.assertEqual(sorted(b["counts"]), sorted(harness.STATES), b)
                self.assertEqual(sum(b["counts"].values()), b["size"], "counts do not sum to size: %r" % (b,))
                created = parse_time(b["created_at"])
                if b["done"]:
                        self.assertGreaterEqual(parse_time(b["finished_at"]), created, b)
                        self.assertEqual(b["counts"]["pending"] + b["counts"]["running"], 0, b)
                else:
                        self.assertIsNone(b["finished_at"], b)
                if size is not None:
                        self.assertEqual(b["size"], size, b)
                if done is not None:
                        self.assertEqual(b["done"], done, b)

        def assertItemError(self, r, code, index, line=None):
                """A 400 naming the bad item (and its NDJSON line)."""
                what = "bad item %d%s" % (index, "" if line is None else " on line %d" % line)
                self.assertError(r, 400, code, what)
                err = r.json["error"]
                self.assertEqual(err.get("index"), index, "error does not name index %d: %r" % (index, err))
                self.assertRegex(err["message"], r"\b%d\b" % index, "message does not name the index")
                if line is not None:
                        self.assertEqual(err.get("line"), line, "error does not name line %d: %r" % (line, err))
                        self.assertRegex(err["message"], r"\b%d\b" % line, "message does not name the line")

        def around(self, fn):
                """Runs fn (a refused submission) between two good batches;
                asserts it stored nothing: job counts, the job list, and no
                batch id between the two (ids are numbers in practice)."""
                d = self.daemon
                counts = d.job_counts()
                ids = [j["id"] for j in d.list_all(limit=1000)]
                a = d.submit_batch({"task": "noop", "items": []})["id"]
                fn()
                z = d.submit_batch({"task": "noop", "items": []})["id"]
                self.assertEqual(d.job_counts(), counts, "a refused batch changed the job counts")
                self.assertEqual([j["id"] for j in d.list_all(limit=1000)], ids, "a refused batch left jobs")
                if a.isdigit() and z.isdigit():
                        for x in range(int(a) + 1, int(z)):
                                self.assertError(d.request("GET", "/v1/batches/%d" % x), 404, "not_found",
                                                 "the refused batch %d" % x)
                                r = d.request("GET", "/v1/jobs?batch=%d" % x)
                                self.assertEqual(r.status, 200, r)
                                self.assertEqual(r.json["jobs"], [], "jobs of the refused batch %d" % x)


class TestBatches(BatchChecks, DaemonTestCase):
        DAEMON_ARGS = {"io_threads": 4, "cpu_workers": 2, "args": ("--max-batch-items", str(MAX_ITEMS))}

        def setUp(self):
                self.assertIdle()

        def tearDown(self):
                self.assertHealthy()

        def test_items_form(self):
                d = self.daemon
                r = d.request("POST", "/v1/batches", {"task": "sleep", "timeout": 30, "max_attempts": 2,
                                                      "priority": 7,
                                                      "items": [{"seconds": 0.01}, [0.02], {"seconds": 0}]})
                self.assertEqual(r.status, 202, r)
                b = r.json
                self.assertBatch(b, size=3)
                self.assertEqual(b["priority"], 7)
                self.assertTrue((r.header("location") or "").endswith("/v1/batches/" + b["id"]),
                                "Location %r" % r.header("location"))
                b = d.wait_batch(b["id"])
                self.assertBatch(b, size=3, done=True)
                self.assertEqual(b["counts"]["succeeded"], 3)
                self.assertEqual(d.batch(b["id"]), b)
                jobs = d.batch_jobs(b["id"])
                self.assertEqual([j["index"] for j in jobs], [0, 1, 2])
                self.assertEqual([j["args"] for j in jobs], [{"seconds": 0.01}, {"seconds": 0.02}, {"seconds": 0}])
                for j in jobs:
                        self.assertEqual((j["batch"], j["task"], j["timeout"], j["max_attempts"], j["priority"],
                                          j["state"], j["key"]),
                                         (b["id"], "sleep", 30, 2, 7, "succeeded", None), j)
                        self.assertEqual(d.job(j["id"]), j)

        def test_jobs_form(self):
                d = self.daemon
                b = d.submit_batch({"task": "noop", "timeout": 20, "priority": -3, "jobs": [
                        {"args": {"a": 1}},
                        {"task": "sleep", "args": [0.01], "tag": {"t": 1}},
                        {"kind": "cpu", "args": {"c": 1}, "timeout": 5, "max_attempts": 3},
                        {"task": "sqrt_sum", "args": {"n": 100}},
                ]})
                self.assertBatch(b, size=4)
                self.assertEqual(b["priority"], -3)
                self.assertEqual(d.wait_batch(b["id"])["counts"]["succeeded"], 4)
                jobs = d.batch_jobs(b["id"])
                got = [(j["task"], j["kind"], j["timeout"], j["tag"], j["priority"]) for j in jobs]
                self.assertEqual(got, [("noop", "io", 20, None, -3), ("sleep", "io", 20, {"t": 1}, -3),
                                       ("noop", "cpu", 5, None, -3), ("sqrt_sum", "cpu", 20, None, -3)])
                self.assertEqual(jobs[2]["max_attempts"], 3)
                self.assertEqual([jobs[0]["result"], jobs[2]["result"]], [{"a": 1}, {"c": 1}])
                # No top-level task: every item names its own.
                b = d.submit_batch({"jobs": [{"task": "noop"}, {"task": "sleep", "args": {"seconds": 0}}]})
                self.assertEqual([j["task"] for j in d.batch_jobs(b["id"])], ["noop", "sleep"])

        def test_ndjson_form(self):
                d = self.daemon
                r = d.submit_ndjson(ndjson(['{"args":{"seconds":0.01}}\n', "\n", '{"args":[0.02],"tag":"x"}\n',
                                            '{"task":"noop","args":{"k":1}}']),
                                    "task=sleep&timeout=9&max_attempts=2&priority=4")
                self.assertEqual(r.status, 202, r)
                b = r.json
                self.assertBatch(b, size=3)
                self.assertEqual(b["priority"], 4)
                self.assertTrue((r.header("location") or "").endswith("/v1/batches/" + b["id"]))
                self.assertEqual(d.wait_batch(b["id"])["counts"]["succeeded"], 3)
                jobs = d.batch_jobs(b["id"])
                self.assertEqual([(j["index"], j["task"], j["timeout"], j["max_attempts"], j["priority"], j["tag"])
                                  for j in jobs],
                                 [(0, "sleep", 9, 2, 4, None), (1, "sleep", 9, 2, 4, "x"), (2, "noop", 9, 2, 4, None)])
                self.assertEqual(jobs[2]["result"], {"k": 1})

        def test_empty_batch(self):
                d = self.daemon
                for what, submit in (("items", lambda: d.request("POST", "/v1/batches", {"task": "noop", "items": []})),
                                     ("jobs", lambda: d.request("POST", "/v1/batches", {"jobs": []})),
                                     ("ndjson", lambda: d.submit_ndjson([], "task=noop"))):
                        with self.subTest(what):
                                r = submit()
                                self.assertEqual(r.status, 202, r)
                                self.assertBatch(r.json, size=0, done=True)
                                bid = r.json["id"]
                                self.assertBatch(d.batch(bid), size=0, done=True)
                                self.assertEqual(d.batch_jobs(bid), [])
                                t0 = time.monotonic()
                                self.assertEqual(d.stream(bid).read_all_json(timeout=5), [])
                                events = d.stream(bid, sse=True).read_all_events(timeout=5)
                                self.assertEqual([e["event"] for e in events], ["done"])
                                self.assertLess(time.monotonic() - t0, 1.0)

        def test_all_or_nothing_items(self):
                d = self.daemon
                items = [{"seconds": 0}] * 5 + [{"seconds": "x"}] + [{"seconds": 0}] * 4
                self.around(lambda: self.assertItemError(
                        d.request("POST", "/v1/batches", {"task": "sleep", "items": items}), "invalid_args", 5))
                items = [[0]] * 5 + [5] + [[0]] * 4
                self.around(lambda: self.assertItemError(
                        d.request("POST", "/v1/batches", {"task": "sleep", "items": items}), None, 5))

        def test_all_or_nothing_jobs(self):
                d = self.daemon
                good = {"task": "noop", "args": {"x": 1}}
                for what, bad, code in (("unknown task", {"task": "slep"}, "unknown_task"),
                                        ("bad args", {"task": "sleep", "args": {"seconds": -1}}, "invalid_args"),
                                        ("bad kind", {"task": "sleep", "kind": "cpu", "args": [1]}, "invalid_kind"),
                                        ("key", {"task": "noop", "key": "k1"}, None),
                                        ("priority", {"task": "noop", "priority": 1}, None),
                                        ("unknown field", {"task": "noop", "bogus": 1}, "unknown_field"),
                                        ("not an object", "noop", None)):
                        with self.subTest(what):
                                jobs = [good] * 5 + [bad] + [good] * 4
                                self.around(lambda: self.assertItemError(
                                        d.request("POST", "/v1/batches", {"jobs": jobs}), code, 5))

        def test_all_or_nothing_ndjson(self):
                d = self.daemon
                good = '{"task":"noop","args":{"x":1}}\n'
                for what, bad, code in (("bad args", '{"task":"sleep","args":{"seconds":-1}}\n', "invalid_args"),
                                        ("unknown task", '{"task":"slep"}\n', "unknown_task"),
                                        ("not JSON", '{"task":"noop",\n', "invalid_json"),
                                        ("key", '{"task":"noop","key":"k2"}\n', None)):
                        with self.subTest(what):
                                # A blank line 3 makes item 5 line 7.
                                lines = [good, good, "\n", good, good, good, bad] + [good] * 4
                                self.around(lambda: self.assertItemError(d.submit_ndjson(ndjson(lines)), code, 5, 7))
                # Far into the body, after many items may have been stored.
                n = 4500
                lines = [(good * 500).encode()] * (n // 500) + [b'{"task":"slep"}\n']
                self.around(lambda: self.assertItemError(d.submit_ndjson(lines), "unknown_task", n, n + 1))

        def test_batch_too_large(self):
                d = self.daemon
                over = MAX_ITEMS + 1
                self.around(lambda: self.assertError(
                        d.request("POST", "/v1/batches", {"task": "noop", "items": [{}] * over}), 413,
                        "batch_too_large", "items over the cap"))
                self.around(lambda: self.assertError(
                        d.request("POST", "/v1/batches", {"jobs": [{"task": "noop"}] * over}), 413,
                        "batch_too_large", "jobs over the cap"))
                self.around(lambda: self.assertError(
                        d.submit_ndjson([b"{}\n" * 1000] * (over // 1000) + [b"{}\n" * (over % 1000)], "task=noop"),
                        413, "batch_too_large", "NDJSON over the cap"))
                b = d.submit_batch({"task": "noop", "items": [{}] * MAX_ITEMS})
                self.assertBatch(b, size=MAX_ITEMS)
                self.assertEqual(d.wait_batch(b["id"], timeout=30)["counts"]["succeeded"], MAX_ITEMS)

        def test_cancel_running_io_batch(self):
                d = self.daemon
                b = d.submit_batch({"task": "sleep", "timeout": 60, "items": [[30]] * 12})
                bid = b["id"]
                s = d.stream(bid)
                poll_until(lambda: d.batch(bid)["counts"]["running"] == 4, 10, "four items running")
                t0 = time.monotonic()
                r = d.request("POST", "/v1/batches/%s/cancel" % bid)
                self.assertEqual(r.status, 200, r)
                self.assertBatch(r.json, size=12)
                self.assertEqual(r.json["counts"]["pending"], 0, "cancel answered before every pending item ended")
                self.assertGreaterEqual(r.json["counts"]["cancelled"], 8)
                got = s.read_all_json(timeout=10)
                s.close()
                self.assertLess(time.monotonic() - t0, 5.0, "the stream did not end soon after the cancel")
                self.assertEqual(sorted(j["index"] for j, _, _ in got), list(range(12)))
                for j, _, _ in got:
                        self.assertEqual(j["state"], "cancelled", j)
                        self.assertEqual(j["error"]["type"], "cancelled", j)
                b = d.batch(bid)
                self.assertBatch(b, size=12, done=True)
                self.assertEqual(b["counts"]["cancelled"], 12)
                self.assertError(d.request("POST", "/v1/batches/%s/cancel" % bid), 409, "already_finished",
                                 "cancel a done batch")
                self.assertEqual(d.batch(bid), b, "a refused cancel changed the batch")

        def test_cancel_racing_delete(self):
                # Cancels and deletes of one running batch at once: a cancel
                # that finds the batch deleted by the time its write lands
                # answers 404, never 5xx.
                d = self.daemon
                allowed = {"POST": (200, 404, 409), "DELETE": (204, 404, 409)}
                for _ in range(5):
                        bid = d.submit_batch({"task": "sleep", "timeout": 60, "items": [[30]] * 6})["id"]
                        calls = [("POST", "/v1/batches/%s/cancel" % bid), ("DELETE", "/v1/batches/%s" % bid)] * 4
                        got = [None] * len(calls)

                        def call(i):
                                c = d.new_client()
                                try:
                                        got[i] = c.request(*calls[i])
                                finally:
                                        c.close()

                        threads = [threading.Thread(target=call, args=(i,)) for i in range(len(calls))]
                        for t in threads:
                                t.start()
                        for t in threads:
                                t.join(30)
                        for (method, _), r in zip(calls, got):
                                self.assertIn(r.status, allowed[method], "%s: %r" % (method, r))
                        r = d.request("DELETE", "/v1/batches/%s" % bid)
                        self.assertIn(r.status, (204, 404), r)
                self.assertTrue(d.running())

        def test_cancel_running_cpu_batch(self):
                d = self.daemon
                b = d.submit_batch({"task": "sqrt_sum", "timeout": 120, "items": [[3_000_000_000]] * 4})
                bid = b["id"]
                poll_until(lambda: d.batch(bid)["counts"]["running"] == 2, 10, "two cpu items running")
                workers = d.cpu_pids()
                t0 = time.monotonic()
                r = d.request("POST", "/v1/batches/%s/cancel" % bid)
                self.assertEqual(r.status, 200, r)
                self.assertEqual(r.json["counts"]["pending"], 0)
                b = d.wait_batch(bid, timeout=5)
                self.assertLess(time.monotonic() - t0, 5.0)
                self.assertEqual(b["counts"]["cancelled"], 4, b)
                poll_until(lambda: not any(proc_alive(p) for p in workers), 5, "the cancelled workers to be killed")
                self.assertEqual(d.wait(d.submit({"task": "sqrt_sum", "args": [1000]})["id"])["state"], "succeeded")

        def test_delete(self):
                d = self.daemon
                b = d.submit_batch({"task": "sleep", "timeout": 60, "items": [[30], [0]]})
                bid = b["id"]
                poll_until(lambda: d.batch(bid)["counts"]["running"] == 1, 10, "item 0 running")
                self.assertError(d.request("DELETE", "/v1/batches/%s" % bid), 409, "not_finished", "DELETE running")
                self.assertFalse(d.batch(bid)["done"])
                self.assertEqual(d.request("POST", "/v1/batches/%s/cancel" % bid).status, 200)
                d.wait_batch(bid)
                jobs = d.batch_jobs(bid)
                self.assertEqual(len(jobs), 2)
                r = d.request("DELETE", "/v1/batches/%s" % bid)
                self.assertEqual(r.status, 204, r)
                self.assertEqual(r.body, b"")
                for method, path in (("GET", "/v1/batches/%s" % bid), ("DELETE", "/v1/batches/%s" % bid),
                                     ("POST", "/v1/batches/%s/cancel" % bid), ("GET", "/v1/batches/%s/results" % bid),
                                     ("GET", "/v1/jobs/%s" % jobs[0]["id"]), ("GET", "/v1/jobs/%s" % jobs[1]["id"])):
                        self.assertError(d.request(method, path), 404, "not_found", "%s %s after DELETE" % (method, path))
                self.assertEqual(d.batch_jobs(bid), [])

        def test_unknown_batch(self):
                d = self.daemon
                for method, path in (("GET", "/v1/batches/987654321"), ("POST", "/v1/batches/987654321/cancel"),
                                     ("DELETE", "/v1/batches/987654321"), ("GET", "/v1/batches/987654321/results"),
                                     ("GET", "/v1/batches/abc"), ("GET", "/v1/batches/0")):
                        self.assertError(d.request(method, path), 404, "not_found", "%s %s" % (method, path))

        def test_bad_requests(self):
                d = self.daemon
                nested = []
                for _ in range(100):
                        nested = [nested]
                deep = {"task": "noop", "items": [{"a": nested}]}
                bad = [
                        ("not JSON", b'{"task":', 400, "invalid_json"),
                        ("an array", [], 400, None),
                        ("a number", 5, 400, None),
                        ("empty object", {}, 400, None),
                        ("items and jobs", {"task": "noop", "items": [], "jobs": []}, 400, None),
                        ("items an object", {"task": "noop", "items": {"a": 1}}, 400, None),
                        ("items a string", {"task": "noop", "items": "x"}, 400, None),
                        ("jobs an object", {"jobs": {"task": "noop"}}, 400, None),
                        ("items without task", {"items": [{}]}, 400, None),
                        ("unknown field", {"task": "noop", "items": [], "bogus": 1}, 400, "unknown_field"),
                        ("key at the top", {"task": "noop", "key": "k", "items": []}, 400, "unknown_field"),
                        ("task a number", {"task": 5, "items": []}, 400, None),
                        ("unknown task", {"task": "slep", "items": [{}]}, 400, "unknown_task"),
                        ("kind gpu", {"task": "noop", "kind": "gpu", "items": []}, 400, "invalid_kind"),
                        ("priority a string", {"task": "noop", "priority": "high", "items": []}, 400, None),
                        ("priority out of range", {"task": "noop", "priority": 5000, "items": []}, 400, None),
                        ("priority fraction", {"task": "noop", "priority": 1.5, "items": []}, 400, None),
                        ("timeout negative", {"task": "noop", "timeout": -1, "items": []}, 400, None),
                        ("timeout zero", {"task": "noop", "timeout": 0, "items": []}, 400, None),
                        ("timeout a string", {"task": "noop", "timeout": "5", "items": []}, 400, None),
                        ("max_attempts zero", {"task": "noop", "max_attempts": 0, "items": []}, 400, None),
                        ("item null", {"task": "noop", "items": [None]}, 400, None),
                        ("deep item", deep, 400, "too_deep"),
                ]
                counts = d.job_counts()
                for what, body, status, code in bad:
                        with self.subTest(what):
                                if isinstance(body, bytes):
                                        r = d.request("POST", "/v1/batches", raw=body)
                                else:
                                        r = d.request("POST", "/v1/batches", body)
                                self.assertError(r, status, code, what)
                queries = [("priority text", "task=noop&priority=abc"), ("timeout negative", "task=noop&timeout=-1"),
                           ("max_attempts zero", "task=noop&max_attempts=0"), ("kind gpu", "task=noop&kind=gpu"),
                           ("unknown task", "task=slep"), ("task not UTF-8", "task=%FF"),
                           ("limits cut UTF-8", "task=noop&limits=%C3"), ("task twice", "task=noop&task=sleep"),
                           ("base_url with NUL", "format=openai&base_url=http://127.0.0.1:9%00.example")]
                for what, q in queries:
                        with self.subTest("NDJSON " + what):
                                self.assertError(d.submit_ndjson([b'{"args":{}}\n'], q), 400, None, "?" + q)
                with self.subTest("NDJSON array line"):
                        self.assertItemError(d.submit_ndjson([b'{"task":"noop"}\n[1]\n']), None, 1, 2)
                with self.subTest("NDJSON priority line"):
                        self.assertItemError(d.submit_ndjson([b'{"task":"noop","priority":2}\n']), None, 0, 1)
                with self.subTest("text/plain"):
                        r = d.request("POST", "/v1/batches", raw=b'{"task":"noop","items":[]}',
                                      headers={"Content-Type": "text/plain"})
                        self.assertError(r, 415, "unsupported_media_type", "text/plain batch")
                bid = d.submit_batch({"task": "noop", "items": [{}]})["id"]
                d.wait_batch(bid)
                counts["succeeded"] += 1
                for what, method, path, body, status in (
                                ("PUT batches", "PUT", "/v1/batches", {}, 405),
                                ("DELETE batches", "DELETE", "/v1/batches", None, 405),
                                ("POST a batch", "POST", "/v1/batches/%s" % bid, {}, 405),
                                ("GET cancel", "GET", "/v1/batches/%s/cancel" % bid, None, 405),
                                ("body on cancel", "POST", "/v1/batches/%s/cancel" % bid, {"x": 1}, 413),
                                ("trailing path", "GET", "/v1/batches/%s/x" % bid, None, 404)):
                        with self.subTest(what):
                                r = d.request(method, path, body)
                                self.assertError(r, status, None, what)
                                if status == 405:
                                        self.assertTrue(r.header("allow"), "405 without Allow: %s" % what)
                self.assertEqual(d.job_counts(), counts, "bad requests changed the job counts")
                self.assertEqual(d.request("GET", "/healthz").status, 200)


def unsealed(db_path):
        """The store's unsealed batches and their jobs: an upload under way,
        or what a refused one left behind."""
        db = sqlite3.connect(db_path, isolation_level=None, timeout=5)
        try:
                return db.execute("SELECT (SELECT count(*) FROM batches WHERE sealed = 0), "
                                  "(SELECT count(*) FROM jobs WHERE batch IN "
                                  " (SELECT id FROM batches WHERE sealed = 0))").fetchone()
        finally:
                db.close()


def noop_lines(n, per_piece=2000):
        """n noop items as NDJSON, per_piece lines to a chunk of the body."""
        for i in range(0, n, per_piece):
                yield b"".join(b'{"args":{"i":%d}}\n' % k for k in range(i, min(n, i + per_piece)))


class TestManyChunks(BatchChecks, DaemonTestCase):
        """Batches of several chunks, where a chunk is parsed while the one
        before it is being stored: a failure in one chunk while another is
        in flight, and a client gone between them, leave nothing."""
        # A client that closes while its connection is suspended may be
        # noticed only at the connection timeout (MHD drops the socket's
        # events meanwhile): a short one bounds the test.
        DAEMON_ARGS = {"io_threads": 2, "cpu_workers": 1,
                       "args": ("--max-batch-items", str(4 * CHUNK), "--connection-timeout", "2")}

        def setUp(self):
                self.assertIdle()

        def tearDown(self):
                self.assertEqual(unsealed(self.daemon.db), (0, 0), "an unsealed batch stayed")
                self.assertHealthy()

        def assertDeleted(self, bid, jobs):
                """DELETE of a batch of several chunks: gone for clients at
                the 204, gone from the file too (it is deleted a chunk per
                transaction)."""
                d = self.daemon
                counts = d.job_counts()
                r = d.request("DELETE", "/v1/batches/%s" % bid)
                self.assertEqual(r.status, 204, r)
                for path in ("/v1/batches/%s" % bid, "/v1/jobs/%s" % jobs[0]["id"], "/v1/jobs/%s" % jobs[-1]["id"]):
                        self.assertError(d.request("GET", path), 404, "not_found", "GET %s after DELETE" % path)
                self.assertEqual(d.batch_jobs(bid), [])
                counts["succeeded"] -= len(jobs)
                self.assertEqual(d.job_counts(), counts)
                db = sqlite3.connect(d.db, isolation_level=None, timeout=5)
                try:
                        left = db.execute("SELECT (SELECT count(*) FROM batches WHERE id = ?), "
                                          "(SELECT count(*) FROM jobs WHERE batch = ?)", (int(bid), int(bid))).fetchone()
                finally:
                        db.close()
                self.assertEqual(left, (0, 0), "the deleted batch's row and jobs left in the store")

        def test_ndjson_and_items(self):
                d = self.daemon
                n = 3 * CHUNK + 123
                r = d.submit_ndjson(noop_lines(n), "task=noop")
                self.assertEqual(r.status, 202, r)
                self.assertBatch(r.json, size=n)
                b = d.wait_batch(r.json["id"], timeout=60)
                self.assertEqual(b["counts"]["succeeded"], n)
                jobs = d.batch_jobs(b["id"])
                self.assertEqual([j["index"] for j in jobs], list(range(n)))
                self.assertEqual([j["result"]["i"] for j in jobs], list(range(n)))
                self.assertDeleted(b["id"], jobs)
                n = 2 * CHUNK + 1
                b = d.submit_batch({"task": "noop", "items": [{"i": i} for i in range(n)]})
                self.assertBatch(b, size=n)
                self.assertEqual(d.wait_batch(b["id"], timeout=60)["counts"]["succeeded"], n)

        def test_bad_item_while_a_chunk_is_stored(self):
                d = self.daemon
                bad = b'{"task":"slep"}\n'
                # The first item of the second chunk (the first waits for
                # OPEN), and one deep in the third (the second is in flight).
                for index in (CHUNK, 2 * CHUNK + 777):
                        with self.subTest(index=index):
                                body = list(noop_lines(index)) + [bad] + list(noop_lines(500))
                                self.around(lambda: self.assertItemError(
                                        d.submit_ndjson(body, "task=noop"), "unknown_task", index, index + 1))
                items = [{}] * (CHUNK + 5) + [5] + [{}] * 10
                self.around(lambda: self.assertItemError(
                        d.request("POST", "/v1/batches", {"task": "noop", "items": items}), None, CHUNK + 5))

        def test_client_gone_while_a_chunk_is_stored(self):
                d = self.daemon
                counts = d.job_counts()
                sock = socket.create_connection((harness.HOST, d.port), timeout=30)
                try:
                        sock.sendall(b"POST /v1/batches?task=noop HTTP/1.1\r\nHost: futured\r\n"
                                     b"Content-Type: application/x-ndjson\r\n"
                                     b"Transfer-Encoding: chunked\r\n\r\n")
                        for piece in noop_lines(2 * CHUNK + 5000):
                                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
                        # The first chunk is stored; the second follows it
                        # while the third is being filled.
                        poll_until(lambda: unsealed(d.db)[1] >= CHUNK, 30, "the first chunk stored")
                finally:
                        sock.close()
                poll_until(lambda: unsealed(d.db) == (0, 0), 30, "the abandoned upload's batch gone")
                self.assertEqual(d.job_counts(), counts)
                b = d.submit_batch({"task": "noop", "items": [{}] * 3})
                self.assertEqual(d.wait_batch(b["id"])["counts"]["succeeded"], 3)


class TestRetention(BatchChecks, unittest.TestCase):
        def test_finished_purged_unfinished_kept(self):
                d = Daemon(io_threads=1, cpu_workers=1, args=("--retention", "1")).start()
                try:
                        blocker = d.submit({"task": "sleep", "args": [30], "timeout": 60})
                        d.wait_state(blocker["id"], "running")
                        pending = d.submit({"task": "noop", "tag": "behind the blocker"})
                        done = d.wait(d.submit({"task": "noop", "kind": "cpu"})["id"])
                        b = d.submit_batch({"task": "noop", "kind": "cpu", "items": [{}, {}]})
                        b = d.wait_batch(b["id"])
                        bjobs = d.batch_jobs(b["id"])
                        gone = lambda path: d.request("GET", path).status == 404  # noqa: E731
                        poll_until(lambda: gone("/v1/jobs/%s" % done["id"]), 10, "the finished job to be purged")
                        poll_until(lambda: gone("/v1/batches/%s" % b["id"]), 10, "the done batch to be purged")
                        for j in bjobs:
                                poll_until(lambda: gone("/v1/jobs/%s" % j["id"]), 10, "the batch's jobs to be purged")
                        # Older than the retention, yet not finished: kept.
                        self.assertGreater(time.time() - parse_time(d.job(blocker["id"])["created_at"]), 1.0)
                        self.assertEqual(d.job(blocker["id"])["state"], "running")
                        self.assertEqual(d.job(pending["id"])["state"], "pending")
                        self.assertIn(d.request("POST", "/v1/jobs/%s/cancel" % blocker["id"]).status, (200, 202))
                        poll_until(lambda: gone("/v1/jobs/%s" % blocker["id"]), 10, "the cancelled blocker purged")
                        poll_until(lambda: gone("/v1/jobs/%s" % pending["id"]), 10, "the noop behind it purged")
                        self.assertEqual(d.request("GET", "/healthz").status, 200)
                finally:
                        d.stop()


if __name__ == "__main__":
        harness.main()
