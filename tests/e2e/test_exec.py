"""The exec task end to end: commands named in the config file run in CPU
workers with their output and exit code; a placeholder's value is one
argument whatever it holds; a command or parameter the config does not name
is a 400; a command that hangs is killed at its timeout (or on cancel) and
the same worker takes the next job."""

import os
import shutil
import subprocess
import tempfile
import time

import harness
from harness import DaemonTestCase, poll_until, proc_alive

CONFIG = """
[commands]
join = /usr/bin/printf "<%%s>" {a} --b={b}
count = /usr/bin/wc -l
fail = /bin/sh -c "echo bad >&2; exit 4"
hang = /bin/sh -c "echo $$ > hang.pid; exec /bin/sleep 60"
orphan = /bin/sh -c "/bin/sleep 60 & echo $! > orphan.pid; wait"
ppid = /bin/sh -c "echo $PPID"
parse = /bin/cat
zeros = /usr/bin/head -c 3 /dev/zero

[exec]
work_dir = %s
json_output = parse
max_output = 4K
"""


class TestExec(DaemonTestCase):
        @classmethod
        def setUpClass(cls):
                cls.conf_dir = tempfile.mkdtemp(prefix="futured-e2e-exec-")
                cls.conf = os.path.join(cls.conf_dir, "futured.conf")
                with open(cls.conf, "w") as f:
                        f.write(CONFIG % cls.conf_dir)
                cls.DAEMON_ARGS = {"io_threads": 2, "cpu_workers": 2, "args": ["-c", cls.conf]}
                super().setUpClass()

        @classmethod
        def tearDownClass(cls):
                super().tearDownClass()
                shutil.rmtree(cls.conf_dir, ignore_errors=True)

        def run_exec(self, args, timeout=30, state="succeeded"):
                d = self.daemon
                j = d.wait(d.submit({"task": "exec", "args": args, "timeout": timeout})["id"], timeout=30)
                self.assertEqual(j["state"], state, j)
                return j

        def restarts(self):
                return self.daemon.stats()["pools"]["cpu"]["restarts"]

        def hang_pid(self, name="hang"):
                path = os.path.join(self.conf_dir, name + ".pid")

                def read():
                        try:
                                with open(path) as f:
                                        return int(f.read())
                        except (OSError, ValueError):
                                return None
                pid = poll_until(read, 10, "the hang command to start")
                os.unlink(path)
                return pid

        def assertWorkersKept(self, pids, restarts, command):
                """No worker was replaced, the command is gone, and the next job
                runs in one of the same workers."""
                d = self.daemon
                self.assertEqual(self.restarts(), restarts)
                self.assertEqual(sorted(d.cpu_pids()), sorted(pids))
                poll_until(lambda: not proc_alive(command), 5, "the command %d to die" % command)
                j = self.run_exec({"command": "ppid"})
                self.assertIn(int(j["result"]["stdout"]), pids)
                self.assertEqual(d.request("GET", "/healthz").status, 200)

        def test_output_and_exit_code(self):
                j = self.run_exec({"command": "join", "a": "one", "b": 2})
                self.assertEqual(j["kind"], "cpu")
                self.assertEqual(j["result"], {"exit_code": 0, "stdout": "<one><--b=2>", "stderr": ""})
                j = self.run_exec({"command": "count", "stdin": "a\nb\nc\n"})
                self.assertEqual(j["result"]["stdout"].strip(), "3")

        def test_one_argument(self):
                value = "it's \"quoted\"  and  spaced * $HOME; `id`"
                j = self.run_exec({"command": "join", "a": value, "b": value})
                self.assertEqual(j["result"]["stdout"], "<%s><--b=%s>" % (value, value))

        def test_json_output(self):
                j = self.run_exec({"command": "parse", "stdin": '{"x": [1, 2]}'})
                self.assertEqual(j["result"]["json"], {"x": [1, 2]})
                self.assertNotIn("stdout", j["result"])

        def test_nul_bytes(self):
                # Output holding NUL is text like any other: it travels
                # from the worker and back out of the store as \u0000.
                restarts = self.restarts()
                j = self.run_exec({"command": "zeros"})
                self.assertEqual(j["result"]["stdout"], "\0\0\0")
                self.assertEqual(self.restarts(), restarts)
                d = self.daemon
                b = d.submit_batch({"task": "exec", "items": [{"command": "zeros"}]})
                d.wait_batch(b["id"], timeout=30)
                s = d.stream(b["id"], "format=openai")
                self.assertEqual(s.status, 200, s)
                [line] = [x[0] for x in s.read_all_json(timeout=30)]
                self.assertEqual(line["response"]["status_code"], 200, line)
                self.assertEqual(line["response"]["body"]["stdout"], "\0\0\0", line)

        def test_output_cap(self):
                j = self.run_exec({"command": "parse", "stdin": "y" * 10000})
                self.assertEqual(j["result"]["stdout"], "y" * 4096)
                self.assertIs(j["result"]["stdout_truncated"], True)

        def test_nonzero_exit(self):
                j = self.run_exec({"command": "fail"}, state="failed")
                e = j["error"]
                self.assertEqual(e["type"], "exit_status", j)
                self.assertEqual(e["exit_code"], 4)
                self.assertEqual(e["stderr"], "bad\n")
                self.assertEqual(j["attempts"], 1)

        def test_refused_at_submit(self):
                d = self.daemon
                before = d.job_counts()
                for args, what in (({"command": "rm", "a": "/"}, "one of"),
                                   ({"command": "/bin/sh"}, "one of"),
                                   ({}, "one of"),
                                   ({"command": "join", "a": "x"}, "missing parameter"),
                                   ({"command": "join", "a": "x", "b": "y", "env": "X=1"}, "env"),
                                   ({"command": "count", "cwd": "/"}, "cwd"),
                                   ({"command": "join", "a": "-rf", "b": "y"}, "'-'"),
                                   ({"command": "join", "a": ["x"], "b": "y"}, "string")):
                        r = d.request("POST", "/v1/jobs", body={"task": "exec", "args": args})
                        self.assertError(r, 400, None, repr(args))
                        self.assertIn(what, r.json["error"]["message"], r)
                r = d.request("POST", "/v1/jobs", body={"task": "exec", "kind": "io",
                                                        "args": {"command": "count"}})
                self.assertError(r, 400, None, "kind io")
                self.assertEqual(d.job_counts(), before)

        def test_hang_killed_at_timeout_worker_reused(self):
                d = self.daemon
                pids = poll_until(lambda: (lambda p: p if len(p) == 2 else None)(d.cpu_pids()), 5,
                                  "two cpu workers")
                restarts = self.restarts()
                t0 = time.monotonic()
                j = self.run_exec({"command": "hang"}, timeout=0.5, state="failed")
                self.assertLess(time.monotonic() - t0, 3.0, "a 0.5 s timeout took too long")
                self.assertEqual(j["error"]["type"], "timeout", j)
                self.assertWorkersKept(pids, restarts, self.hang_pid())

        def test_hang_cancelled_worker_reused(self):
                d = self.daemon
                pids = poll_until(lambda: (lambda p: p if len(p) == 2 else None)(d.cpu_pids()), 5,
                                  "two cpu workers")
                restarts = self.restarts()
                j = d.submit({"task": "exec", "args": {"command": "hang"}, "timeout": 600})
                command = self.hang_pid()
                r = d.request("POST", "/v1/jobs/%s/cancel" % j["id"])
                self.assertIn(r.status, (200, 202), r)
                j = d.wait(j["id"], timeout=10)
                self.assertEqual(j["state"], "cancelled", j)
                self.assertWorkersKept(pids, restarts, command)


        def test_worker_killed_takes_the_command_group(self):
                """A worker killed mid-run (OOM, kill -9): the command dies
                with it, and the daemon kills what the command started in
                its group, which would otherwise run on, orphaned."""
                d = self.daemon
                j = d.submit({"task": "exec", "args": {"command": "orphan"}, "timeout": 60, "max_attempts": 1})
                child = self.hang_pid("orphan")
                try:
                        d.wait_state(j["id"], "running")
                        for pid in d.cpu_pids():
                                os.kill(pid, 9)
                        j = d.wait(j["id"], timeout=10)
                        self.assertEqual(j["state"], "failed", j)
                        self.assertEqual(j["error"]["type"], "crashed", j)
                        poll_until(lambda: not proc_alive(child), 5, "the command's child %d to die" % child)
                finally:
                        if proc_alive(child):
                                os.kill(child, 9)
                self.assertEqual(self.run_exec({"command": "ppid"})["state"], "succeeded")


class TestExecConfig(DaemonTestCase):
        DAEMON_ARGS = {"cpu_workers": 1}

        def test_bad_template_refuses_to_start(self):
                with tempfile.TemporaryDirectory() as tmp:
                        conf = os.path.join(tmp, "bad.conf")
                        with open(conf, "w") as f:
                                f.write("[commands]\nbad = /bin/echo {oops\n")
                        p = subprocess.run([harness.futured_bin(), "-c", conf, "--listen", "127.0.0.1:0",
                                            "--db", os.path.join(tmp, "x.db")],
                                           stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
                        self.assertNotEqual(p.returncode, 0)
                        self.assertIn(b'command "bad"', p.stderr)

        def test_no_commands(self):
                r = self.daemon.request("POST", "/v1/jobs", body={"task": "exec",
                                                                  "args": {"command": "ls"}})
                self.assertError(r, 400, None)
                self.assertIn("none is", r.json["error"]["message"])


if __name__ == "__main__":
        harness.main()
