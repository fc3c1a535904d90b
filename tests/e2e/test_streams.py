"""A batch's results streamed end to end: completion order and submission
order as the jobs finish, ?wait=0 and cursors, Server-Sent Events resumed
with Last-Event-ID (also across a daemon restart), a 20,000-line NDJSON
batch streamed to the end, 1,000 clients held at once while the daemon
answers others promptly, and bad stream requests."""

import json
import os
import selectors
import socket
import time
import unittest

import harness
from harness import Daemon, DaemonTestCase, ResponseReader, poll_until, sse_events

SLEEPS = (0.9, 0.1, 0.5)
CLIENTS = 1000


def sleep_items(seconds):
        return {"task": "sleep", "timeout": 60, "items": [{"seconds": s} for s in seconds]}


class StreamChecks:
        def assertResultJob(self, j, bid, state=None):
                for f in ("id", "index", "state", "result", "error", "seq", "batch", "finished_at"):
                        self.assertIn(f, j, "stream line lacks %r: %r" % (f, j))
                self.assertEqual(str(j["batch"]), str(bid), j)
                self.assertIsInstance(j["index"], int, j)
                self.assertIn(j["state"], harness.FINISHED, "an unfinished job on the stream: %r" % (j,))
                self.assertIsInstance(j["seq"], int, j)
                self.assertGreater(j["seq"], 0, j)
                harness.parse_time(j["finished_at"])
                if state is not None:
                        self.assertEqual(j["state"], state, j)

        def assertNdjsonHead(self, s):
                self.assertEqual(s.status, 200, s)
                self.assertTrue((s.header("content-type") or "").startswith("application/x-ndjson"),
                                "content-type %r" % s.header("content-type"))
                self.assertIn("chunked", (s.header("transfer-encoding") or "").lower())

        def assertSseHead(self, s):
                self.assertEqual(s.status, 200, s)
                self.assertTrue((s.header("content-type") or "").startswith("text/event-stream"),
                                "content-type %r" % s.header("content-type"))

        def results(self, events):
                """SSE events -> [(cursor, job)] of the result events, and the
                done event's batch (None if none), which must be last."""
                out, done = [], None
                for i, ev in enumerate(events):
                        if ev["event"] == "done":
                                self.assertEqual(i, len(events) - 1, "events after 'done': %r" % (events[i:],))
                                done = json.loads(ev["data"])
                                continue
                        self.assertEqual(ev["event"], "result", ev)
                        self.assertIsNotNone(ev["id"], "result event without id: %r" % (ev,))
                        out.append((ev["id"], json.loads(ev["data"])))
                return out, done

        def assertCompletionCursors(self, pairs, bid):
                """In completion order the cursor is the job's seq, growing."""
                seqs = []
                for cursor, j in pairs:
                        self.assertResultJob(j, bid)
                        self.assertEqual(cursor, str(j["seq"]), "event id is not the job's seq: %r" % (j,))
                        seqs.append(j["seq"])
                self.assertEqual(seqs, sorted(set(seqs)), "completion-order seqs not strictly growing")


