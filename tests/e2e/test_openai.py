"""OpenAI batch files end to end against the stand-in API (fakeapi.py):
POST /v1/batches?format=openai turns each line of a JSONL input file into
an http job, and GET /v1/batches/{id}/results?format=openai gives the
OpenAI output format back: every custom_id once, responses as the server
answered (non-2xx included), an error for a request that got no answer,
file order with order=submission. Duplicate custom_ids, bad lines and a
missing base URL are 400s that store nothing."""

import json
import random

import harness
from test_http import FakeAPITestCase

MODEL = "gpt-test"


def line(custom_id, content="hi", model=MODEL, url="/v1/chat/completions", **extra):
        """One input line as a dict."""
        d = {"custom_id": custom_id, "method": "POST", "url": url,
             "body": {"model": model, "messages": [{"role": "user", "content": content}]}}
        d.update(extra)
        return d


def jsonl(lines, per_chunk=50):
        """The file as chunks of bytes: the daemon parses it as it arrives."""
        text = [(json.dumps(x) if isinstance(x, dict) else x) + "\n" for x in lines]
        for i in range(0, len(text), per_chunk):
                yield "".join(text[i:i + per_chunk]).encode()


class OpenAIBatchTest(FakeAPITestCase):
        ALLOW = "/v1/"
        EXTRA_ARGS = ("--retry-max", "3")

        def setUp(self):
                self.assertIdle()

        def tearDown(self):
                self.assertHealthy()

        def post(self, lines, query=None, per_chunk=50):
                q = "format=openai&base_url=" + self.api.base if query is None else query
                return self.daemon.submit_ndjson(jsonl(lines, per_chunk), q)

        def run_file(self, lines, query=None, timeout=60.0):
                r = self.post(lines, query)
                self.assertEqual(r.status, 202, r)
                self.assertEqual(r.json["size"], len(lines), r.json)
                return self.daemon.wait_batch(r.json["id"], timeout=timeout)["id"]

        def output(self, bid, query="format=openai"):
                s = self.daemon.stream(bid, query)
                self.assertEqual(s.status, 200, s)
                self.assertEqual(s.header("content-type"), "application/x-ndjson")
                return [x[0] for x in s.read_all_json(timeout=30)]

        def assertRefused(self, r, code, line_no, *names):
                """A 400 with code naming line_no (and every string of
                names) that stored nothing."""
                self.assertError(r, 400, code, "line %s" % line_no)
                err = r.json["error"]
                if line_no is not None:
                        self.assertEqual(err.get("line"), line_no, err)
                        self.assertRegex(err["message"], r"\bline %d\b" % line_no, err)
                for n in names:
                        self.assertIn(n, err["message"], err)

        def test_round_trip(self):
                """500 lines: every custom_id once, 200s echo their prompt,
                the 400s keep their status and body, the hung-up request
                has an error and no response."""
                n = 500
                bad = {17: "status-400", 211: "status-400", 333: "status-400", 404: "close"}
                lines = [line("req-%d" % i, "prompt %d" % i, bad.get(i, MODEL)) for i in range(n)]
                bid = self.run_file(lines, "format=openai&base_url=%s&max_attempts=2" % self.api.base)
                out = self.output(bid)
                self.assertEqual(len(out), n)
                self.assertEqual(sorted(o["custom_id"] for o in out), sorted(x["custom_id"] for x in lines))
                jobs = {j["id"]: j for j in self.daemon.batch_jobs(bid)}
                request_ids = set()
                for o in out:
                        self.assertEqual(list(o), ["id", "custom_id", "response", "error"], o)
                        i = int(o["custom_id"].split("-")[1])
                        self.assertTrue(o["id"].startswith("batch_req_"), o)
                        job = jobs[o["id"][len("batch_req_"):]]
                        self.assertEqual(job["tag"], {"custom_id": o["custom_id"]})
                        self.assertEqual(job["index"], i)
                        self.assertEqual(job["args"]["url"], self.api.base + "/v1/chat/completions")
                        self.assertEqual(job["args"]["json"], lines[i]["body"])
                        resp = o["response"]
                        if bad.get(i) == "close":
                                self.assertIsNone(resp, o)
                                self.assertEqual(o["error"]["code"], "http_error", o)
                                self.assertTrue(o["error"]["message"], o)
                                continue
                        self.assertIsNone(o["error"], o)
                        if i in bad:
                                self.assertEqual(resp["status_code"], 400, o)
                                self.assertEqual(resp["body"]["error"]["message"], "status 400", o)
                                self.assertEqual(resp["request_id"], "", o)
                                continue
                        self.assertEqual(resp["status_code"], 200, o)
                        self.assertEqual(resp["body"]["object"], "chat.completion", o)
                        self.assertEqual(resp["body"]["model"], MODEL, o)
                        self.assertEqual(resp["body"]["choices"][0]["message"]["content"], "echo: prompt %d" % i)
                        self.assertTrue(resp["request_id"].startswith("req_"), o)
                        request_ids.add(resp["request_id"])
                self.assertEqual(len(request_ids), n - len(bad), "request ids are not the server's")
                self.assertEqual(self.daemon.batch(bid)["counts"]["failed"], len(bad))

        def test_deeply_nested_answers(self):
                """An answer nested as deep as a JSON parser goes is kept as
                text, so that the stored result and the output line that
                wraps it still parse; a shallower one stays JSON."""
                depths = (10, 500, 1025, 2048)
                lines = [line("d%d" % n, "x", "deep-%d" % n) for n in depths]
                bid = self.run_file(lines)
                out = {o["custom_id"]: o for o in self.output(bid)}
                jobs = {j["tag"]["custom_id"]: j for j in self.daemon.batch_jobs(bid)}
                for n in depths:
                        o, j = out["d%d" % n], jobs["d%d" % n]
                        self.assertEqual(j["state"], "succeeded", j)
                        self.assertIsNone(o["error"], o)
                        self.assertEqual(o["response"]["status_code"], 200, o)
                        body = o["response"]["body"]
                        if n <= 1024:
                                self.assertIn("json", j["result"])
                                self.assertIsInstance(body, list)
                        else:
                                self.assertNotIn("json", j["result"])
                                self.assertEqual(j["result"]["body"], "[" * n + "]" * n)
                                self.assertEqual(body, "[" * n + "]" * n)

        def test_submission_order_and_sse(self):
                ids = ["c%03d" % i for i in range(60)]
                random.Random(4).shuffle(ids)
                bid = self.run_file([line(c, c) for c in ids])
                out = self.output(bid, "format=openai&order=submission")
                self.assertEqual([o["custom_id"] for o in out], ids)
                for o in out:
                        self.assertEqual(o["response"]["body"]["choices"][0]["message"]["content"],
                                         "echo: " + o["custom_id"])
                # Resuming after a cursor, and SSE: the same lines.
                s = self.daemon.stream(bid, "format=openai&order=submission", sse=True)
                events = s.read_all_events(timeout=30)
                results = [e for e in events if e["event"] == "result"]
                self.assertEqual([e["event"] for e in events][-1], "done")
                self.assertEqual([json.loads(e["data"]) for e in results], out)
                cut = results[29]["id"]
                rest = self.output(bid, "format=openai&order=submission&after=%s" % cut)
                self.assertEqual(rest, out[30:])

        def test_duplicate_custom_id(self):
                d = self.daemon
                for what, lines, first, dup in (
                                ("small", [line("a%d" % i) for i in range(10)], 3, 7),
                                # past the first stored chunk: it is taken back
                                ("large", [line("b%d" % i) for i in range(5000)], 2, 4500)):
                        with self.subTest(what):
                                lines[dup - 1]["custom_id"] = lines[first - 1]["custom_id"]
                                counts = d.job_counts()
                                r = self.post(lines, per_chunk=500)
                                self.assertRefused(r, "duplicate_custom_id", dup, "line %d" % first,
                                                   lines[first - 1]["custom_id"])
                                self.assertEqual(d.job_counts(), counts, "a refused file stored jobs")

        def test_bad_lines(self):
                d = self.daemon
                good = [line("g%d" % i) for i in range(3)]
                no_id = line("x")
                del no_id["custom_id"]
                cases = [
                        ("missing custom_id", no_id, "invalid_request", "custom_id"),
                        ("empty custom_id", line(""), "invalid_request", "custom_id"),
                        ("long custom_id", line("x" * 257), "invalid_request", "custom_id"),
                        ("number custom_id", line(7), "invalid_request", "custom_id"),
                        ("absolute url", line("x", url="https://evil.example/v1/chat/completions"),
                         "invalid_request", "url"),
                        ("relative url", line("x", url="v1/chat/completions"), "invalid_request", "url"),
                        ("url with a space", line("x", url="/v1/chat completions"), "invalid_request", "url"),
                        ("outside the allowlist", line("x", url="/v2/chat/completions"), "invalid_args",
                         "allowlist"),
                        ("bad method", line("x", method="BREW"), "invalid_args", "method"),
                        ("body not an object", line("x", body=[1, 2]), "invalid_request", "body"),
                        ("unknown field", line("x", header={"a": "b"}), "unknown_field", "header"),
                        ("bad JSON", '{"custom_id": "x", "url": ', "invalid_json", "JSON"),
                        ("not an object", "[1, 2]", "invalid_request", "object"),
                ]
                counts = d.job_counts()
                for what, bad, code, word in cases:
                        with self.subTest(what):
                                r = self.post(good[:2] + [bad] + good[2:])
                                self.assertRefused(r, code, 3, word)
                self.assertEqual(d.job_counts(), counts, "refused files stored jobs")

        def test_bad_queries(self):
                d = self.daemon
                base = self.api.base
                other = "http://127.0.0.1:%d" % harness.free_port()
                cases = [
                        ("no base_url", "format=openai", 400, "base_url"),
                        ("empty base_url", "format=openai&base_url=", 400, "base_url"),
                        ("ftp base_url", "format=openai&base_url=ftp://127.0.0.1/", 400, "base_url"),
                        ("base_url with a query", "format=openai&base_url=%s/?a=1" % base, 400, "base_url"),
                        ("base_url without format", "task=http&base_url=" + base, 400, "format"),
                        ("unknown format", "format=anthropic&base_url=" + base, 400, "format"),
                        ("a task", "format=openai&task=sleep&base_url=" + base, 400, "task"),
                        ("a kind", "format=openai&kind=io&base_url=" + base, 400, "kind"),
                        ("bad timeout", "format=openai&timeout=-1&base_url=" + base, 400, "timeout"),
                ]
                counts = d.job_counts()
                for what, q, status, word in cases:
                        with self.subTest(what):
                                r = self.post([line("a")], q)
                                self.assertError(r, status, None, what)
                                self.assertIn(word, r.json["error"]["message"])
                with self.subTest("base_url outside the allowlist"):
                        r = self.post([line("a"), line("b")], "format=openai&base_url=" + other)
                        self.assertRefused(r, "invalid_args", 1, "allowlist")
                with self.subTest("JSON body"):
                        r = d.request("POST", "/v1/batches?format=openai&base_url=" + base, line("a"))
                        self.assertError(r, 415, "unsupported_media_type", "a JSON body")
                self.assertEqual(d.job_counts(), counts, "refused files stored jobs")

        def test_trailing_slash_and_defaults(self):
                """base_url's trailing slash is dropped; the query's timeout,
                max_attempts and priority reach every job."""
                q = "format=openai&base_url=%s/&timeout=7&max_attempts=3&priority=5" % self.api.base
                bid = self.run_file([line("t1"), line("t2")], q)
                b = self.daemon.batch(bid)
                self.assertEqual(b["priority"], 5)
                for j in self.daemon.batch_jobs(bid):
                        self.assertEqual(j["task"], "http")
                        self.assertEqual(j["args"]["url"], self.api.base + "/v1/chat/completions")
                        self.assertEqual(j["args"]["method"], "POST")
                        self.assertEqual(j["timeout"], 7)
                        self.assertEqual(j["max_attempts"], 3)

        def test_config_base_url(self):
                """[openai] base_url serves a file that names none; the
                query's still wins."""
                d = harness.Daemon(io_threads=4, args=("--base-url", self.api.base + "/"))
                try:
                        d.start()
                        r = d.submit_ndjson(jsonl([line("k1", "from config")]), "format=openai")
                        self.assertEqual(r.status, 202, r)
                        bid = d.wait_batch(r.json["id"], timeout=30)["id"]
                        out = [x[0] for x in d.stream(bid, "format=openai").read_all_json(timeout=30)]
                        self.assertEqual(out[0]["response"]["body"]["choices"][0]["message"]["content"],
                                         "echo: from config")
                        other = "http://127.0.0.1:%d" % harness.free_port()
                        r = d.submit_ndjson(jsonl([line("k2")]), "format=openai&max_attempts=1&base_url=" + other)
                        self.assertEqual(r.status, 202, r)
                        bid = d.wait_batch(r.json["id"], timeout=30)["id"]
                        out = [x[0] for x in d.stream(bid, "format=openai").read_all_json(timeout=30)]
                        self.assertEqual(d.batch_jobs(bid)[0]["args"]["url"], other + "/v1/chat/completions")
                        self.assertIsNone(out[0]["response"], out)
                        self.assertEqual(out[0]["error"]["code"], "http_error", out)
                finally:
                        d.stop()

        def test_results_of_other_batches(self):
                """format=openai renders any batch: a job of another task
                answers 200 with its result as the body; custom_id is the
                tag's, or null."""
                d = self.daemon
                bid = d.submit_batch({"jobs": [{"task": "noop", "args": {"x": 1}, "tag": {"custom_id": "n1"}},
                                               {"task": "noop", "args": {"x": 2}}]})["id"]
                d.wait_batch(bid)
                out = self.output(bid, "format=openai&order=submission")
                self.assertEqual([o["custom_id"] for o in out], ["n1", None])
                self.assertEqual([o["response"] for o in out],
                                 [{"status_code": 200, "request_id": "", "body": {"x": 1}},
                                  {"status_code": 200, "request_id": "", "body": {"x": 2}}])
                self.assertEqual([o["error"] for o in out], [None, None])
                s = d.stream(bid, "format=csv")
                self.assertError(s, 400, "invalid_request", "format=csv")


if __name__ == "__main__":
        harness.main()
