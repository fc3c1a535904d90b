"""Operations: GET /metrics is strict Prometheus text (format 0.0.4) whose
counters move with the work done; bearer-token auth off and on; HTTPS with
a self-signed certificate, and start-up refusals of bad auth or TLS
settings."""

import http.client
import json
import math
import os
import re
import shutil
import socket
import ssl
import subprocess
import time
import unittest

import harness
from harness import HOST, Daemon, DaemonTestCase, poll_until

NAME_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
LABEL_NAME_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
TYPES = ("counter", "gauge", "histogram", "summary", "untyped")


def parse_value(s, line):
        if s in ("+Inf", "-Inf", "NaN"):
                return float(s.replace("Inf", "inf").replace("NaN", "nan"))
        if not re.match(r"-?[0-9]+(\.[0-9]*)?([eE][-+]?[0-9]+)?\Z", s):
                raise AssertionError("bad sample value %r in %r" % (s, line))
        return float(s)


def parse_labels(s, line):
        """The inside of {...}: name="value" pairs, comma separated, values
        with \\\\, \\" and \\n escapes only."""
        labels, i = {}, 0
        while i < len(s):
                m = LABEL_NAME_RE.match(s, i)
                if not m or s[m.end():m.end() + 2] != '="':
                        raise AssertionError("bad label at %d in %r" % (i, line))
                name, i, value = m.group(0), m.end() + 2, []
                while True:
                        if i >= len(s):
                                raise AssertionError("unterminated label value in %r" % line)
                        c = s[i]
                        if c == "\\":
                                esc = s[i + 1:i + 2]
                                if esc not in ("\\", '"', "n"):
                                        raise AssertionError("bad escape in %r" % line)
                                value.append("\n" if esc == "n" else esc)
                                i += 2
                        elif c == '"':
                                i += 1
                                break
                        else:
                                value.append(c)
                                i += 1
                if name in labels:
                        raise AssertionError("label %s twice in %r" % (name, line))
                labels[name] = "".join(value)
                if i < len(s):
                        if s[i] != ",":
                                raise AssertionError("expected ',' at %d in %r" % (i, line))
                        i += 1
        return labels


def family_of(name, families):
        """The declared family a sample name belongs to."""
        if name in families:
                return name
        for suffix in ("_bucket", "_sum", "_count"):
                base = name[:-len(suffix)]
                if name.endswith(suffix) and families.get(base, {}).get("type") == "histogram":
                        return base
        raise AssertionError("sample %s of no declared family" % name)


def parse_metrics(text):
        """A strict parser of the text format: HELP and TYPE once per family
        and before its samples, a family's samples together, every line
        `name{labels} value`, histograms cumulative with +Inf equal to
        _count. Returns {family: {"type", "help", "samples": [(name, labels,
        value)]}}."""
        if not text.endswith("\n"):
                raise AssertionError("the exposition does not end with a newline")
        families, order, closed = {}, [], set()
        for line in text[:-1].split("\n"):
                if line.startswith("#"):
                        m = re.match(r"# (HELP|TYPE) (\S+) (.+)\Z", line)
                        if not m or not NAME_RE.match(m.group(2)):
                                raise AssertionError("bad comment line %r" % line)
                        kind, name, rest = m.groups()
                        fam = families.setdefault(name, {"type": None, "help": None, "samples": []})
                        if name in closed or fam["samples"]:
                                raise AssertionError("%s for %s after its samples" % (kind, name))
                        key = kind.lower()
                        if fam[key] is not None:
                                raise AssertionError("%s twice for %s" % (kind, name))
                        if kind == "TYPE" and rest not in TYPES:
                                raise AssertionError("unknown type %r" % rest)
                        fam[key] = rest
                        if name not in order:
                                if order:
                                        closed.add(order[-1])
                                order.append(name)
                        continue
                m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)\Z", line)
                if not m:
                        raise AssertionError("bad sample line %r" % line)
                name, labels, value = m.group(1), parse_labels(m.group(2) or "", line), \
                        parse_value(m.group(3), line)
                fam_name = family_of(name, families)
                if fam_name in closed or fam_name != order[-1]:
                        raise AssertionError("samples of %s are not together" % fam_name)
                fam = families[fam_name]
                if fam["type"] is None or fam["help"] is None:
                        raise AssertionError("%s has no TYPE or HELP before its samples" % fam_name)
                fam["samples"].append((name, labels, value))
        for name, fam in families.items():
                if not name.startswith("futured_"):
                        raise AssertionError("%s is not prefixed futured_" % name)
                if fam["type"] == "counter":
                        for _, _, v in fam["samples"]:
                                if v < 0 or math.isnan(v):
                                        raise AssertionError("counter %s is %r" % (name, v))
                if fam["type"] == "histogram":
                        check_histogram(name, fam["samples"])
        return families


