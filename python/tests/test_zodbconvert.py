"""zodbconvert round trip: a FileStorage with history (several transactions, an undo, a
deletion) copied into a cluster with RelStorage's ``zodbconvert`` (config files with
<filestorage> and <NEOStorage> sections), then out of it into a new FileStorage; the
iterators of the three must agree on TIDs, metadata and records."""
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

import transaction
import ZODB
from BTrees.OOBTree import OOBTree
from persistent.mapping import PersistentMapping
from ZODB.FileStorage import FileStorage

from cluster import Cluster

ZODBCONVERT = os.path.join(os.path.dirname(sys.executable), 'zodbconvert')


def transactions(storage):
    """Everything an iterator tells, as comparable values (a backpointer's data is
    compared as the data it points to)."""
    out = []
    it = storage.iterator()
    try:
        for t in it:
            records = sorted((r.oid, r.data) for r in t)
            out.append((t.tid, t.user, t.description, t.extension, records))
    finally:
        if hasattr(it, 'close'):
            it.close()
    return out


class ZODBConvertRoundTrip(unittest.TestCase):

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix='neo-zodbconvert-')
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.cluster = Cluster(name='convert').start()
        self.addCleanup(self.cluster.destroy)

    def path(self, name):
        return os.path.join(self.dir, name)

    def make_source(self):
        db = ZODB.DB(FileStorage(self.path('src.fs')))
        conn = db.open()
        root = conn.root()
        root['tree'] = OOBTree()
        root['map'] = PersistentMapping(a=1)
        txn = transaction.get()
        txn.note('first')
        txn.setUser('alice')
        txn.setExtendedInfo('why', 'a test')
        txn.commit()
        for i in range(5):
            root['tree'][i] = 'value %d' % i
            root['map']['b'] = i
            transaction.get().note('change %d' % i)
            transaction.commit()
        del root['map']
        transaction.get().note('delete')
        transaction.commit()
        # Undo the deletion (a backpointer, to be kept as one by the copies).
        undone = db.undoLog(0, 1)[0]['id']
        db.undo(undone)
        transaction.get().note('undo')
        transaction.commit()
        conn.close()
        db.close()

    def convert(self, source, destination):
        """zodbconvert from ``source`` to ``destination``: (section type, its keys)."""
        config = self.path('convert.conf')
        with open(config, 'w') as f:
            f.write('%import neo.client\n')
            for name, (kind, keys) in (('source', source),
                                       ('destination', destination)):
                f.write('<%s %s>\n%s\n</%s>\n' % (kind, name, keys, kind))
        r = subprocess.run([ZODBCONVERT, config], capture_output=True,
                           text=True, timeout=600)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)

    def test_round_trip(self):
        self.make_source()
        neo = ('NEOStorage', 'master_nodes %s\nname %s'
               % (self.cluster.master_nodes, self.cluster.name))
        self.convert(('filestorage', 'path ' + self.path('src.fs')), neo)
        self.convert(neo, ('filestorage', 'path ' + self.path('back.fs')))

        src = FileStorage(self.path('src.fs'), read_only=True)
        back = FileStorage(self.path('back.fs'), read_only=True)
        neo_storage = self.cluster.storage()
        try:
            expected = transactions(src)
            # The root's creation, 'first', 5 changes, the deletion, the undo.
            self.assertEqual(len(expected), 9)
            self.assertIn(b'undo', [t[2] for t in expected])
            self.assertEqual(transactions(neo_storage), expected)
            self.assertEqual(transactions(back), expected)
            # The undo stayed a backpointer through the cluster and back.
            for storage in neo_storage, back:
                pointers = [[r.data_txn for r in t] for t in storage.iterator()
                            if t.description == b'undo']
                self.assertEqual(len(pointers), 1)
                self.assertTrue(pointers[0] and all(pointers[0]), pointers)
        finally:
            src.close()
            back.close()
            neo_storage.close()
