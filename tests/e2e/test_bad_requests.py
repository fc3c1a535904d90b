"""Hostile input: every bad request is a 4xx JSON error with a stable code,
and none of them stores anything or hurts the daemon."""

import json
import re
import select
import socket
import threading
import time

import harness
from harness import HOST, DaemonTestCase

MAX_BODY = 65536


def deep(depth):
        return "[" * depth + "]" * depth


def spec_with(raw_fragment):
        return ('{"task":"noop","tag":%s}' % raw_fragment).encode()


# (what, method, path, body bytes or object, expected status, expected codes)
BAD = [
        ("truncated JSON", "POST", "/v1/jobs", b'{"task": "noop",', 400, "invalid_json"),
        ("garbage", "POST", "/v1/jobs", b"task=noop", 400, "invalid_json"),
        ("empty body", "POST", "/v1/jobs", b"", 400, ("invalid_json", "invalid_request")),
        ("NaN literal", "POST", "/v1/jobs", b'{"task":"sleep","args":{"seconds":NaN}}', 400, "invalid_json"),
        ("trailing garbage", "POST", "/v1/jobs", b'{"task":"noop"} x', 400, "invalid_json"),
        ("invalid UTF-8", "POST", "/v1/jobs", b'{"task":"noop","tag":"\xff\xfe"}', 400, "invalid_json"),
        ("array spec", "POST", "/v1/jobs", [{"task": "noop"}], 400, "invalid_request"),
        ("string spec", "POST", "/v1/jobs", "noop", 400, "invalid_request"),
        ("no task", "POST", "/v1/jobs", {"args": {}}, 400, "invalid_request"),
        ("task not a string", "POST", "/v1/jobs", {"task": 5}, 400, "invalid_request"),
        ("timeout a string", "POST", "/v1/jobs", {"task": "noop", "timeout": "5"}, 400, "invalid_request"),
        ("priority a string", "POST", "/v1/jobs", {"task": "noop", "priority": "high"}, 400, "invalid_request"),
        ("priority fractional", "POST", "/v1/jobs", {"task": "noop", "priority": 1.5}, 400, "invalid_request"),
        ("max_attempts zero", "POST", "/v1/jobs", {"task": "noop", "max_attempts": 0}, 400, "invalid_request"),
        ("max_attempts a string", "POST", "/v1/jobs", {"task": "noop", "max_attempts": "2"}, 400,
         "invalid_request"),
        ("key a number", "POST", "/v1/jobs", {"task": "noop", "key": 7}, 400, "invalid_request"),
        ("kind a number", "POST", "/v1/jobs", {"task": "noop", "kind": 1}, 400, ("invalid_request", "invalid_kind")),
        ("args a string", "POST", "/v1/jobs", {"task": "noop", "args": "x"}, 400, ("invalid_request", "invalid_args")),
        ("args a number", "POST", "/v1/jobs", {"task": "sleep", "args": 1}, 400, ("invalid_request", "invalid_args")),
        ("unknown task", "POST", "/v1/jobs", {"task": "rm_rf"}, 400, "unknown_task"),
        ("unknown field", "POST", "/v1/jobs", {"task": "noop", "bogus": 1}, 400, "unknown_field"),
        ("unknown field, case", "POST", "/v1/jobs", {"Task": "noop"}, 400, ("unknown_field", "invalid_request")),
        ("negative timeout", "POST", "/v1/jobs", {"task": "noop", "timeout": -1}, 400, "invalid_request"),
        ("zero timeout", "POST", "/v1/jobs", {"task": "noop", "timeout": 0}, 400, "invalid_request"),
        ("timeout 1e308", "POST", "/v1/jobs", b'{"task":"noop","timeout":1e308}', 400, "invalid_request"),
        ("timeout 1e400", "POST", "/v1/jobs", b'{"task":"noop","timeout":1e400}', 400,
         ("invalid_request", "invalid_json")),
        ("huge priority", "POST", "/v1/jobs", b'{"task":"noop","priority":100000000000000000000000000000}', 400,
         ("invalid_request", "invalid_json")),
        ("priority past int", "POST", "/v1/jobs", {"task": "noop", "priority": 2 ** 40}, 400, "invalid_request"),
        ("huge max_attempts", "POST", "/v1/jobs", {"task": "noop", "max_attempts": 10 ** 12}, 400,
         "invalid_request"),
        ("sleep seconds a string", "POST", "/v1/jobs", {"task": "sleep", "args": {"seconds": "x"}}, 400,
         "invalid_args"),
        ("sleep negative", "POST", "/v1/jobs", {"task": "sleep", "args": {"seconds": -1}}, 400, "invalid_args"),
        ("sleep 1e308", "POST", "/v1/jobs", b'{"task":"sleep","args":{"seconds":1e308}}', 400, "invalid_args"),
        ("sleep no seconds", "POST", "/v1/jobs", {"task": "sleep", "args": {}}, 400, "invalid_args"),
        ("sleep extra arg", "POST", "/v1/jobs", {"task": "sleep", "args": {"seconds": 1, "x": 2}}, 400,
         "invalid_args"),
        ("sleep too many positional", "POST", "/v1/jobs", {"task": "sleep", "args": [0.1, 2]}, 400, "invalid_args"),
        ("sqrt_sum negative", "POST", "/v1/jobs", {"task": "sqrt_sum", "args": {"n": -5}}, 400, "invalid_args"),
        ("sqrt_sum fractional", "POST", "/v1/jobs", {"task": "sqrt_sum", "args": {"n": 2.5}}, 400, "invalid_args"),
        ("sqrt_sum 1e308", "POST", "/v1/jobs", b'{"task":"sqrt_sum","args":{"n":1e308}}', 400, "invalid_args"),
        ("sqrt_sum huge int", "POST", "/v1/jobs", b'{"task":"sqrt_sum","args":{"n":1000000000000000000000000}}', 400,
         ("invalid_args", "invalid_json")),
        ("sqrt_sum a string", "POST", "/v1/jobs", {"task": "sqrt_sum", "args": ["10"]}, 400, "invalid_args"),
        ("sleep as cpu", "POST", "/v1/jobs", {"task": "sleep", "kind": "cpu", "args": {"seconds": 1}}, 400,
         "invalid_kind"),
        ("sqrt_sum as io", "POST", "/v1/jobs", {"task": "sqrt_sum", "kind": "io", "args": {"n": 1}}, 400,
         "invalid_kind"),
        ("kind gpu", "POST", "/v1/jobs", {"task": "noop", "kind": "gpu"}, 400, "invalid_kind"),
        ("depth 100 in tag", "POST", "/v1/jobs", spec_with(deep(100)), 400, "too_deep"),
        ("depth 100 in args", "POST", "/v1/jobs", ('{"task":"noop","args":{"a":%s}}' % deep(99)).encode(), 400,
         "too_deep"),
        ("depth 20000", "POST", "/v1/jobs", spec_with(deep(20000)), 400, ("too_deep", "invalid_json")),
        ("wait negative", "GET", "/v1/jobs/1?wait=-1", None, 400, "invalid_request"),
        ("wait hex", "GET", "/v1/jobs/1?wait=0x10", None, 400, "invalid_request"),
        ("wait hex float", "GET", "/v1/jobs/1?wait=0x1p3", None, 400, "invalid_request"),
        ("wait leading space", "GET", "/v1/jobs/1?wait=%201", None, 400, "invalid_request"),
        ("wait exponent", "GET", "/v1/jobs/1?wait=1e1", None, 400, "invalid_request"),
        ("wait inf", "GET", "/v1/jobs/1?wait=inf", None, 400, "invalid_request"),
        ("wait bare point", "GET", "/v1/jobs/1?wait=1.", None, 400, "invalid_request"),
        ("wait no integer part", "GET", "/v1/jobs/1?wait=.5", None, 400, "invalid_request"),
        ("wait plus sign", "GET", "/v1/jobs/1?wait=%2B1", None, 400, "invalid_request"),
        ("timeout 1e-300", "POST", "/v1/jobs", b'{"task":"noop","timeout":1e-300}', 400, "invalid_request"),
        ("timeout under 1 ms", "POST", "/v1/jobs", {"task": "noop", "timeout": 0.0009}, 400, "invalid_request"),
        ("body on GET healthz", "GET", "/healthz", {"a": 1}, 413, "body_too_large"),
        ("body on GET stats", "GET", "/v1/stats", b"x", 413, "body_too_large"),
        ("body on cancel", "POST", "/v1/jobs/1/cancel", {}, 413, "body_too_large"),
        ("id zero", "GET", "/v1/jobs/0", None, 404, "not_found"),
        ("list limit zero", "GET", "/v1/jobs?limit=0", None, 400, "invalid_request"),
        ("list limit text", "GET", "/v1/jobs?limit=ten", None, 400, "invalid_request"),
        ("list bad state", "GET", "/v1/jobs?state=sleeping", None, 400, "invalid_request"),
        ("list bad cursor", "GET", "/v1/jobs?cursor=abc", None, 400, "invalid_request"),
        # A misspelt filter would otherwise list every job.
        ("list misspelt filter", "GET", "/v1/jobs?stat=failed", None, 400, "unknown_field"),
        ("query value not UTF-8", "GET", "/v1/jobs?task=%FF", None, 400, "invalid_request"),
        ("query value with NUL", "GET", "/v1/jobs?task=no%00op", None, 400, "invalid_request"),
        ("batch query not UTF-8", "POST", "/v1/batches?task=%C3", {"task": "noop", "items": [{}]}, 400,
         "invalid_request"),
        ("query key empty", "GET", "/v1/jobs?=failed", None, 400, "unknown_field"),
        ("list filter twice", "GET", "/v1/jobs?state=failed&state=pending", None, 400, "invalid_request"),
        ("wait twice", "GET", "/v1/jobs/1?wait=1&wait=2", None, 400, "invalid_request"),
        ("query on a job's GET", "GET", "/v1/jobs/1?limit=1", None, 400, "unknown_field"),
        ("query on submit", "POST", "/v1/jobs?priority=5", {"task": "noop"}, 400, "unknown_field"),
        ("query on cancel", "POST", "/v1/jobs/1/cancel?force=1", None, 400, "unknown_field"),
        ("query on healthz", "GET", "/healthz?verbose", None, 400, "unknown_field"),
        ("query on stats", "GET", "/v1/stats?x=1", None, 400, "unknown_field"),
        ("query on a JSON batch", "POST", "/v1/batches?priority=5", {"task": "noop", "items": [{}]}, 400,
         "invalid_request"),
        ("batch items in the query", "POST", "/v1/batches?items=3", {"task": "noop", "items": [{}]}, 400,
         "unknown_field"),
        ("results order twice", "GET", "/v1/batches/1/results?order=completion&order=submission", None, 400,
         "invalid_request"),
        ("PUT jobs", "PUT", "/v1/jobs", {"task": "noop"}, 405, "method_not_allowed"),
        ("DELETE jobs", "DELETE", "/v1/jobs", None, 405, "method_not_allowed"),
        ("PATCH a job", "PATCH", "/v1/jobs/1", {"task": "noop"}, 405, "method_not_allowed"),
        ("GET cancel", "GET", "/v1/jobs/1/cancel", None, 405, "method_not_allowed"),
        ("POST healthz", "POST", "/healthz", {}, 405, "method_not_allowed"),
        ("POST stats", "POST", "/v1/stats", {}, 405, "method_not_allowed"),
        ("DELETE tasks", "DELETE", "/v1/tasks", None, 405, "method_not_allowed"),
        ("unknown path", "GET", "/v1/nope", None, 404, "not_found"),
        ("root", "GET", "/", None, 404, "not_found"),
        ("v2", "POST", "/v2/jobs", {"task": "noop"}, 404, "not_found"),
        ("unknown id", "GET", "/v1/jobs/987654321", None, 404, "not_found"),
        ("id not a number", "GET", "/v1/jobs/abc", None, 404, "not_found"),
        ("id overflow", "GET", "/v1/jobs/99999999999999999999999999", None, 404, "not_found"),
        ("cancel unknown", "POST", "/v1/jobs/987654321/cancel", None, 404, "not_found"),
        ("delete unknown", "DELETE", "/v1/jobs/987654321", None, 404, "not_found"),
        ("trailing path", "GET", "/v1/jobs/1/results/x", None, 404, "not_found"),
]