def check_histogram(name, samples):
        series = {}
        for sname, labels, value in samples:
                rest = tuple(sorted((k, v) for k, v in labels.items() if k != "le"))
                s = series.setdefault(rest, {"buckets": [], "sum": None, "count": None})
                if sname == name + "_bucket":
                        if "le" not in labels:
                                raise AssertionError("%s bucket without le" % name)
                        s["buckets"].append((parse_value(labels["le"], sname), value))
                elif sname == name + "_sum":
                        s["sum"] = value
                else:
                        s["count"] = value
        for rest, s in series.items():
                what = "%s%r" % (name, rest)
                bounds = [b for b, _ in s["buckets"]]
                counts = [c for _, c in s["buckets"]]
                if not bounds or bounds[-1] != float("inf"):
                        raise AssertionError("%s has no +Inf bucket" % what)
                if bounds != sorted(bounds) or len(set(bounds)) != len(bounds):
                        raise AssertionError("%s buckets out of order" % what)
                if counts != sorted(counts):
                        raise AssertionError("%s buckets not cumulative: %r" % (what, counts))
                if s["count"] is None or s["sum"] is None:
                        raise AssertionError("%s lacks _sum or _count" % what)
                if counts[-1] != s["count"]:
                        raise AssertionError("%s +Inf %r != count %r" % (what, counts[-1], s["count"]))


def sample(families, family, name=None, **labels):
        """The value of the one sample of family with these labels (a subset
        of its labels), 0 when there is none."""
        found = [v for n, l, v in families[family]["samples"]
                 if n == (name or family) and all(l.get(k) == v for k, v in labels.items())]
        if len(found) > 1:
                raise AssertionError("%d samples of %s match %r" % (len(found), family, labels))
        return found[0] if found else 0.0


def scrape(d, headers=None):
        r = d.request("GET", "/metrics", headers=headers)
        if r.status != 200:
                raise AssertionError("GET /metrics: %r" % (r,))
        return r


def metrics(d, headers=None):
        return parse_metrics(scrape(d, headers).body.decode("utf-8"))


class ParserTest(unittest.TestCase):
        """The test's own parser refuses what it should, so its passes mean
        something."""

        def test_refuses(self):
                good = ("# HELP futured_x x.\n# TYPE futured_x histogram\n"
                        'futured_x_bucket{le="1"} 1\nfutured_x_bucket{le="+Inf"} 2\n'
                        "futured_x_sum 3\nfutured_x_count 2\n")
                parse_metrics(good)
                for bad in (good.replace('le="+Inf"} 2', 'le="+Inf"} 0'),
                            good.replace("futured_x_count 2", "futured_x_count 3"),
                            good.replace("# TYPE futured_x histogram\n", ""),
                            good.replace("futured_x_sum 3\n", ""),
                            good + "futured_y 1\n",
                            good.rstrip("\n"),
                            good.replace('{le="1"}', '{le="1",}x')):
                        with self.assertRaises(AssertionError, msg=bad):
                                parse_metrics(bad)