class TestStreams(StreamChecks, DaemonTestCase):
        DAEMON_ARGS = {"io_threads": 4, "cpu_workers": 1, "args": ("--max-connections", "4096")}

        @classmethod
        def setUpClass(cls):
                # 1,000 client sockets here and as many in the daemon, which
                # inherits this limit.
                cls.nofile = harness.raise_nofile(4096)
                super().setUpClass()

        def setUp(self):
                self.assertIdle()

        def tearDown(self):
                self.assertHealthy()

        def test_completion_order(self):
                d = self.daemon
                t0 = time.monotonic()
                b = d.submit_batch(sleep_items(SLEEPS))
                s = d.stream(b["id"])
                self.assertNdjsonHead(s)
                got = s.read_all_json(timeout=10)
                ended = time.monotonic()
                s.close()
                self.assertEqual([j["index"] for j, _, _ in got], [1, 2, 0], "completion order: %r" % (got,))
                at = [m - t0 for _, m, _ in got]
                for j, _, _ in got:
                        self.assertResultJob(j, b["id"], "succeeded")
                        self.assertIsNone(j["error"])
                        self.assertAlmostEqual(j["result"]["slept"], SLEEPS[j["index"]], delta=0.05)
                seqs = [j["seq"] for j, _, _ in got]
                self.assertEqual(seqs, sorted(set(seqs)), "lines not in seq order")
                # The 0.1 s item's line comes long before the 0.9 s item ends.
                self.assertLess(at[0], 0.5, "first line after %.3f s (item sleeps 0.1 s)" % at[0])
                self.assertGreaterEqual(at[0], 0.09)
                self.assertGreaterEqual(at[1], 0.45)
                self.assertLess(at[1], 0.85, "second line after %.3f s (item sleeps 0.5 s)" % at[1])
                self.assertGreaterEqual(at[2], 0.85)
                self.assertLess(ended - got[2][1], 0.5, "the stream did not end once the batch was done")
                self.assertTrue(d.batch(b["id"])["done"])

        def test_submission_order(self):
                d = self.daemon
                t0 = time.monotonic()
                b = d.submit_batch(sleep_items(SLEEPS))
                s = d.stream(b["id"], "order=submission")
                self.assertNdjsonHead(s)
                got = s.read_all_json(timeout=10)
                s.close()
                self.assertEqual([j["index"] for j, _, _ in got], [0, 1, 2], "submission order: %r" % (got,))
                at = [m - t0 for _, m, _ in got]
                self.assertGreaterEqual(at[0], 0.85, "item 0 (0.9 s) streamed after %.3f s" % at[0])
                self.assertLess(at[0], 1.5)
                self.assertLess(at[2] - at[0], 0.2, "items 1 and 2 were finished but held back: %r" % (at,))
                for j, _, _ in got:
                        self.assertResultJob(j, b["id"], "succeeded")
                fin = [harness.parse_time(j["finished_at"]) for j, _, _ in got]
                self.assertLess(fin[1], fin[0])
                self.assertLess(fin[2], fin[0])

        def test_keepalive_after_silence(self):
                # Submission order holds every line behind item 0 (17 s);
                # the others end at 2, 5 and 8 s and wake the stream with
                # nothing to send. The keepalive still comes 15 s after
                # the last write, before item 0's line.
                d = self.daemon
                b = d.submit_batch(sleep_items([17, 2, 5, 8]))
                s = d.stream(b["id"], "order=submission")
                self.assertNdjsonHead(s)
                t0 = time.monotonic()
                line, at, _ = s.read_line(timeout=30)
                self.assertEqual(line, b"", "the first line is not a keepalive: %r" % (line,))
                self.assertGreaterEqual(at - t0, 14.0)
                self.assertLess(at - t0, 16.5)
                got = s.read_all_json(timeout=30)
                s.close()
                self.assertEqual([j["index"] for j, _, _ in got], [0, 1, 2, 3])

        def test_wait0_and_cursors(self):
                d = self.daemon
                b = d.submit_batch(sleep_items([0.01, 30, 0.01, 0.01]))
                bid = b["id"]
                poll_until(lambda: d.batch(bid)["counts"]["succeeded"] == 3, 10, "three short items to finish")

                t0 = time.monotonic()
                s = d.stream(bid, "wait=0")
                self.assertNdjsonHead(s)
                now = s.read_all_json(timeout=5)
                self.assertLess(time.monotonic() - t0, 1.0, "?wait=0 did not end at once")
                self.assertEqual(sorted(j["index"] for j, _, _ in now), [0, 2, 3])

                s = d.stream(bid, "order=submission&wait=0")
                sub = s.read_all_json(timeout=5)
                self.assertEqual([j["index"] for j, _, _ in sub], [0], "item 1 runs, so only item 0 may come")

                s = d.stream(bid, "wait=0", sse=True)
                self.assertSseHead(s)
                pairs, done = self.results(s.read_all_events(timeout=5))
                self.assertIsNone(done, "a 'done' event for a batch that is not done")
                self.assertEqual(sorted(j["index"] for _, j in pairs), [0, 2, 3])
                self.assertCompletionCursors(pairs, bid)

                # after=C: what follows the cursor, on a running batch.
                first = min(j["seq"] for j, _, _ in now)
                s = d.stream(bid, "wait=0&after=%d" % first)
                rest = s.read_all_json(timeout=5)
                self.assertEqual([j["id"] for j, _, _ in rest], [j["id"] for j, _, _ in now][1:])

                r = d.request("POST", "/v1/batches/%s/cancel" % bid)
                self.assertEqual(r.status, 200, r)
                d.wait_batch(bid)

                everything = d.stream(bid, "wait=0").read_all_json(timeout=5)
                self.assertEqual(len(everything), 4)
                self.assertEqual([j["state"] for j, _, _ in everything if j["index"] == 1], ["cancelled"])
                jobs = [j for j, _, _ in everything]
                for k in range(len(jobs)):
                        s = d.stream(bid, "after=%d" % jobs[k]["seq"])
                        self.assertEqual([j["id"] for j, _, _ in s.read_all_json(timeout=5)],
                                         [j["id"] for j in jobs[k + 1:]], "completion after=seq of line %d" % k)
                sub = [j for j, _, _ in d.stream(bid, "order=submission").read_all_json(timeout=5)]
                self.assertEqual([j["index"] for j in sub], [0, 1, 2, 3])
                for k in range(len(sub)):
                        s = d.stream(bid, "order=submission&after=%s" % sub[k]["id"])
                        self.assertEqual([j["index"] for j, _, _ in s.read_all_json(timeout=5)],
                                         list(range(k + 1, 4)), "submission after=id of item %d" % k)
                self.assertEqual(d.stream(bid, "after=0").read_all_json(timeout=5)[0][0]["id"], jobs[0]["id"])

                pairs, done = self.results(d.stream(bid, "wait=0", sse=True).read_all_events(timeout=5))
                self.assertEqual(len(pairs), 4)
                self.assertIsNotNone(done, "no 'done' event for a done batch")
                self.assertTrue(done["done"])
                self.assertEqual(done["counts"]["cancelled"], 1)
                self.assertEqual(done["counts"]["succeeded"], 3)

        def test_sse_resume_completion(self):
                d = self.daemon
                b = d.submit_batch(sleep_items([0.05] * 30))
                bid = b["id"]
                s = d.stream(bid, sse=True)
                self.assertSseHead(s)
                first = [s.read_event(timeout=10) for _ in range(10)]
                s.close()
                first_pairs, done = self.results(first)
                self.assertIsNone(done)
                self.assertFalse(d.batch(bid)["done"], "the batch was meant to be running at the cut")

                s = d.stream(bid, sse=True, headers={"Last-Event-ID": first_pairs[-1][0]})
                self.assertSseHead(s)
                rest_pairs, done = self.results(s.read_all_events(timeout=15))
                self.assertIsNotNone(done, "the resumed stream ended without a 'done' event")
                self.assertTrue(done["done"])
                self.assertEqual(done["size"], 30)
                self.assertEqual(done["counts"]["succeeded"], 30)
                every = first_pairs + rest_pairs
                self.assertCompletionCursors(every, bid)
                self.assertEqual(sorted(j["index"] for _, j in every), list(range(30)), "gap or duplicate")

                # The same cursor by ?after= on the done batch: the same events.
                again, done = self.results(d.stream(bid, "after=%s" % first_pairs[-1][0],
                                                    sse=True).read_all_events(timeout=10))
                self.assertEqual([c for c, _ in again], [c for c, _ in rest_pairs])
                self.assertIsNotNone(done)
                # After the last result: only the end.
                tail, done = self.results(d.stream(bid, sse=True, headers={"Last-Event-ID": every[-1][0]})
                                          .read_all_events(timeout=10))
                self.assertEqual(tail, [])
                self.assertIsNotNone(done)

        def test_sse_resume_submission(self):
                d = self.daemon
                b = d.submit_batch(sleep_items([0.3 - 0.01 * i for i in range(30)]))
                bid = b["id"]
                s = d.stream(bid, "order=submission", sse=True)
                first, done = self.results([s.read_event(timeout=10) for _ in range(10)])
                s.close()
                self.assertEqual([j["index"] for _, j in first], list(range(10)))
                for cursor, j in first:
                        self.assertEqual(cursor, str(j["id"]), "submission-order event id is not the job id")
                s = d.stream(bid, "order=submission", sse=True, headers={"Last-Event-ID": first[-1][0]})
                rest, done = self.results(s.read_all_events(timeout=15))
                self.assertIsNotNone(done)
                self.assertEqual([j["index"] for _, j in first + rest], list(range(30)), "gap or duplicate")
                for cursor, j in rest:
                        self.assertEqual(cursor, str(j["id"]))
                        self.assertResultJob(j, bid, "succeeded")

        def test_ndjson_20000_streamed_to_end(self):
                d = self.daemon
                n = 20000

                def body():
                        for start in range(0, n, 500):
                                yield b"".join(b'{"task":"noop","args":{"i":%d}}\n' % i
                                               for i in range(start, min(n, start + 500)))
                r = d.submit_ndjson(body())
                self.assertEqual(r.status, 202, r)
                b = r.json
                self.assertEqual(b["size"], n)
                self.assertTrue((r.header("location") or "").endswith("/v1/batches/%s" % b["id"]))
                s = d.stream(b["id"])
                self.assertNdjsonHead(s)
                got = s.read_all_json(timeout=60)
                s.close()
                self.assertEqual(len(got), n, "lines streamed")
                seen = [0] * n
                last = 0
                for j, _, _ in got:
                        self.assertEqual(j["state"], "succeeded", j)
                        self.assertEqual(j["result"], {"i": j["index"]}, j)
                        seen[j["index"]] += 1
                        self.assertGreater(j["seq"], last, "seq not growing")
                        last = j["seq"]
                self.assertEqual([i for i, c in enumerate(seen) if c != 1], [], "indices not seen exactly once")
                b = d.batch(b["id"])
                self.assertTrue(b["done"])
                self.assertEqual(b["counts"]["succeeded"], n)
                sub = d.stream(b["id"], "order=submission&wait=0").read_all_json(timeout=60)
                self.assertEqual([j["index"] for j, _, _ in sub], list(range(n)))

        def test_1000_clients_held(self):
                d = self.daemon
                self.assertGreaterEqual(self.nofile, CLIENTS + 200, "RLIMIT_NOFILE cannot be raised enough")
                b = d.submit_batch(sleep_items([30, 30]))
                bid = b["id"]
                jid = d.batch_jobs(bid)[0]["id"]
                ndjson = "GET /v1/batches/%s/results HTTP/1.1\r\nHost: x\r\n\r\n" % bid
                sse = ("GET /v1/batches/%s/results?order=submission HTTP/1.1\r\nHost: x\r\n"
                       "Accept: text/event-stream\r\n\r\n" % bid)
                poll = "GET /v1/jobs/%s?wait=60 HTTP/1.1\r\nHost: x\r\n\r\n" % jid
                kinds = ["ndjson"] * (CLIENTS // 2) + ["sse"] * (CLIENTS // 4)
                kinds += ["poll"] * (CLIENTS - len(kinds))
                req = {"ndjson": ndjson, "sse": sse, "poll": poll}
                sel = selectors.DefaultSelector()
                clients = []
                try:
                        for kind in kinds:
                                sock = socket.create_connection((harness.HOST, d.port), timeout=10)
                                sock.sendall(req[kind].encode())
                                sock.setblocking(False)
                                c = {"kind": kind, "sock": sock, "reader": ResponseReader(), "closed": False}
                                sel.register(sock, selectors.EVENT_READ, c)
                                clients.append(c)

                        def pump(seconds, until=None):
                                deadline = time.monotonic() + seconds
                                while time.monotonic() < deadline:
                                        if until is not None and until():
                                                return True
                                        for key, _ in sel.select(min(0.05, max(0, deadline - time.monotonic()))):
                                                c = key.data
                                                try:
                                                        data = c["sock"].recv(65536)
                                                except (BlockingIOError, InterruptedError):
                                                        continue
                                                except ConnectionResetError:
                                                        data = b""
                                                if not data:
                                                        c["closed"] = True
                                                        c["reader"].eof()
                                                        sel.unregister(c["sock"])
                                                        continue
                                                c["reader"].feed(data, time.monotonic(), time.time())
                                return until is not None and until()

                        pump(0.5)
                        # Held: every client connected, none answered in full.
                        t0 = time.monotonic()
                        ticks0 = harness.proc_cpu_ticks(d.pid)
                        worst = 0.0
                        for _ in range(10):
                                probe = harness.Client(d.port, timeout=5)
                                t = time.monotonic()
                                r = probe.request("GET", "/healthz")
                                worst = max(worst, time.monotonic() - t)
                                probe.close()
                                self.assertEqual(r.status, 200, r)
                                pump(0.1)
                        window = time.monotonic() - t0
                        cpu = (harness.proc_cpu_ticks(d.pid) - ticks0) / float(os.sysconf("SC_CLK_TCK"))
                        gone = [c["kind"] for c in clients if c["closed"] or c["reader"].ended]
                        self.assertEqual(gone, [], "clients answered or dropped while the batch ran")
                        # A server that spent a thread on each held client
                        # would not answer at all; the bound is loose for a
                        # sanitizer build on a busy two-core machine.
                        self.assertLess(worst, 1.0, "healthz took %.3f s with %d clients held" % (worst, CLIENTS))
                        self.assertLess(cpu / window, 0.3, "the daemon used %.0f%% CPU holding %d idle clients"
                                        % (100 * cpu / window, CLIENTS))
                        self.assertTrue(d.batch(bid)["counts"]["running"] >= 1)

                        r = d.request("POST", "/v1/batches/%s/cancel" % bid)
                        self.assertEqual(r.status, 200, r)
                        all_ended = pump(20, lambda: all(c["reader"].ended or c["closed"] for c in clients))
                        late = [c["kind"] for c in clients if not c["reader"].ended]
                        self.assertTrue(all_ended and not late, "%d clients not answered in full after the cancel: "
                                        "%r" % (len(late), sorted(set(late))))
                        for c in clients:
                                rd = c["reader"]
                                self.assertEqual(rd.status, 200, (c["kind"], rd.body()[:300]))
                                if c["kind"] == "ndjson":
                                        jobs = [json.loads(l[0]) for l in rd.lines if l[0].strip()]
                                        self.assertEqual(sorted(j["index"] for j in jobs), [0, 1])
                                        self.assertEqual({j["state"] for j in jobs}, {"cancelled"})
                                elif c["kind"] == "sse":
                                        pairs, done = self.results(sse_events(rd.lines))
                                        self.assertEqual([j["index"] for _, j in pairs], [0, 1])
                                        self.assertIsNotNone(done)
                                else:
                                        j = json.loads(rd.body())
                                        self.assertEqual((j["id"], j["state"]), (jid, "cancelled"))
                finally:
                        for c in clients:
                                c["sock"].close()
                        sel.close()

        def test_bad_stream_requests(self):
                d = self.daemon
                bid = d.submit_batch({"task": "noop", "items": [{}]})["id"]
                d.wait_batch(bid)
                before = d.job_counts()
                bad = [
                        ("order random", "GET", "/v1/batches/%s/results?order=random" % bid, 400),
                        ("order empty", "GET", "/v1/batches/%s/results?order=" % bid, 400),
                        ("order upper", "GET", "/v1/batches/%s/results?order=COMPLETION" % bid, 400),
                        ("after negative", "GET", "/v1/batches/%s/results?after=-1" % bid, 400),
                        ("after text", "GET", "/v1/batches/%s/results?after=abc" % bid, 400),
                        ("after fraction", "GET", "/v1/batches/%s/results?after=1.5" % bid, 400),
                        ("after huge", "GET", "/v1/batches/%s/results?after=99999999999999999999999" % bid, 400),
                        ("after empty", "GET", "/v1/batches/%s/results?after=" % bid, 400),
                        ("wait text", "GET", "/v1/batches/%s/results?wait=soon" % bid, 400),
                        ("wait negative", "GET", "/v1/batches/%s/results?wait=-1" % bid, 400),
                        ("unknown batch results", "GET", "/v1/batches/987654321/results", 404),
                        ("unknown batch", "GET", "/v1/batches/987654321", 404),
                        ("batch id text", "GET", "/v1/batches/abc", 404),
                        ("batch id overflow", "GET", "/v1/batches/99999999999999999999999999", 404),
                        ("batch id zero", "GET", "/v1/batches/0/results", 404),
                        ("trailing path", "GET", "/v1/batches/%s/results/x" % bid, 404),
                        ("POST results", "POST", "/v1/batches/%s/results" % bid, 405),
                        ("DELETE results", "DELETE", "/v1/batches/%s/results" % bid, 405),
                ]
                for what, method, path, status in bad:
                        with self.subTest(what):
                                self.assertError(d.request(method, path), status, None, "%s %s" % (method, path))
                for what, value in (("text", "abc"), ("negative", "-5"), ("huge", "99999999999999999999999"),
                                    ("fraction", "2.5")):
                        with self.subTest("Last-Event-ID " + what):
                                s = d.stream(bid, sse=True, headers={"Last-Event-ID": value})
                                self.assertError(s, 400, None, "Last-Event-ID: %s" % value)
                s = d.stream("987654321", sse=True)
                self.assertError(s, 404, "not_found", "SSE of an unknown batch")
                self.assertEqual(d.job_counts(), before)
                self.assertEqual(len(d.stream(bid).read_all_json(timeout=5)), 1, "the batch is still readable")


class TestRestartResume(StreamChecks, unittest.TestCase):
        def test_sse_resume_across_restart(self):
                d = Daemon(io_threads=4, cpu_workers=1, shutdown_grace=5).start()
                b = d.submit_batch(sleep_items([0.1] * 40))
                bid = b["id"]
                s = d.stream(bid, sse=True)
                first, done = self.results([s.read_event(timeout=10) for _ in range(10)])
                s.close()
                self.assertIsNone(done)
                d.stop()
                d.restart()
                s = d.stream(bid, sse=True, headers={"Last-Event-ID": first[-1][0]})
                self.assertSseHead(s)
                rest, done = self.results(s.read_all_events(timeout=20))
                self.assertIsNotNone(done, "no 'done' after the restart")
                self.assertTrue(done["done"])
                self.assertEqual(done["counts"]["succeeded"], 40, done)
                every = first + rest
                self.assertCompletionCursors(every, bid)
                self.assertEqual(sorted(j["index"] for _, j in every), list(range(40)), "gap or duplicate")
                again, _ = self.results(d.stream(bid, "after=%s" % first[-1][0], sse=True).read_all_events(timeout=10))
                self.assertEqual([c for c, _ in again], [c for c, _ in rest])
                # A cursor from before the restart, in the middle of the rest.
                mid = rest[len(rest) // 2][0]
                s = d.stream(bid, sse=True, headers={"Last-Event-ID": mid})
                tail, _ = self.results(s.read_all_events(timeout=10))
                self.assertEqual([c for c, _ in tail], [c for c, _ in rest[len(rest) // 2 + 1:]])
                d.stop()


if __name__ == "__main__":
        harness.main()
