"""``Storage``: a NEO cluster as a ZODB storage (IStorage, IMultiCommitStorage,
IExternalGC), over the Rust client library (``neo.client._neo``).

This module owns ZODB's side of the contract: which ZODB exception each client error is,
the mapping from ZODB transaction objects to the library's open transactions, conflict
resolution through ZODB's ``tryToResolveConflict`` at vote, and the delivery of the
library's invalidations to ``ZODB.DB``. ZODB wraps this storage in its MVCCAdapter
itself (it is not an IMVCCStorage).

The storage is shared by every thread of the application: the library serves concurrent
calls and several transactions at once, and releases the GIL while it waits on the
network.
"""
import logging
import threading

import zope.interface
from ZODB import POSException
from ZODB.ConflictResolution import ConflictResolvingStorage
from ZODB.interfaces import IExternalGC
from ZODB.interfaces import IMultiCommitStorage
from ZODB.interfaces import IStorage
from ZODB.utils import z64

from . import _neo
from .exception import NEOPrimaryMasterLost
from .exception import NEOStorageError
from .exception import NEOStorageUnknownOutcome
from .exception import NEOStorageWrongChecksumError

logger = logging.getLogger(__name__)

# How many oids one round trip to the master fetches ahead.
_OID_BATCH = 100


def _error(kind, message, oid, serial, other):
    """The exception for a client error (the factory ``_neo`` calls)."""
    if kind == 'Conflict':
        # ZODB's serials: (the committed one, the one the store was based on).
        return POSException.ConflictError(oid=oid, serials=(other, serial))
    if kind == 'ReadConflict':
        return POSException.ReadConflictError(oid=oid, serials=(other, serial))
    if kind in ('DoesNotExist', 'NotFound'):
        return POSException.POSKeyError(oid)
    if kind == 'ReadOnly':
        return POSException.ReadOnlyError()
    if kind == 'Invalid':
        return POSException.StorageTransactionError(message)
    if kind == 'UndoFailed':
        return POSException.UndoError(message, oid)
    if kind == 'UnknownTransaction':
        return KeyError(serial)
    if kind == 'TransactionFailed':
        return NEOPrimaryMasterLost(message)
    if kind == 'OutcomeUnknown':
        return NEOStorageUnknownOutcome(message)
    if kind == 'WrongChecksum':
        return NEOStorageWrongChecksumError(message)
    return NEOStorageError(message)


_neo.set_error_factory(_error)


def _bytes(value):
    if value is None:
        return b''
    if isinstance(value, str):
        return value.encode('utf-8')
    return bytes(value)


def _extension(transaction):
    """The pickled extension dict, as ZODB's storages take it."""
    ext = getattr(transaction, 'extension_bytes', None)
    if ext is not None:
        return ext
    ext = getattr(transaction, 'extension', None) or getattr(
        transaction, '_extension', None)
    if not ext:
        return b''
    from ZODB._compat import dumps
    return dumps(ext, 2)


def _master_list(master_nodes):
    """'host:port host:port' (or a list of them) -> ['host:port', ...]"""
    if isinstance(master_nodes, str):
        master_nodes = master_nodes.replace(',', ' ').split()
    masters = [m.strip() for m in master_nodes if m.strip()]
    if not masters:
        raise ValueError('master_nodes: no master address given')
    return masters


