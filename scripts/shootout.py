"""zodbshootout through <NEOStorage>, beside FileStorage and ZEO, in one run.

Run by scripts/shootout.sh with the benchmark virtualenv's Python (ZODB, ZEO, zodbshootout,
pyperf 2.3.0, six and the neo.client wheel installed). It starts a local cluster with the
release binaries (neosimple: 1 master, 2 SQLite storages, replicas 1) and a ZEO server on a
FileStorage, writes one zodbshootout configuration naming the three databases, runs
zodbshootout once per concurrency level, and prints each operation's mean time per
transaction with its ratio to FileStorage from the same run.
"""

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

# zodbshootout's operations, in the order of the table: (name on the command line,
# the words its benchmark names carry, the label printed).
OPS = [
    ("add", "add", "add"),
    ("update", "update", "update"),
    ("cold", "cold objects", "cold read"),
    ("prefetch_cold", "cold prefeteched", "cold prefetched"),
    ("warm", "write/read", "write/read"),
    ("hot", "hot objects", "hot read"),
    ("tpc", "tpc", "tpc"),
    ("conflicts", "conflicting", "conflicts"),
]
DATABASES = ["fs", "zeo", "neo"]


def say(msg):
    print(msg, file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, what, proc, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"shootout: {what} exited with status {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"shootout: {what} does not answer on port {port}")


def start_cluster(bindir, workdir):
    """neosimple in workdir; returns (process, master_nodes) once the cluster is RUNNING."""
    proc = subprocess.Popen(
        [os.path.join(bindir, "neosimple"), os.path.join(workdir, "neo"),
         "--cluster", "shootout", "--admin", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)
    masters = None
    deadline = time.monotonic() + 120
    for line in proc.stdout:
        m = re.search(r"master\(s\) on ([0-9.: ]+),", line)
        if m:
            masters = m.group(1).strip()
        if "is RUNNING" in line and masters:
            break
        if time.monotonic() > deadline:
            break
    if not masters:
        proc.kill()
        raise SystemExit("shootout: the cluster did not start (see %s)" % workdir)
    # Keep draining its output so that it never blocks on a full pipe.
    subprocess.Popen(["cat"], stdin=proc.stdout, stdout=subprocess.DEVNULL)
    return proc, masters


def stop(proc):
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def config(workdir, zeo_port, masters):
    return f"""%import neo.client
<zodb fs>
    <filestorage>
        path {workdir}/fs/Data.fs
    </filestorage>
</zodb>
<zodb zeo>
    <zeoclient>
        server 127.0.0.1:{zeo_port}
    </zeoclient>
</zodb>
<zodb neo>
    <NEOStorage>
        master_nodes {masters}
        name shootout
    </NEOStorage>
</zodb>
"""


def means(path):
    """{(database, op label): mean seconds} from a pyperf JSON file."""
    import pyperf
    out = {}
    for bench in pyperf.BenchmarkSuite.load(path).get_benchmarks():
        name = bench.get_name()  # "{c=1 processes, o=1000} fs: add 1000 objects"
        m = re.match(r"\{[^}]*\} (\w+): (.*)$", name)
        if not m:
            continue
        db, what = m.groups()
        for _, words, label in OPS:
            if words in what:
                out[(db, label)] = bench.mean()
    return out


def table(results, concurrency, objects):
    print(f"\nzodbshootout, {concurrency} client process(es), {objects} objects per "
          "transaction: mean ms per transaction (ratio to FileStorage)")
    print(f"{'op':<16}" + "".join(f"{db:>20}" for db in DATABASES))
    worst = None
    for _, _, label in OPS:
        base = results.get(("fs", label))
        row = f"{label:<16}"
        for db in DATABASES:
            v = results.get((db, label))
            if v is None:
                row += f"{'-':>20}"
            elif db == "fs" or not base:
                row += f"{v * 1000:>20.3f}"
            else:
                ratio = v / base
                row += f"{v * 1000:>12.3f} ({ratio:4.1f}x)"
                if db == "neo" and (worst is None or ratio > worst[1]):
                    worst = (label, ratio)
        print(row)
    return worst


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bindir", required=True, help="folder of neosimple and the node programs")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 2])
    p.add_argument("--objects", type=int, default=1000)
    p.add_argument("--rigorous", action="store_true", help="pyperf's longer runs")
    p.add_argument("--keep", action="store_true", help="keep the work folder")
    args = p.parse_args()
    workdir = tempfile.mkdtemp(prefix="neo-shootout-")
    os.makedirs(os.path.join(workdir, "fs"))
    procs = []
    summary = []
    try:
        say("shootout: starting the cluster (neosimple) and a ZEO server")
        cluster, masters = start_cluster(args.bindir, workdir)
        procs.append(cluster)
        zeo_port = free_port()
        zeo = subprocess.Popen(
            [os.path.join(os.path.dirname(sys.executable), "runzeo"),
             "-a", f"127.0.0.1:{zeo_port}", "-f", os.path.join(workdir, "zeo.fs")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        procs.append(zeo)
        wait_port(zeo_port, "the ZEO server", zeo)
        conf = os.path.join(workdir, "shootout.conf")
        with open(conf, "w") as f:
            f.write(config(workdir, zeo_port, masters))
        for c in args.concurrency:
            out = os.path.join(workdir, f"c{c}.json")
            say(f"shootout: zodbshootout with {c} process(es), {args.objects} objects "
                "per transaction (progress below)")
            cmd = [os.path.join(os.path.dirname(sys.executable), "zodbshootout"),
                   "-q", "-c", str(c), "--object-counts", str(args.objects),
                   "--include-mapping", "no", "-o", out,
                   "--rigorous" if args.rigorous else "--fast", conf]
            # The operations follow the configuration file (positional arguments).
            cmd += [op for op, _, _ in OPS]
            subprocess.run(cmd, check=True)
            worst = table(means(out), c, args.objects)
            if worst:
                summary.append(f"c={c}: worst neo/fs ratio {worst[1]:.1f}x ({worst[0]})")
    finally:
        for proc in procs:
            stop(proc)
        if args.keep:
            say(f"shootout: work folder kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print("\nshootout done: " + "; ".join(summary))


if __name__ == "__main__":
    main()