def answer_complete(answer):
        """Whether answer holds a whole response: its head and the body its
        Content-Length announces."""
        head, sep, body = answer.partition(b"\r\n\r\n")
        if not sep:
                return False
        m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
        return m is None or len(body) >= int(m.group(1))


class TestBadRequests(DaemonTestCase):
        DAEMON_ARGS = {"io_threads": 2, "cpu_workers": 1, "args": ("--max-body", str(MAX_BODY))}

        def setUp(self):
                self.before = self.daemon.job_counts()

        def tearDown(self):
                d = self.daemon
                r = d.request("GET", "/healthz")
                self.assertEqual(r.status, 200, "healthz after bad requests: %r" % (r,))
                self.assertEqual(d.job_counts(), self.before, "a bad request stored a job")
                self.assertTrue(d.running())

        def test_table(self):
                d = self.daemon
                ids = [j["id"] for j in d.list_all()]
                for what, method, path, body, status, codes in BAD:
                        with self.subTest(what):
                                if isinstance(body, bytes):
                                        r = d.request(method, path, raw=body)
                                elif body is None:
                                        r = d.request(method, path)
                                else:
                                        r = d.request(method, path, body)
                                statuses = status if isinstance(status, tuple) else (status,)
                                self.assertIn(r.status, statuses, "%s %s (%s): got %r" % (method, path, what, r))
                                self.assertError(r, r.status, codes, "%s %s (%s)" % (method, path, what))
                                if r.status == 405:
                                        self.assertTrue(r.header("allow"), "405 without Allow: %s" % what)
                self.assertEqual([j["id"] for j in d.list_all()], ids, "bad requests left jobs behind")

        def test_error_bodies_are_utf8(self):
                # Client strings cut to fit a message, in the middle of a
                # two-byte character: the body must still be UTF-8 JSON.
                d = self.daemon
                cases = [
                        ("field name", ('{"%s\u00e9":1,"task":"noop"}' % ("a" * 63)).encode(), "unknown_field"),
                        ("task name", ('{"task":"%s\u00e9"}' % ("a" * 63)).encode(), "unknown_task"),
                        ("args key", ('{"task":"sleep","args":{"%s":1}}' % ("\u00e9" * 200)).encode(), "invalid_args"),
                ]
                for what, body, code in cases:
                        with self.subTest(what):
                                r = d.request("POST", "/v1/jobs", raw=body)
                                self.assertEqual(r.status, 400, r)
                                text = r.body.decode("utf-8")
                                err = json.loads(text)["error"]
                                self.assertEqual(err["code"], code, text)
                                self.assertNotIn("\ufffd\ufffd", err["message"], text)
                # Characters that fit are kept as they are.
                r = d.request("POST", "/v1/jobs", {"task": "caf\u00e9 \U0001f600"})
                self.assertError(r, 400, "unknown_task", "task name in UTF-8")
                self.assertIn("caf\u00e9 \U0001f600", r.json["error"]["message"])

        def test_query_empty_pieces(self):
                # What a client that joins arguments with "&" may send: the
                # empty pieces are not arguments.
                d = self.daemon
                for path in ("/v1/jobs?", "/v1/jobs?&limit=1", "/v1/jobs?limit=1&", "/v1/jobs?limit=1&&"):
                        with self.subTest(path):
                                r = d.request("GET", path)
                                self.assertEqual(r.status, 200, r)
                                self.assertLessEqual(len(r.json["jobs"]), 1 if "limit" in path else 100)
                # A JSON batch takes no query argument; "?&" has none.
                r = d.request("POST", "/v1/batches?&", {"task": "noop", "items": []})
                self.assertEqual(r.status, 202, r)

        def test_ids_are_canonical(self):
                d = self.daemon
                j = d.wait(d.submit({"task": "noop", "tag": "canonical"})["id"])
                self.before["succeeded"] += 1
                jid = j["id"]
                self.assertEqual(d.job(jid), j)
                escaped = "".join("%%%02X" % ord(c) for c in jid)
                for path in ("/v1/jobs/0%s" % jid, "/v1/jobs/00%s" % jid, "/v1/jobs/%s" % escaped,
                             "/v1/jobs/%s%%00" % jid, "/v1/jobs/%s%%00x" % jid, "/v1/jobs/%s%%2F" % jid,
                             "/v1/%%6Aobs/%s" % jid, "/v1/jobs/+%s" % jid):
                        with self.subTest(path):
                                self.assertError(d.request("GET", path), 404, "not_found", path)
                for method, path in (("POST", "/v1/jobs/0%s/cancel" % jid), ("DELETE", "/v1/jobs/%s%%00" % jid)):
                        with self.subTest(path):
                                self.assertError(d.request(method, path), 404, "not_found", path)
                self.assertEqual(d.job(jid), j, "a non-canonical path changed the job")

        def test_body_on_bodyless_route_content_length(self):
                # 1 MiB announced to GET /healthz: refused before it is read.
                head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1048576\r\n\r\n"
                t0 = time.monotonic()
                status, sent, answer = self.raw_exchange(head, [b" " * 65536] * 16)
                self.assertTrue(status.startswith(b"HTTP/1.1 413"), "got %r" % (answer[:300],))
                self.assertLess(time.monotonic() - t0, 5)
                self.assertIn(b"body_too_large", answer)

        def test_body_on_bodyless_route_chunked(self):
                head = b"GET /v1/stats HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                status, sent, answer = self.raw_exchange(head, [b"5\r\nhello\r\n", b"0\r\n\r\n"])
                self.assertTrue(status.startswith(b"HTTP/1.1 413"), "got %r" % (answer[:300],))
                self.assertIn(b"body_too_large", answer)

        def test_content_type(self):
                d = self.daemon
                body = json.dumps({"task": "noop"}).encode()
                for ctype in ("text/plain", "application/x-www-form-urlencoded", "application/xml"):
                        r = d.request("POST", "/v1/jobs", raw=body, headers={"Content-Type": ctype})
                        self.assertError(r, 415, "unsupported_media_type", "Content-Type %s" % ctype)

        def raw_exchange(self, head, chunks, read_timeout=10.0):
                """Sends head then chunks, stops sending once the server
                answers; returns (status line, bytes sent, whole answer)."""
                s = socket.create_connection((HOST, self.daemon.port), timeout=read_timeout)
                sent = 0
                try:
                        s.sendall(head)
                        for chunk in chunks:
                                r, _, _ = select.select([s], [], [], 0)
                                if r:
                                        break
                                try:
                                        s.sendall(chunk)
                                except (BrokenPipeError, ConnectionResetError):
                                        break
                                sent += len(chunk)
                        answer = b""
                        deadline = time.monotonic() + read_timeout
                        while not answer_complete(answer) and time.monotonic() < deadline:
                                try:
                                        data = s.recv(65536)
                                except ConnectionResetError:
                                        break
                                if not data:
                                        break
                                answer += data
                finally:
                        s.close()
                return answer.split(b"\r\n", 1)[0], sent, answer

        def test_body_too_large_content_length(self):
                # Announces 1 GiB, sends 256 KiB; the daemon must answer 413
                # without waiting for the rest.
                head = (b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                        b"Content-Length: 1073741824\r\n\r\n")
                t0 = time.monotonic()
                status, sent, answer = self.raw_exchange(head, [b" " * 65536] * 4)
                self.assertTrue(status.startswith(b"HTTP/1.1 413"), "got %r" % (answer[:300],))
                self.assertLess(time.monotonic() - t0, 5)
                body = answer.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in answer else b""
                if body:
                        self.assertIn(b"body_too_large", body)

        def test_body_too_large_exact_small(self):
                d = self.daemon
                pad = "x" * (MAX_BODY + 10)
                r = d.request("POST", "/v1/jobs", {"task": "noop", "tag": pad})
                self.assertError(r, 413, "body_too_large", "body of %d bytes" % (len(pad),))
                # Just under the limit is fine (JSON allows the trailing
                # blanks), and stored: count it.
                body = b'{"task":"noop"}'
                r = d.request("POST", "/v1/jobs", raw=body + b" " * (MAX_BODY - len(body) - 10))
                self.assertEqual(r.status, 202, r)
                self.assertEqual(d.wait(r.json["id"])["state"], "succeeded")
                self.before["succeeded"] += 1

        def test_body_too_large_chunked(self):
                piece = b" " * 16384
                chunk = b"%x\r\n%s\r\n" % (len(piece), piece)
                head = (b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                        b"Transfer-Encoding: chunked\r\n\r\n")
                # 4 MiB of chunks, then the last chunk.
                chunks = [b"%x\r\n{\"task\":\"noop\",\"tag\":\"\r\n" % 22] + [chunk] * 256 + [b"0\r\n\r\n"]
                status, sent, answer = self.raw_exchange(head, chunks)
                self.assertTrue(status.startswith(b"HTTP/1.1 413"), "got %r" % (answer[:300],))
                self.assertIn(b'"code":"body_too_large"', answer)

        def test_healthy_after_abuse(self):
                d = self.daemon
                # A client that sends half a request and vanishes.
                s = socket.create_connection((HOST, d.port))
                s.sendall(b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"ta")
                s.close()
                # Pipelined garbage.
                s = socket.create_connection((HOST, d.port), timeout=5)
                s.sendall(b"NOT HTTP AT ALL\r\n\r\n")
                try:
                        s.recv(4096)
                except OSError:
                        pass
                s.close()
                r = d.request("GET", "/healthz")
                self.assertEqual(r.status, 200, r)