@zope.interface.implementer(IStorage, IMultiCommitStorage, IExternalGC)
class Storage(ConflictResolvingStorage):
    """A NEO cluster as a ZODB storage.

    ``master_nodes``: the masters' addresses ("host:port", separated by spaces, or a
    list); ``name``: the cluster's name.
    """

    def __init__(self, master_nodes, name, read_only=False, compress=True,
                 cache_size=None, connect_timeout=30.0, **kw):
        _check_options(kw)
        self._master_nodes = _master_list(master_nodes)
        self._name = name
        self._read_only = bool(read_only)
        self._client = _neo.Client(
            self._master_nodes, name, read_only=self._read_only,
            compress=bool(compress), cache_size=cache_size,
            connect_timeout=connect_timeout)
        self._lock = threading.Lock()
        # ZODB transaction -> the library's open transaction
        self._txns = {}
        self._oids = []
        self._oid_lock = threading.Lock()
        self._db = None
        # With a DB: the last TID whose invalidations reached it (see lastTransaction).
        self._last_tid = self._client.last_transaction() or z64
        self._last_lock = threading.Lock()
        self._closed = False

    # -- the storage as a whole -------------------------------------------

    def getName(self):
        return self._name

    def sortKey(self):
        # Unique per cluster: ZODB orders the storages of one commit by it.
        return 'neo:%s@%s' % (self._name, ','.join(self._master_nodes))

    def getSize(self):
        # The cluster does not report the size of its database to clients.
        return 0

    def __len__(self):
        # The number of objects is not known to a client (0, as IStorage allows).
        return 0

    def isReadOnly(self):
        return self._read_only

    def supportsUndo(self):
        # Undo is not offered by the client library yet.
        return False

    def supportsVersions(self):
        return False

    def lastTransaction(self):
        # With a DB, only a TID whose invalidations the DB already has: ZODB starts a
        # connection's snapshot after it, and a snapshot ahead of the invalidations
        # would keep stale objects in the connection's cache.
        if self._db is None:
            return self._client.last_transaction() or z64
        return self._last_tid

    def _advance(self, tid):
        with self._last_lock:
            if tid > self._last_tid:
                self._last_tid = tid

    def sync(self, force=True):
        """Catch up with the cluster: invalidations up to its last transaction are
        delivered to the DB before this returns."""
        if force:
            tid = self._client.sync()
            if tid is not None:
                self._advance(tid)

    def registerDB(self, db):
        super().registerDB(db)
        self._last_tid = self._client.last_transaction() or z64
        self._db = db
        self._client.on_invalidation(self._invalidate)

    def _invalidate(self, tid, oids):
        # Called by the library's invalidation thread, one transaction at a time, in
        # commit order.
        db = self._db
        if db is None:
            return
        if oids is None:
            db.invalidateCache()
            if tid is not None:
                with self._last_lock:
                    self._last_tid = tid
        else:
            db.invalidate(tid, set(oids))
            self._advance(tid)

    def close(self):
        if self._closed:
            return
        self._closed = True
        self._db = None
        with self._lock:
            txns, self._txns = self._txns, {}
        for txn in txns.values():
            try:
                self._client.tpc_abort(txn)
            except POSException.POSError:
                pass
        self._client.close()

    # -- reads -------------------------------------------------------------

    def load(self, oid, version=''):
        if version:
            raise POSException.Unsupported('versions are not supported')
        data, serial, _, _ = self._client.load(oid)
        if data is None:
            raise POSException.POSKeyError(oid)
        return data, serial

    def loadBefore(self, oid, tid):
        # None: the object exists, but has no revision before tid; an object with no
        # revision at all is a POSKeyError.
        r = self._client.load_before(oid, tid)
        if r is None:
            return None
        data, serial, next_serial, _ = r
        if data is None:
            # Deleted (or its creation undone), as of tid.
            raise POSException.POSKeyError(oid)
        return data, serial, next_serial

    def loadSerial(self, oid, serial):
        data = self._client.load_serial(oid, serial)[0]
        if data is None:
            raise POSException.POSKeyError(oid)
        return data

    def history(self, oid, size=1):
        raise POSException.Unsupported('history is not offered by this client yet')

    # -- writes ------------------------------------------------------------

    def _check_writable(self):
        if self._read_only:
            raise POSException.ReadOnlyError()

    def new_oid(self):
        self._check_writable()
        with self._oid_lock:
            if not self._oids:
                self._oids = self._client.new_oids(_OID_BATCH)
                self._oids.reverse()
            return self._oids.pop()

    def _txn(self, transaction):
        try:
            return self._txns[transaction]
        except KeyError:
            raise POSException.StorageTransactionError(
                'transaction %r is not in progress on this storage'
                % (transaction,)) from None

    def tpc_begin(self, transaction, tid=None, status=' '):
        """Begin; ``tid`` imposes the transaction's TID (restore, copying a database),
        which must be above every committed one."""
        self._check_writable()
        with self._lock:
            if transaction in self._txns:
                raise POSException.StorageTransactionError(
                    'duplicate tpc_begin for %r' % (transaction,))
            # Claim the slot so that two threads cannot begin it twice.
            self._txns[transaction] = None
        try:
            txn = self._client.tpc_begin(tid)
        except BaseException:
            with self._lock:
                self._txns.pop(transaction, None)
            raise
        with self._lock:
            self._txns[transaction] = _Txn(txn)

    def store(self, oid, serial, data, version, transaction):
        self._check_writable()
        if version:
            raise POSException.Unsupported('versions are not supported')
        txn = self._txn(transaction)
        if txn is None:
            raise POSException.StorageTransactionError('tpc_begin in progress')
        self._client.store(txn.txn, oid, serial or z64, data)

    def deleteObject(self, oid, serial, transaction):
        self._check_writable()
        txn = self._txn(transaction)
        self._client.store(txn.txn, oid, serial, None)

    def checkCurrentSerialInTransaction(self, oid, serial, transaction):
        self._check_writable()
        txn = self._txn(transaction)
        self._client.check_current_serial(txn.txn, oid, serial)

    def tpc_vote(self, transaction):
        """Vote; conflicts are resolved with ZODB's conflict resolution and stored
        again. Returns the oids whose stored data was resolved."""
        txn = self._txn(transaction)
        resolved = []
        failure = []

        def resolve(oid, committed, serial, data):
            if data is None:
                # A deletion cannot be merged with anything.
                return None
            try:
                new = self.tryToResolveConflict(oid, committed, serial, data)
            except POSException.ConflictError as e:
                failure.append(e)
                return None
            resolved.append(oid)
            return new

        try:
            self._client.tpc_vote(
                txn.txn, _bytes(transaction.user),
                _bytes(transaction.description), _extension(transaction),
                resolve)
        except POSException.ConflictError as e:
            if failure and not isinstance(e, POSException.ReadConflictError):
                # ZODB's own error, with the object's class when it could tell.
                raise failure[-1] from None
            raise
        return resolved

    def tpc_finish(self, transaction, f=None):
        txn = self._txn(transaction)
        try:
            tid = self._client.tpc_finish(txn.txn)
        finally:
            with self._lock:
                self._txns.pop(transaction, None)
        if f is not None:
            f(tid)
        self._advance(tid)
        return tid

    def tpc_abort(self, transaction):
        with self._lock:
            txn = self._txns.pop(transaction, None)
        if txn is not None:
            self._client.tpc_abort(txn.txn)

    def undo(self, transaction_id, transaction):
        self._check_writable()
        raise POSException.Unsupported('undo is not offered by this client yet')

    def tpc_transaction(self):
        # Several transactions may be in progress at once: there is no single one.
        return None

    def pack(self, t, referencesf, gc=False):
        raise POSException.Unsupported('pack is not offered by this client yet')


class _Txn:
    """One ZODB transaction in progress on the storage."""
    __slots__ = ('txn',)

    def __init__(self, txn):
        self.txn = txn


# Options NEO's Python client takes that this one accepts but has nothing to do with yet,
# and those it refuses until it supports them.
_ACCEPTED = ('dynamic_master_list', 'ignore_wrong_checksum', 'logfile', 'wait')
_TLS = ('ca', 'cert', 'key')


def _check_options(kw):
    for key, value in kw.items():
        if key in _TLS:
            if value:
                raise ValueError(
                    '%s: TLS is not supported by this client yet; remove ca, cert '
                    'and key to connect without TLS' % key)
        elif key not in _ACCEPTED:
            raise TypeError('Storage() got an unexpected option %r' % key)
