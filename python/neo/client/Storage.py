"""``Storage``: a NEO cluster as a ZODB storage (IStorage, IMultiCommitStorage,
IExternalGC, IStorageUndoable, IStorageIteration, IStorageRestoreable), over the Rust
client library (``neo.client._neo``).

This module owns ZODB's side of the contract: which ZODB exception each client error is,
the mapping from ZODB transaction objects to the library's open transactions, conflict
resolution through ZODB's ``tryToResolveConflict`` at vote and at undo, the dicts and
records ZODB's undo log, history and iterator give, and the delivery of the
library's invalidations to ``ZODB.DB``. ZODB wraps this storage in its MVCCAdapter
itself (it is not an IMVCCStorage).

The storage is shared by every thread of the application: the library serves concurrent
calls and several transactions at once, and releases the GIL while it waits on the
network.
"""
import logging
import threading
import time

import zope.interface
from ZODB import POSException
from ZODB.BaseStorage import DataRecord
from ZODB.BaseStorage import TransactionRecord
from ZODB.BaseStorage import copy as copy_transactions
from ZODB.ConflictResolution import ConflictResolvingStorage
from ZODB.interfaces import IExternalGC
from ZODB.interfaces import IMultiCommitStorage
from ZODB.interfaces import IStorage
from ZODB.interfaces import IStorageIteration
from ZODB.interfaces import IStorageRestoreable
from ZODB.interfaces import IStorageUndoable
from ZODB.TimeStamp import TimeStamp
from ZODB.utils import p64
from ZODB.utils import u64
from ZODB.utils import z64

from . import _neo
from .exception import NEOPrimaryMasterLost
from .exception import NEOStorageError
from .exception import NEOStorageUnknownOutcome
from .exception import NEOStorageWrongChecksumError

logger = logging.getLogger(__name__)

# How many oids one round trip to the master fetches ahead.
_OID_BATCH = 100
# How many TIDs the iterator asks at a time.
_ITERATOR_CHUNK = 100
_MAX_TID = b'\xff' * 8


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


def _ext_dict(extension):
    """The extension dict of a transaction's pickled extension ({} if unreadable)."""
    if not extension:
        return {}
    from ZODB._compat import loads
    try:
        ext = loads(extension)
    except Exception:
        logger.warning('unreadable transaction extension %r', extension[:64])
        return {}
    return ext if isinstance(ext, dict) else {}


def _log_entry(info):
    """undoLog's dict for a transaction (as FileStorage's): id (the TID itself), time,
    user_name, description and the extension's keys."""
    tid, user, description, extension, _packed, _oids = info
    d = {'id': tid, 'time': TimeStamp(tid).timeTime(), 'user_name': user,
         'description': description}
    d.update(_ext_dict(extension))
    return d


def _master_list(master_nodes):
    """'host:port host:port' (or a list of them) -> ['host:port', ...]"""
    if isinstance(master_nodes, str):
        master_nodes = master_nodes.replace(',', ' ').split()
    masters = [m.strip() for m in master_nodes if m.strip()]
    if not masters:
        raise ValueError('master_nodes: no master address given')
    return masters