class MetricsTest(DaemonTestCase):
        DAEMON_ARGS = {"io_threads": 2, "cpu_workers": 1}

        def test_format(self):
                r = scrape(self.daemon)
                self.assertEqual(r.header("content-type").split(";")[0], "text/plain")
                self.assertIn("version=0.0.4", r.header("content-type"))
                fams = parse_metrics(r.body.decode("utf-8"))
                for name, kind in (("futured_jobs", "gauge"),
                                   ("futured_queue_pending", "gauge"),
                                   ("futured_queue_delayed", "gauge"),
                                   ("futured_queue_limited", "gauge"),
                                   ("futured_pool_workers", "gauge"),
                                   ("futured_pool_busy_workers", "gauge"),
                                   ("futured_worker_restarts_total", "counter"),
                                   ("futured_job_run_seconds", "histogram"),
                                   ("futured_job_queue_wait_seconds", "histogram"),
                                   ("futured_http_requests_total", "counter"),
                                   ("futured_http_body_bytes", "gauge"),
                                   ("futured_http_body_budget_bytes", "gauge"),
                                   ("futured_store_commits_total", "counter"),
                                   ("futured_store_commit_failures_total", "counter"),
                                   ("futured_store_commit_ops", "histogram"),
                                   ("futured_store_commit_duration_seconds", "histogram"),
                                   ("futured_uptime_seconds", "gauge"),
                                   ("futured_resident_memory_bytes", "gauge")):
                        self.assertIn(name, fams)
                        self.assertEqual(fams[name]["type"], kind, name)
                self.assertEqual(sample(fams, "futured_pool_workers", pool="io"), 2)
                self.assertEqual(sample(fams, "futured_pool_workers", pool="cpu"), 1)
                self.assertGreater(sample(fams, "futured_resident_memory_bytes"), 0)
                # Every registered task shows every state, zeros included.
                self.assertIn(("futured_jobs", {"task": "sqrt_sum", "state": "cancelled"}),
                              [(n, l) for n, l, _ in fams["futured_jobs"]["samples"]])
                head = self.daemon.request("HEAD", "/metrics")
                self.assertEqual(head.status, 200)

        def test_counters_move(self):
                d, n = self.daemon, 20
                before = metrics(d)
                ids = [d.submit({"task": "noop", "args": {"i": i}})["id"] for i in range(n)]
                ids.append(d.submit({"task": "noop", "kind": "cpu"})["id"])
                for jid in ids:
                        d.wait(jid)
                wanted = sample(before, "futured_jobs", task="noop", state="succeeded") + n + 1
                # The job counts are cached for a second.
                after = poll_until(lambda: (lambda f: f if sample(f, "futured_jobs", task="noop",
                                                                  state="succeeded") == wanted
                                            else None)(metrics(d)),
                                   5, "futured_jobs{task=noop,state=succeeded} == %d" % wanted, 0.2)

                def delta(family, name=None, **labels):
                        return sample(after, family, name, **labels) - \
                                sample(before, family, name, **labels)

                self.assertEqual(delta("futured_http_requests_total", method="POST",
                                       route="/v1/jobs", code="202"), n + 1)
                self.assertGreaterEqual(delta("futured_http_requests_total", method="GET",
                                              route="/v1/jobs/{id}", code="200"), n + 1)
                self.assertGreaterEqual(delta("futured_http_requests_total", method="GET",
                                              route="/metrics", code="200"), 1)
                # A submission and a start and an end each: at least 3 ops a job.
                self.assertGreater(delta("futured_store_commits_total"), 0)
                self.assertGreaterEqual(delta("futured_store_ops_total"), 3 * (n + 1))
                self.assertGreaterEqual(delta("futured_store_commit_ops", "futured_store_commit_ops_sum"),
                                        3 * (n + 1))
                self.assertEqual(delta("futured_store_commit_ops", "futured_store_commit_ops_count"),
                                 delta("futured_store_commits_total"))
                self.assertEqual(delta("futured_store_commit_duration_seconds",
                                       "futured_store_commit_duration_seconds_count"),
                                 delta("futured_store_commits_total"))
                for kind, runs in (("io", n), ("cpu", 1)):
                        self.assertEqual(delta("futured_job_run_seconds",
                                               "futured_job_run_seconds_count", kind=kind), runs)
                        self.assertEqual(delta("futured_job_queue_wait_seconds",
                                               "futured_job_queue_wait_seconds_count", kind=kind), runs)
                self.assertEqual([v for n, _, v in after["futured_store_commit_failures_total"]["samples"]],
                                 [0.0])

        def test_unmatched_and_errors(self):
                d = self.daemon
                before = metrics(d)
                self.assertEqual(d.request("GET", "/no/such/thing").status, 404)
                self.assertEqual(d.request("PUT", "/v1/jobs").status, 405)
                self.assertEqual(d.request("GET", "/v1/jobs/999999999").status, 404)
                wanted = (("unmatched", None, "404"), ("unmatched", None, "405"), ("/v1/jobs/{id}", "GET", "404"))

                def deltas():
                        after = metrics(d)
                        out = []
                        for route, method, code in wanted:
                                labels = {"route": route, "code": code}
                                if method:
                                        labels["method"] = method
                                out.append(sample(after, "futured_http_requests_total", **labels)
                                           - sample(before, "futured_http_requests_total", **labels))
                        return out
                # A request is counted once MHD is done with it, which may
                # come just after the client has its answer.
                poll_until(lambda: deltas() == [1, 1, 1] or None, 5, "the three requests counted")
                self.assertEqual(deltas(), [1, 1, 1])

        def test_no_auth_by_default(self):
                self.assertEqual(self.daemon.request("GET", "/v1/tasks").status, 200)
                self.assertEqual(self.daemon.request("GET", "/metrics").status, 200)


