"""A real local NEO cluster for the tests: 1 master, 2 storages on SQLite (replicas 1) and
an admin, each a process of its own (the core crate's neomaster, neostorage and neoadmin),
on free ports in a temporary folder.

The programs are taken from ``$NEO_BIN_DIR`` (default: the core crate's ``target/ci``,
which ``scripts/test.sh`` builds).
"""
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN_DIR = os.environ.get('NEO_BIN_DIR') or os.path.join(ROOT, 'target', 'ci')

# ZODB's test cases point tempfile at a folder of their own, removed at tear-down: the
# cluster's folder is made outside it, so that it can be kept (NEO_TEST_KEEP=1).
TMP = tempfile.gettempdir()

# How long a node may take to stop after SIGTERM before it is killed.
STOP_TIMEOUT = 15


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _die_with_parent():
    # If the test process dies (even by SIGKILL), its nodes are told to stop.
    libc = ctypes.CDLL(None, use_errno=True)
    PR_SET_PDEATHSIG = 1
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def program(name):
    path = os.path.join(BIN_DIR, name)
    if not os.access(path, os.X_OK):
        raise RuntimeError(
            '%s not found in %s: build the nodes (cargo build --profile ci) or set '
            'NEO_BIN_DIR' % (name, BIN_DIR))
    return path


class Cluster:
    """Start with ``start()``; ``master_nodes`` and ``name`` are what a client needs."""

    def __init__(self, name='pytest', storages=2, replicas=1, partitions=6):
        self.name = name
        self.storages = storages
        self.replicas = replicas
        self.partitions = partitions
        self.dir = tempfile.mkdtemp(prefix='neo-python-', dir=TMP)
        self.master_nodes = '127.0.0.1:%d' % free_port()
        self.admin = '127.0.0.1:%d' % free_port()
        self.nodes = []

    def _spawn(self, prog, label, *args):
        log = open(os.path.join(self.dir, label + '.log'), 'ab')
        cmd = [program(prog), '--cluster', self.name,
               '--masters', self.master_nodes] + list(args)
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                             stderr=subprocess.STDOUT, start_new_session=True,
                             preexec_fn=_die_with_parent)
        log.close()
        self.nodes.append((label, p))

    def start(self):
        self._spawn('neomaster', 'master', '--bind', self.master_nodes,
                    '--autostart', str(self.storages),
                    '--replicas', str(self.replicas),
                    '--partitions', str(self.partitions))
        for i in range(self.storages):
            self._spawn('neostorage', 'storage%d' % (i + 1),
                        '--bind', '127.0.0.1:0', '--database',
                        os.path.join(self.dir, 'storage%d.sqlite' % (i + 1)))
        self._spawn('neoadmin', 'admin', '--bind', self.admin)
        return self

    def check_alive(self):
        for label, p in self.nodes:
            if p.poll() is not None:
                raise RuntimeError('%s exited (%s):\n%s'
                                   % (label, p.returncode, self.logs()))

    def logs(self):
        out = []
        for label, _ in self.nodes:
            try:
                with open(os.path.join(self.dir, label + '.log'), 'rb') as f:
                    tail = f.read()[-3000:].decode('utf-8', 'replace')
            except OSError:
                tail = ''
            out.append('--- %s\n%s' % (label, tail))
        return '\n'.join(out)

    def storage(self, **kw):
        """A client Storage of this cluster."""
        from neo.client.Storage import Storage
        kw.setdefault('connect_timeout', 60)
        try:
            return Storage(self.master_nodes, self.name, **kw)
        except Exception:
            self.check_alive()
            raise

    def stop(self):
        """Stop every node: the master first (so that it marks no storage out of
        date), then the others; SIGTERM, then SIGKILL."""
        masters = [p for label, p in self.nodes if label == 'master']
        others = [p for label, p in self.nodes if label != 'master']
        for wave in masters, others:
            for p in wave:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            deadline = time.time() + STOP_TIMEOUT
            for p in wave:
                try:
                    p.wait(max(0.1, deadline - time.time()))
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        self.nodes = []

    def restart(self):
        """Stop and start again on the same databases and addresses."""
        self.stop()
        return self.start()

    def destroy(self):
        self.stop()
        if os.environ.get('NEO_TEST_KEEP'):
            print('cluster kept in', self.dir)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)
