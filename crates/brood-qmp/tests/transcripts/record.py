#!/usr/bin/env python3
"""Re-record the QMP transcripts in this directory from the installed QEMU.

Usage: python3 record.py [OUTDIR]   (default: the directory of this script)

Each scenario starts `qemu-system-x86_64 -M microvm -nodefaults -no-user-config
-display none -S` (no guest, nothing runs) in its own session, talks QMP over a
unix socket in a temporary directory and writes `<scenario>.txt`:

    # comment lines
    < a line QEMU sent
    > a line we sent

Steps: a JSON object is sent as a command and lines are read until its reply;
["wait", EVENT, STATUS-or-null] reads until that event arrives;
["poll-migrate"] repeats query-migrate until a final status;
["eof"] reads until QEMU closes the socket.
"""
import json, os, shutil, signal, socket, subprocess, sys, tempfile, time

TMP = tempfile.mkdtemp(prefix="brood-qmp-rec-")
STATE = "/tmp/brood-qmp-rec-state"

def c(name, args=None):
    d = {"execute": name}
    if args is not None:
        d["arguments"] = args
    return d

CAPS = c("qmp_capabilities")
EVENTS_ON = c("migrate-set-capabilities",
              {"capabilities": [{"capability": "events", "state": True}]})

SCENARIOS = {
    "session": ([], [
        CAPS, c("query-status"), c("cont"), c("query-status"), c("stop"),
        c("no-such-command"), c("query-migrate"),
        c("human-monitor-command", {"command-line": "info status"}),
        c("system_reset"), c("system_powerdown"), c("quit"), ["eof"]]),
    "migrate_events": ([], [
        CAPS, EVENTS_ON,
        c("migrate-set-parameters", {"max-bandwidth": 1073741824, "downtime-limit": 500}),
        c("migrate", {"uri": "file:" + STATE}),
        ["wait", "MIGRATION", "completed"], c("query-migrate"), c("quit"), ["eof"]]),
    "migrate_poll": ([], [
        CAPS, c("migrate", {"uri": "file:" + STATE + "-poll"}), ["poll-migrate"],
        c("quit"), ["eof"]]),
    "migrate_failed": ([], [
        CAPS, EVENTS_ON, c("migrate", {"uri": "unix:" + STATE + "-nonexistent.sock"}),
        ["wait", "MIGRATION", "failed"], c("query-migrate"), c("quit"), ["eof"]]),
    "migrate_incoming": (["-incoming", "defer"], [
        CAPS, c("query-status"), EVENTS_ON,
        c("migrate-incoming", {"uri": "file:" + STATE}),
        ["wait", "MIGRATION", "completed"], ["poll-migrate"], c("query-status"),
        c("quit"), ["eof"]]),
}

def run(name, extra, steps, outdir):
    sock = os.path.join(TMP, name + ".sock")
    base = ["qemu-system-x86_64", "-M", "microvm", "-nodefaults", "-no-user-config",
            "-display", "none", "-S"]
    argv = base + ["-qmp", f"unix:{sock},server=on,wait=off"] + extra
    p = subprocess.Popen(argv, start_new_session=True, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 10
        while not os.path.exists(sock):
            if time.time() > deadline:
                raise RuntimeError("no socket")
            time.sleep(0.02)
        s = socket.socket(socket.AF_UNIX)
        s.connect(sock)
        s.settimeout(10)
        f = s.makefile("rb")
        log = []
        def rd():
            line = f.readline()
            if line:
                log.append("< " + line.decode().rstrip("\r\n"))
            return line
        def cmd(obj, i):
            obj = dict(obj, id=i)
            line = json.dumps(obj)
            log.append("> " + line)
            s.sendall(line.encode() + b"\n")
            while True:
                m = json.loads(rd())
                if m.get("id") == i:
                    return m
        rd()
        i = 0
        for step in steps:
            if isinstance(step, dict):
                i += 1
                cmd(step, i)
            elif step[0] == "wait":
                while True:
                    m = json.loads(rd())
                    if m.get("event") == step[1] and (
                            step[2] is None or m.get("data", {}).get("status") == step[2]):
                        break
            elif step[0] == "poll-migrate":
                while True:
                    i += 1
                    r = cmd(c("query-migrate"), i)
                    if r["return"].get("status") in ("completed", "failed", "cancelled"):
                        break
                    time.sleep(0.002)
            elif step[0] == "eof":
                try:
                    while rd():
                        pass
                    log.append("# EOF")
                except ConnectionResetError:
                    log.append("# ECONNRESET")
        ver = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True,
                             text=True).stdout.splitlines()[0]
        with open(os.path.join(outdir, name + ".txt"), "w") as out:
            out.write(f"# {ver}\n# argv: {' '.join(base + ['-qmp', 'unix:SOCK,server=on,wait=off'] + extra)}\n")
            out.write("\n".join(log) + "\n")
    finally:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait()

if __name__ == "__main__":
    outdir = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
    for name, (extra, steps) in SCENARIOS.items():
        run(name, extra, steps, outdir)
        print("recorded", name)
    for f in os.listdir("/tmp"):
        if f.startswith("brood-qmp-rec-state"):
            os.unlink(os.path.join("/tmp", f))
    shutil.rmtree(TMP, ignore_errors=True)
