"""NEO's own exceptions, for errors ZODB has no class of its own for.

Each is a ``ZODB.POSException.StorageError``, so that ZODB and applications handle them
as the storage errors they are.
"""
from ZODB.POSException import StorageError


class NEOStorageError(StorageError):
    """The cluster could not serve the request (no primary master, not operational, no
    storage answering, the client closed)."""


class NEOPrimaryMasterLost(NEOStorageError):
    """The transaction failed: it was aborted and nothing of it was committed."""


class NEOStorageUnknownOutcome(NEOStorageError):
    """The answer to tpc_finish was lost: the transaction may or may not have been
    committed."""


class NEOStorageWrongChecksumError(NEOStorageError):
    """Every replica of a record answered data whose checksum is wrong."""