@zope.interface.implementer(IStorage, IMultiCommitStorage, IExternalGC,
                            IStorageUndoable, IStorageIteration,
                            IStorageRestoreable)
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
        return True

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
            if txn is None:
                # Its tpc_begin has not returned yet.
                continue
            try:
                self._client.tpc_abort(txn.txn)
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

    def getTid(self, oid):
        """The serial of the current revision of ``oid`` (POSKeyError if deleted)."""
        return self.load(oid)[1]

    def loadSerial(self, oid, serial):
        data = self._client.load_serial(oid, serial)[0]
        if data is None:
            raise POSException.POSKeyError(oid)
        return data

    def history(self, oid, size=1):
        """Up to ``size`` revisions of ``oid``, newest first, as FileStorage gives them
        (time, tid, serial, user_name, description, size, and the extension's keys)."""
        if size is None or size < 1:
            size = 1
        result = []
        for serial, length, info in self._client.history(oid, min(size, 1 << 31)):
            d = _log_entry(info)
            del d['id']
            d.update(tid=serial, serial=serial, size=length)
            result.append(d)
        if not result:
            raise POSException.POSKeyError(oid)
        return result

    def prefetch(self, oids, tid=None):
        """Start loading ``oids`` (as of before ``tid``, ZODB's MVCC snapshot) into the
        cache, all at once, waiting for none: the connection's loads then find them
        there or join the load under way."""
        self._client.prefetch(list(oids), tid)

    # -- the transaction log: undo log, iterator -----------------------------

    def undoLog(self, first=0, last=-20, filter=None):
        """Transactions that can be undone (not packed), newest first, as dicts (see
        _log_entry); ``last`` < 0: at most -last of them. With ``filter``, ``first`` and ``last`` count the transactions
        it accepts."""
        if last < 0:
            last = first - last
        if last <= first:
            return []
        if filter is None:
            # Packed transactions (the oldest) cannot be undone: not listed.
            return [_log_entry(i) for i in self._client.undo_log(first, last)
                    if not i[4]]
        # The cluster counts every transaction: fetch more until enough pass.
        result = []
        seen = 0
        want = last
        while True:
            infos = self._client.undo_log(seen, want)
            for info in infos:
                if info[4]:
                    continue
                d = _log_entry(info)
                if filter(d):
                    result.append(d)
            seen += len(infos)
            if len(result) >= last or seen < want:
                return result[first:last]
            want = seen * 2

    def undoInfo(self, first=0, last=-20, specification=None):
        """undoLog, keeping the transactions whose dict has every item of
        ``specification``."""
        if specification:
            items = list(specification.items())

            def filter(d):
                return all(d.get(k) == v for k, v in items)
        else:
            filter = None
        return self.undoLog(first, last, filter)

    def iterator(self, start=None, stop=None):
        """The transactions with a TID in ``start``..``stop`` (inclusive), oldest
        first, with their records; status 'p' for a packed transaction (records the
        pack removed are left out)."""
        return _TransactionIterator(self._client, start or z64, stop or _MAX_TID)

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
        which must be above every committed one. ``status`` (a copied transaction's:
        ' ', or 'p' if packed in its source) is not kept: the cluster marks its own
        packed transactions."""
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

    def restore(self, oid, serial, data, version, prev_txn, transaction):
        """Store a record copied from another storage (IStorageRestoreable), in a
        transaction begun with its TID: ``data``, or a backpointer to the data of
        ``oid`` at ``prev_txn`` when that is given and either ``data`` is None or the
        revision there has the same data (None with no ``prev_txn``: a deletion).
        ``serial`` is the record's TID; the revision it replaces is the object's latest
        before it."""
        self._check_writable()
        if version:
            raise POSException.Unsupported('versions are not supported')
        txn = self._txn(transaction)
        if txn is None:
            raise POSException.StorageTransactionError('tpc_begin in progress')
        base = self._latest_before(oid, serial)
        data_serial = None
        if prev_txn is not None and prev_txn != z64:
            if data is None:
                data_serial = prev_txn
            else:
                # Kept a backpointer (as FileStorage does) when the revision it
                # points to is here with the same data.
                try:
                    if self._client.load_serial(oid, prev_txn)[0] == data:
                        data_serial = prev_txn
                except POSException.POSKeyError:
                    pass
        self._client.restore(txn.txn, oid, base, data, data_serial)

    def _latest_before(self, oid, tid):
        """The serial of the latest revision of ``oid`` before ``tid`` (z64 if none)."""
        try:
            r = self._client.load_before(oid, tid)
        except POSException.POSKeyError:
            return z64
        return z64 if r is None else r[1]

    def copyTransactionsFrom(self, other, verbose=False):
        """Copy every transaction of ``other`` (IStorageIteration) here, with its TID,
        metadata and records (undo records stay backpointers); the cluster must hold
        no transaction at or after the first one copied."""
        copy_transactions(other, self, verbose)

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
        """Undo the transaction ``transaction_id`` (an undoLog id: its TID) within
        ``transaction``; returns (tid, the oids it changes). An object changed since is merged
        by ZODB's conflict resolution (UndoError if it cannot be)."""
        self._check_writable()
        txn = self._txn(transaction)
        if txn is None:
            raise POSException.StorageTransactionError('tpc_begin in progress')
        if not isinstance(transaction_id, bytes) or len(transaction_id) != 8:
            raise POSException.UndoError(
                'not a transaction id: %r' % (transaction_id,))

        def resolve(oid, current, undone, undo_data, data):
            if undo_data is None or data is None:
                # Undoing a creation (or onto a deletion) cannot be merged.
                return None
            try:
                return self.tryToResolveConflict(
                    oid, current, undone, undo_data, data)
            except POSException.ConflictError:
                return None

        try:
            # (tid, oids) as FileStorage returns, the transaction's TID being the
            # temporary one until tpc_finish.
            return txn.txn.ttid, self._client.undo(txn.txn, transaction_id, resolve)
        except KeyError:
            raise POSException.UndoError(
                'no transaction %r' % (transaction_id,)) from None

    def tpc_transaction(self):
        # Several transactions may be in progress at once: there is no single one.
        return None

    def pack(self, t, referencesf, gc=False):
        """Pack at the TID of time ``t`` (capped at the last transaction): revisions
        that are not current as of it are removed on every storage. Unreferenced
        objects are not removed (NEO does no garbage collection: ``referencesf`` and
        ``gc`` are ignored; use zc.zodbdgc and deleteObject for that)."""
        self._check_writable()
        last = self._client.sync() or self._client.last_transaction()
        if last is None:
            return
        tid = TimeStamp(*time.gmtime(t)[:5] + (t % 60,)).raw()
        if tid > last:
            tid = last
        if tid == z64:
            return
        self._client.pack(tid)


class _TransactionIterator:
    """The transactions of a TID range, fetched ``_ITERATOR_CHUNK`` TIDs at a time
    (IStorageIteration's iterator: also usable with ``next``, and closable)."""

    def __init__(self, client, start, stop):
        self._client = client
        self._next = start
        self._stop = stop
        self._chunk = []
        self._done = start > stop

    def __iter__(self):
        return self

    def __next__(self):
        if not self._chunk:
            if self._done:
                raise StopIteration
            tids = self._client.tids(self._next, self._stop, _ITERATOR_CHUNK)
            if len(tids) < _ITERATOR_CHUNK or tids[-1] == _MAX_TID:
                self._done = True
            else:
                self._next = p64(u64(tids[-1]) + 1)
            tids.reverse()
            self._chunk = tids
            if not tids:
                raise StopIteration
        info, records = self._client.transaction_records(self._chunk.pop())
        return _Transaction(info, records)

    next = __next__

    def close(self):
        self._chunk = []
        self._done = True


class _Transaction(TransactionRecord):
    """One transaction of the iterator, iterating its records."""

    def __init__(self, info, records):
        tid, user, description, extension, packed, _oids = info
        TransactionRecord.__init__(
            self, tid, 'p' if packed else ' ', user, description, extension)
        self._records = [DataRecord(oid, tid, data, data_serial)
                         for oid, data, data_serial in records]

    def __iter__(self):
        return iter(self._records)


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
