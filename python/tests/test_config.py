"""The ZConfig section (``%import neo.client``, ``<NEOStorage>``), the ``neo://`` zodburi
resolver, and the README's two snippets, against a real cluster."""
import os
import re
import unittest

import transaction
import ZODB.config
import zodburi
from ZODB.POSException import ReadOnlyError

from cluster import Cluster, ROOT
from neo.client import zodburi as neo_uri


def readme_blocks():
    """The fenced blocks of the README's "ZODB applications" section, by language."""
    with open(os.path.join(ROOT, 'README.md')) as f:
        text = f.read()
    section = text.split('## ZODB applications', 1)[1].split('\n## ', 1)[0]
    return re.findall(r'```(\w*)\n(.*?)```', section, re.S)


class ClusterCase(unittest.TestCase):
    cluster = None

    @classmethod
    def setUpClass(cls):
        cls.cluster = Cluster().start()
        cls.cluster.storage().close()  # waits until it serves

    @classmethod
    def tearDownClass(cls):
        cls.cluster.destroy()

    def ours(self, text):
        """The README's addresses and name replaced by this cluster's."""
        return (text.replace('127.0.0.1:10000', self.cluster.master_nodes)
                    .replace('neosimple', self.cluster.name))


class ZConfig(ClusterCase):

    def config(self, extra='', db=True):
        section = self.ours('''
              <NEOStorage>
                master_nodes 127.0.0.1:10000
                name neosimple
                %s
              </NEOStorage>''' % extra)
        if db:
            section = '<zodb>\n%s\n</zodb>' % section
        return '%import neo.client\n' + section

    def test_section_opens_the_cluster(self):
        db = ZODB.config.databaseFromString(self.config(
            'compress zlib\ncache-size 5MB\nignore-wrong-checksum on'))
        try:
            with db.transaction() as conn:
                conn.root()['zconfig'] = 42
            with db.transaction() as conn:
                self.assertEqual(conn.root()['zconfig'], 42)
            self.assertEqual(db.storage.getName(), self.cluster.name)
        finally:
            db.close()

    def test_read_only(self):
        storage = ZODB.config.storageFromString(self.config('read-only true', db=False))
        try:
            self.assertTrue(storage.isReadOnly())
            self.assertRaises(ReadOnlyError, storage.new_oid)
        finally:
            storage.close()

    def test_name_and_masters_are_required(self):
        with self.assertRaises(Exception) as cm:
            ZODB.config.storageFromString('''
                %import neo.client
                <NEOStorage>
                  name x
                </NEOStorage>''')
        self.assertIn('master_nodes', str(cm.exception))

    def test_tls_is_refused_clearly(self):
        with self.assertRaises(ValueError) as cm:
            ZODB.config.storageFromString(self.config('ca %s' % __file__, db=False))
        self.assertIn('TLS', str(cm.exception))

    def test_bad_compress(self):
        with self.assertRaises(Exception) as cm:
            ZODB.config.storageFromString(self.config('compress lz4', db=False))
        self.assertIn('compress', str(cm.exception))


class URI(ClusterCase):

    def test_parse(self):
        self.assertEqual(
            neo_uri.parse('neo://main@h1:1,h2:2?read_only=on&cache_size=2MB'
                          '&connection_cache_size=7'),
            (['h1:1', 'h2:2'], 'main', {'read_only': True, 'cache_size': 2 << 20},
             {'connection_cache_size': '7'}))
        for bad in ('neo://h1:1', 'neo://main@', 'neos://main@h:1',
                    'neo://main@h:1?read_only=maybe'):
            self.assertRaises(ValueError, neo_uri.parse, bad)

    def test_resolver_entry_point(self):
        factory, dbkw = zodburi.resolve_uri(self.ours(
            'neo://neosimple@127.0.0.1:10000?connection_cache_size=100'))
        self.assertEqual(dbkw['cache_size'], 100)
        db = ZODB.DB(factory(), **dbkw)
        try:
            with db.transaction() as conn:
                conn.root()['uri'] = 'yes'
            with db.transaction() as conn:
                self.assertEqual(conn.root()['uri'], 'yes')
        finally:
            db.close()


class Readme(ClusterCase):

    def test_python_snippet(self):
        [code] = [c for lang, c in readme_blocks() if lang == 'python']
        exec(compile(self.ours(code), 'README.md', 'exec'), {})
        transaction.abort()

    def test_zope_conf_snippet(self):
        [conf] = [c for lang, c in readme_blocks() if lang == '']
        db = ZODB.config.databaseFromString(self.ours(
            conf.replace('<zodb_db main>', '<zodb main>')
                .replace('</zodb_db>', '</zodb>')
                .replace('mount-point /', '')))
        try:
            with db.transaction() as conn:
                # The Python snippet (run before or after) and this one share the cluster.
                conn.root()['conf'] = 1
        finally:
            db.close()