TOKENS = ("s3cret-token_1", "other.Token~2/+==")


class BodyBudgetTest(DaemonTestCase):
        """All bodies being received hold 64 x max_body at most: past that a
        body is answered 503 server_busy at its end, and stores nothing."""
        MAX_BODY = 4096
        DAEMON_ARGS = {"io_threads": 2, "cpu_workers": 1, "args": ("--max-body", str(MAX_BODY))}

        def held_bytes(self):
                return sample(metrics(self.daemon), "futured_http_body_bytes")

        def test_budget(self):
                d = self.daemon
                budget = sample(metrics(d), "futured_http_body_budget_bytes")
                self.assertEqual(budget, 64 * self.MAX_BODY)
                head = (b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                        b"Content-Length: %d\r\n\r\n" % self.MAX_BODY)
                spec = json.dumps({"task": "noop"}).encode()
                full = spec + b" " * (self.MAX_BODY - len(spec))
                before = d.job_counts()
                held = []
                try:
                        # Each holds more than half of max_body, so its buffer
                        # has grown to max_body.
                        for _ in range(64):
                                s = socket.create_connection((HOST, d.port), timeout=10)
                                held.append(s)
                                s.sendall(head + b" " * (self.MAX_BODY // 2 + 1))
                        poll_until(lambda: self.held_bytes() == budget, 10,
                                   "the held bodies to fill the budget")
                        r = d.request("POST", "/v1/jobs", raw=full)
                        self.assertEqual(r.status, 503, r)
                        self.assertEqual(r.json["error"]["code"], "server_busy")
                        self.assertEqual(r.header("retry-after"), "1")
                finally:
                        for s in held:
                                s.close()
                poll_until(lambda: self.held_bytes() == 0, 10, "closed bodies to give their bytes back")
                self.assertEqual(d.job_counts(), before)
                r = d.request("POST", "/v1/jobs", raw=full)
                self.assertEqual(r.status, 202, r)


class AuthTest(DaemonTestCase):
        @classmethod
        def setUpClass(cls):
                cls.dir = harness.tempfile.mkdtemp(prefix="futured-auth-")
                cls.tokens = os.path.join(cls.dir, "tokens")
                fd = os.open(cls.tokens, os.O_WRONLY | os.O_CREAT, 0o600)
                with os.fdopen(fd, "w") as f:
                        f.write("# operators\n\n  %s  \n# ci\n%s\n" % TOKENS)
                cls.daemon = Daemon(io_threads=2, cpu_workers=1,
                                    args=["--tokens-file", cls.tokens]).start()

        @classmethod
        def tearDownClass(cls):
                super().tearDownClass()
                shutil.rmtree(cls.dir, ignore_errors=True)

        def assertUnauthorized(self, r, invalid):
                self.assertError(r, 401, "unauthorized")
                challenge = r.header("www-authenticate") or ""
                self.assertTrue(challenge.startswith('Bearer realm="futured"'), challenge)
                self.assertEqual('error="invalid_token"' in challenge, invalid, challenge)

        def test_refused_without_token(self):
                d = self.daemon
                # A path with an escape too: the 401 comes before the 404 it
                # would get with a token.
                for method, path in (("GET", "/v1/tasks"), ("GET", "/metrics"),
                                     ("GET", "/v1/stats"), ("GET", "/no/such/thing"),
                                     ("DELETE", "/healthz"), ("GET", "/v1/jobs/%31")):
                        with self.subTest(path=path):
                                self.assertUnauthorized(d.request(method, path), False)

        def test_refused_with_wrong_token(self):
                # invalid_token only for a bearer token that is not known;
                # another scheme, or none, is a request without one.
                d = self.daemon
                for value, invalid in (("Bearer nope", True), ("Bearer " + TOKENS[0] + "x", True),
                                       ("Bearer " + TOKENS[0][:-1], True), ("Basic " + TOKENS[0], False),
                                       ("Bearer", False), ("Bearer " + TOKENS[0] + " extra", False),
                                       (TOKENS[0], False), ("", False)):
                        with self.subTest(value=value):
                                r = d.request("GET", "/v1/tasks", headers={"Authorization": value})
                                self.assertUnauthorized(r, invalid)

        def test_two_authorization_headers(self):
                # Which of two would count is left to their order: refused,
                # even when both are good.
                d = self.daemon
                conn = http.client.HTTPConnection(HOST, d.port, timeout=10)
                try:
                        conn.putrequest("GET", "/v1/tasks")
                        conn.putheader("Authorization", "Bearer " + TOKENS[0])
                        conn.putheader("Authorization", "Bearer " + TOKENS[1])
                        conn.endheaders()
                        r = conn.getresponse()
                        body = json.loads(r.read())
                finally:
                        conn.close()
                self.assertEqual(r.status, 400)
                self.assertEqual(body["error"]["code"], "invalid_request")

        def test_submission_refused_before_body(self):
                d = self.daemon
                auth = {"Authorization": "Bearer " + TOKENS[0]}
                # The total, not the per-state counts: another test's noop may
                # still be moving from pending to running meanwhile.
                def total():
                        return sum(d.request("GET", "/v1/stats", headers=auth).json["jobs"].values())
                before = total()
                r = d.request("POST", "/v1/jobs", body={"task": "noop"})
                self.assertUnauthorized(r, False)
                r = d.request("POST", "/v1/batches", body={"task": "noop", "items": [{}]},
                              headers={"Authorization": "Bearer wrong"})
                self.assertUnauthorized(r, True)
                self.assertEqual(total(), before)

        def test_accepted_with_token(self):
                d = self.daemon
                self.assertUnauthorized(d.request("GET", "/v1/tasks"), False)
                for token in TOKENS:
                        for scheme in ("Bearer ", "bearer  "):
                                auth = {"Authorization": scheme + token}
                                with self.subTest(auth=auth):
                                        self.assertEqual(d.request("GET", "/v1/tasks",
                                                                   headers=auth).status, 200)
                auth = {"Authorization": "Bearer " + TOKENS[1]}
                r = d.request("POST", "/v1/jobs", body={"task": "noop"}, headers=auth)
                self.assertEqual(r.status, 202, r)
                fams = metrics(d, headers=auth)
                self.assertGreaterEqual(sample(fams, "futured_http_requests_total", route="/v1/tasks",
                                               code="401"), 1)

        def test_healthz_open(self):
                self.assertEqual(self.daemon.request("GET", "/healthz").status, 200)
                self.assertEqual(self.daemon.request("HEAD", "/healthz").status, 200)

        def test_tokens_never_logged(self):
                with open(self.daemon.log_path, "rb") as f:
                        log = f.read().decode("utf-8", "replace")
                for token in TOKENS:
                        self.assertNotIn(token, log)
                self.assertIn("bearer tokens required", log)


def start_fails(args, expect):
        """Runs futured with args; asserts it exits non-zero at start with
        expect in its log."""
        d = Daemon(io_threads=1, cpu_workers=1, args=args)
        try:
                p = subprocess.run(d.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, cwd=d.dir, timeout=20,
                                   start_new_session=True)
        finally:
                d.cleanup()
        out = p.stdout.decode("utf-8", "replace")
        if p.returncode == 0 or expect not in out:
                raise AssertionError("futured %r: exit %d, expected failure with %r\n%s"
                                     % (args, p.returncode, expect, out))


class StartRefusalTest(unittest.TestCase):
        def setUp(self):
                self.dir = harness.tempfile.mkdtemp(prefix="futured-ops-")
                self.addCleanup(shutil.rmtree, self.dir, True)

        def write(self, name, text, mode=0o600):
                path = os.path.join(self.dir, name)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT, mode)
                with os.fdopen(fd, "w") as f:
                        f.write(text)
                return path

        def test_bad_tokens_files(self):
                start_fails(["--tokens-file", os.path.join(self.dir, "absent")], "tokens file")
                start_fails(["--tokens-file", self.write("empty", "# nothing\n\n")], "no token")
                start_fails(["--tokens-file", self.write("bad", "good\nhas space\n")], "bad:2")

        def test_tls_half_set(self):
                start_fails(["--tls-cert", self.write("cert.pem", "x")], "tls_key")
                start_fails(["--tls-key", self.write("key.pem", "x")], "tls_key")

        def test_tls_unreadable(self):
                start_fails(["--tls-cert", os.path.join(self.dir, "absent.pem"),
                             "--tls-key", self.write("key.pem", "x")], "TLS certificate")


def make_cert(directory):
        """A self-signed certificate for 127.0.0.1 and its key, or None when
        there is no openssl."""
        openssl = shutil.which("openssl")
        if not openssl:
                return None
        cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
        subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", cert,
                        "-days", "2", "-subj", "/CN=127.0.0.1",
                        "-addext", "subjectAltName=IP:127.0.0.1"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.chmod(key, 0o600)
        return cert, key


class TLSDaemon(Daemon):
        """A daemon serving HTTPS; start() probes /healthz over TLS."""

        def __init__(self, cert, key, **kw):
                super().__init__(args=["--tls-cert", cert, "--tls-key", key], **kw)
                self.context = ssl.create_default_context(cafile=cert)

        def https(self, method, path, body=None, headers=None):
                conn = http.client.HTTPSConnection(HOST, self.port, context=self.context, timeout=10)
                try:
                        conn.request(method, path, body=body, headers=headers or {})
                        r = conn.getresponse()
                        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
                finally:
                        conn.close()

        def start(self, timeout=10.0):
                self.runs += 1
                self.log_path = os.path.join(self.dir, "futured.%d.log" % self.runs)
                with open(self.log_path, "wb") as log:
                        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log,
                                                     stderr=log, cwd=self.dir, start_new_session=True)
                self.pgids.append(self.proc.pid)

                def healthy():
                        if self.proc.poll() is not None:
                                self.failed = True
                                raise AssertionError("futured exited at start\n%s" % self.log_tail())
                        try:
                                return self.https("GET", "/healthz")[0] == 200
                        except OSError:
                                return False
                poll_until(healthy, timeout, "HTTPS /healthz", 0.05)
                return self


