"""kill -9 of the daemon loses nothing it acknowledged: finished jobs stay as
they were, pending ones run after a restart, running ones are retried while
attempts remain or fail with "interrupted"."""

import http.client
import threading
import unittest

import harness
from harness import Daemon, poll_until, proc_alive


class TestKill9(unittest.TestCase):
        def setUp(self):
                self.d = Daemon(io_threads=2, cpu_workers=1, retry_base=0.1).start()

        def tearDown(self):
                if self.d.running():
                        self.d.stop()

        def assertWorkersGone(self, pids):
                poll_until(lambda: not any(proc_alive(p) for p in pids), 5,
                           "cpu workers %r to die with the killed daemon" % (pids,))

        def test_kill9_pending_running_finished(self):
                d = self.d
                finished = [d.wait(d.submit({"task": "noop", "args": {"i": i}, "tag": i})["id"]) for i in range(5)]
                finished.append(d.wait(d.submit({"task": "sqrt_sum", "args": {"n": 1000}})["id"]))
                finished.append(d.wait(d.submit({"task": "sleep", "args": {"seconds": 30}, "timeout": 0.1})["id"]))
                self.assertEqual([j["state"] for j in finished], ["succeeded"] * 6 + ["failed"])

                retried = d.submit({"task": "sleep", "args": {"seconds": 3}, "max_attempts": 2, "timeout": 30})
                lost = d.submit({"task": "sleep", "args": {"seconds": 60}, "max_attempts": 1, "timeout": 120})
                cpu_lost = d.submit({"task": "sqrt_sum", "args": {"n": 3_000_000_000}, "max_attempts": 1,
                                     "timeout": 120})
                for j in (retried, lost, cpu_lost):
                        d.wait_state(j["id"], "running")
                cancelled = d.submit({"task": "noop", "tag": "cancel me"})
                r = d.request("POST", "/v1/jobs/%s/cancel" % cancelled["id"])
                self.assertEqual(r.status, 200, r)
                finished.append(r.json)
                pending = [d.submit({"task": "noop", "args": {"p": i}}) for i in range(10)]
                pending += [d.submit({"task": "noop", "kind": "cpu", "args": {"c": i}}) for i in range(3)]
                for j in pending:
                        self.assertEqual(d.job(j["id"])["state"], "pending", "pools were meant to be busy")
                finished = [d.job(j["id"]) for j in finished]
                workers = d.cpu_pids()

                d.kill9()
                self.assertWorkersGone(workers)
                d.restart()

                for j in finished:
                        self.assertEqual(d.job(j["id"]), j, "a finished job changed across kill -9")
                for j in (lost, cpu_lost):
                        j = d.wait(j["id"], timeout=5)
                        self.assertEqual(j["state"], "failed", j)
                        self.assertEqual(j["error"]["type"], "interrupted", j)
                        self.assertEqual(j["attempts"], 1, j)
                j = d.wait(retried["id"], timeout=10)
                self.assertEqual(j["state"], "succeeded", j)
                self.assertEqual(j["attempts"], 2, j)
                for p in pending:
                        j = d.wait(p["id"], timeout=10)
                        self.assertEqual(j["state"], "succeeded", j)
                        self.assertEqual(j["attempts"], 1, j)
                        self.assertEqual(j["result"], p["args"])
                everything = d.list_all()
                seqs = [j["seq"] for j in everything if j["state"] in harness.FINISHED]
                self.assertEqual(len(seqs), len(set(seqs)), "two jobs share a completion seq")
                old = max(j["seq"] for j in finished)
                for p in pending:
                        self.assertGreater(d.job(p["id"])["seq"], old, "seq went backwards after restart")
                self.assertEqual(len(everything), 7 + 3 + 1 + 13)

        def test_kill9_during_submissions(self):
                d = self.d
                acked = {}
                lock = threading.Lock()
                stop = threading.Event()

                def submitter(t):
                        c = d.new_client()
                        i = 0
                        while not stop.is_set():
                                tag = "%d-%d" % (t, i)
                                try:
                                        r = c.request("POST", "/v1/jobs", {"task": "noop", "tag": tag})
                                except (OSError, http.client.HTTPException):
                                        return
                                if r.status == 202:
                                        with lock:
                                                acked[r.json["id"]] = tag
                                i += 1
                        c.close()

                threads = [threading.Thread(target=submitter, args=(t,)) for t in range(4)]
                for t in threads:
                        t.start()
                try:
                        poll_until(lambda: len(acked) >= 400, 20, "400 acknowledged submissions")
                        d.kill9()
                finally:
                        stop.set()
                        for t in threads:
                                t.join(10)
                with lock:
                        acked = dict(acked)
                d.restart()
                poll_until(lambda: (lambda c: c["pending"] + c["running"] == 0)(d.job_counts()), 20,
                           "the recovered jobs to finish")
                stored = {j["id"]: j for j in d.list_all()}
                missing = [i for i in acked if i not in stored]
                self.assertEqual(missing, [], "acknowledged jobs lost by kill -9")
                for jid, tag in acked.items():
                        j = stored[jid]
                        self.assertEqual(j["tag"], tag)
                        self.assertIn(j["state"], ("succeeded", "failed"), j)
                        if j["state"] == "failed":
                                self.assertEqual(j["error"]["type"], "interrupted", j)
                tags = [j["tag"] for j in stored.values()]
                self.assertEqual(len(tags), len(set(tags)), "a submission was stored twice")


if __name__ == "__main__":
        harness.main()
