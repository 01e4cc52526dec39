"""A time limit for one step of the lab runner (a scenario, its teardown).

Every wait in a scenario has its own timeout, but a step can still block where no timeout reaches: a
sysfs `unbind` of a device someone still holds sleeps in the kernel, a child that ignores SIGTERM, a
wait on a process that never exits. Then the whole L1 run would only end at lab/run.sh's deadline,
with nothing on the console to say where it stood. The watchdog's thread wakes at the limit, prints
what it can see (the runner's Python stack, the timeline so far, every task in uninterruptible sleep
with its kernel stack, the processes of the scenario), and interrupts the main thread with SIGALRM,
whose handler raises `failure` there: the step fails with a reason and the runner goes on with the
next scenario. A main thread stuck in the kernel only sees the signal when its system call returns;
the diagnostics are printed either way.
"""

import os
import signal
import sys
import threading
import traceback


def _read(path):
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def _tasks():
    """(pid, comm, state, wchan, cmdline) of every process in L1."""
    out = []
    for pid in sorted((int(p) for p in os.listdir("/proc") if p.isdigit())):
        stat = _read(f"/proc/{pid}/stat")
        if not stat:
            continue
        comm = stat[stat.find("(") + 1:stat.rfind(")")]
        state = stat[stat.rfind(")") + 2:].split(" ", 1)[0]
        cmd = _read(f"/proc/{pid}/cmdline").replace("\0", " ").strip()
        out.append((pid, comm, state, _read(f"/proc/{pid}/wchan"), cmd))
    return out


def dump(what, timeline_start, timeline, main_thread_id):
    """Prints where the runner and L1 stand (for a step that overran its limit)."""
    say = lambda line: print(f"lab-watchdog: {line}", flush=True)  # noqa: E731
    say(f"{what}: over its time limit; what L1 shows now:")
    frame = sys._current_frames().get(main_thread_id)
    if frame is not None:
        for line in "".join(traceback.format_stack(frame)).rstrip().splitlines():
            say(f"  runner {line}")
    for t, note in timeline[-40:]:
        say(f"  timeline {(t - timeline_start) * 1000:9.1f} ms  {note}")
    for pid, comm, state, wchan, cmd in _tasks():
        if state == "D" or cmd and pid > 1 and comm not in ("sh", "tail"):  # kernel threads: no cmdline
            say(f"  task {pid} {state} {comm} wchan={wchan or '-'} {cmd[:160]}")
        if state == "D":
            for line in _read(f"/proc/{pid}/stack").splitlines()[:12]:
                say(f"    kernel {line}")


_armed = None  # the Watchdog whose block is running (one at a time: the runner is sequential)


def _on_alarm(_signum, _frame):
    # Installed once and never reset: a SIGALRM that lands after its block ended is ignored, never
    # the default action (which would end the runner).
    if _armed is not None and _armed.fired:
        raise _armed.failure(f"{_armed.what} did not finish within {_armed.seconds:g} s (watchdog; "
                             "the console has its diagnostics)")


class Watchdog:
    """`with Watchdog(seconds, what, failure, lab, start):` limits the block to `seconds`."""

    def __init__(self, seconds, what, failure, lab, start):
        self.seconds, self.what, self.failure = seconds, what, failure
        self.lab, self.start = lab, start
        self.fired = False

    def _expire(self):
        self.fired = True
        dump(self.what, self.start, list(self.lab.timeline), self.main)
        os.kill(os.getpid(), signal.SIGALRM)

    def __enter__(self):
        global _armed
        self.main = threading.get_ident()
        signal.signal(signal.SIGALRM, _on_alarm)
        _armed = self
        self.timer = threading.Timer(self.seconds, self._expire)
        self.timer.daemon = True
        self.timer.start()
        return self

    def __exit__(self, *exc):
        global _armed
        self.timer.cancel()
        self.timer.join()
        _armed = None
        return False