class TLSTest(unittest.TestCase):
        @classmethod
        def setUpClass(cls):
                cls.dir = harness.tempfile.mkdtemp(prefix="futured-tls-")
                pair = make_cert(cls.dir)
                if pair is None:
                        shutil.rmtree(cls.dir, ignore_errors=True)
                        raise unittest.SkipTest("openssl is not installed")
                cls.daemon = TLSDaemon(*pair, io_threads=2, cpu_workers=1).start()

        @classmethod
        def tearDownClass(cls):
                try:
                        cls.daemon.finish()
                finally:
                        shutil.rmtree(cls.dir, ignore_errors=True)

        def test_https_serves(self):
                d = self.daemon
                status, headers, body = d.https("POST", "/v1/jobs", body=b'{"task":"noop"}',
                                                headers={"Content-Type": "application/json"})
                self.assertEqual(status, 202, body)
                jid = harness.json.loads(body)["id"]
                status, _, body = d.https("GET", "/v1/jobs/%s?wait=5" % jid)
                self.assertEqual(status, 200)
                self.assertEqual(harness.json.loads(body)["state"], "succeeded")
                status, headers, body = d.https("GET", "/metrics")
                self.assertEqual(status, 200)
                parse_metrics(body.decode("utf-8"))

        def test_plain_http_refused(self):
                conn = http.client.HTTPConnection(HOST, self.daemon.port, timeout=5)
                try:
                        conn.request("GET", "/healthz")
                        status = conn.getresponse().status
                except (OSError, http.client.HTTPException):
                        status = None
                finally:
                        conn.close()
                self.assertIsNone(status, "plain HTTP got an answer from the TLS port")

        def test_untrusted_client_refused(self):
                # The handshake happens and the certificate is what a client
                # without it in its trust store refuses (a plain-HTTP server
                # would fail the handshake instead).
                ctx = ssl.create_default_context()
                with socket.create_connection((HOST, self.daemon.port), timeout=5) as s:
                        with self.assertRaises(ssl.SSLCertVerificationError):
                                ctx.wrap_socket(s, server_hostname=HOST)


if __name__ == "__main__":
        harness.main()