class TestDroppedRequest(DaemonTestCase):
        DAEMON_ARGS = {"io_threads": 1, "cpu_workers": 1, "args": ("--connection-timeout", "2")}

        def test_query_past_the_connection_pool(self):
                # 600 arguments overflow the HTTP layer's 32 KiB pool before
                # futured sees the request: no answer comes, and once the
                # connection closes (the client's leaving is not always
                # noticed: the timeout closes it then), the request is freed
                # (a leak fails the sanitizer build's exit) and counted as
                # unanswered.
                d = self.daemon

                def unanswered():
                        text = d.request("GET", "/metrics").body.decode()
                        return sum(int(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                                   if line.startswith("futured_http_requests_total{")
                                   and 'code="0"' in line)

                before = unanswered()
                s = socket.create_connection((HOST, d.port), timeout=0.5)
                try:
                        s.sendall(b"GET /healthz?" + b"a=b&" * 600 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
                        with self.assertRaises(socket.timeout):
                                s.recv(100)
                finally:
                        s.close()
                harness.poll_until(lambda: unanswered() == before + 1, 10,
                                   "the dropped request to be counted")


class TestConcurrentCancel(DaemonTestCase):
        DAEMON_ARGS = {"io_threads": 2, "cpu_workers": 2}

        def cancel_all_at_once(self, spec, n=8):
                d = self.daemon
                j = d.submit(spec)
                d.wait_state(j["id"], "running")
                go = threading.Barrier(n)
                answers = [None] * n

                def cancel(i):
                        c = d.new_client()
                        try:
                                go.wait()
                                answers[i] = c.request("POST", "/v1/jobs/%s/cancel" % j["id"])
                        finally:
                                c.close()

                threads = [threading.Thread(target=cancel, args=(i,)) for i in range(n)]
                for t in threads:
                        t.start()
                for t in threads:
                        t.join(30)
                statuses = [r.status if r else None for r in answers]
                self.assertEqual(statuses.count(200), 1, "only the cancel that stopped the job gets 200: %r"
                                 % (statuses,))
                for r in answers:
                        if r.status == 409:
                                self.assertError(r, 409, "already_finished", "a later cancel")
                        else:
                                self.assertIn(r.status, (200, 202), answers)
                                self.assertEqual(r.json["id"], j["id"])
                self.assertEqual(d.wait(j["id"])["state"], "cancelled")

        def test_running_io(self):
                for _ in range(5):
                        self.cancel_all_at_once({"task": "sleep", "args": {"seconds": 30}, "timeout": 60})

        def test_running_cpu(self):
                for _ in range(3):
                        self.cancel_all_at_once({"task": "sqrt_sum", "args": {"n": 10 ** 10}, "timeout": 60})


class TestQueueFull(DaemonTestCase):
        DAEMON_ARGS = {"io_threads": 1, "cpu_workers": 1, "args": ("--max-pending", "2")}

        def test_429(self):
                d = self.daemon
                b = d.submit({"task": "sleep", "args": {"seconds": 30}, "timeout": 60})
                d.wait_state(b["id"], "running")
                ok = [d.submit({"task": "noop"}) for _ in range(2)]
                before = d.job_counts()
                r = d.request("POST", "/v1/jobs", {"task": "noop"})
                self.assertError(r, 429, "queue_full", "submission past max_pending")
                self.assertTrue(r.header("retry-after"), "429 without Retry-After")
                self.assertEqual(d.job_counts(), before, "a refused submission was stored")
                self.assertIn(d.request("POST", "/v1/jobs/%s/cancel" % b["id"]).status, (200, 202))
                for j in ok:
                        self.assertEqual(d.wait(j["id"])["state"], "succeeded")
                self.assertEqual(d.wait(d.submit({"task": "noop"})["id"])["state"], "succeeded")


if __name__ == "__main__":
        harness.main()
