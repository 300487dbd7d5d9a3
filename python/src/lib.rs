//! `neo.client._neo`: the native half of the Python package. It wraps `neo::client::Client`
//! one call for one call, in ZODB's terms (oids and tids as 8-byte big-endian strings), and
//! releases the GIL around every call that may wait on the network, so that an application's
//! threads run in parallel. ZODB's semantics (exceptions, conflict resolution, invalidating
//! `ZODB.DB`) live in the Python half (`neo/client/Storage.py`): errors leave here through
//! the factory that module registers (`set_error_factory`), so that they are ZODB's own
//! exception classes.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use neo::client::{
    Address, Client as Core, ClientError, Loaded, Notice, Oid, Options, Tid, Transaction,
    TransactionInfo, TransactionMeta, TransactionRecords,
};
use pyo3::exceptions::{PyException, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

pyo3::create_exception!(
    _neo,
    Error,
    PyException,
    "A client error, when no factory is registered: args (kind, message, oid, serial, other)."
);

/// Builds the exception for a `ClientError` (set by `neo.client.Storage`).
static ERROR_FACTORY: OnceLock<Py<PyAny>> = OnceLock::new();

fn p64(py: Python<'_>, v: u64) -> Bound<'_, PyBytes> {
    PyBytes::new(py, &v.to_be_bytes())
}

fn u64_of(what: &str, b: &[u8]) -> PyResult<u64> {
    let a: [u8; 8] = b
        .try_into()
        .map_err(|_| PyValueError::new_err(format!("{what} must be 8 bytes, not {}", b.len())))?;
    Ok(u64::from_be_bytes(a))
}

fn oid_of(b: &[u8]) -> PyResult<Oid> {
    u64_of("an oid", b).map(Oid)
}

fn tid_of(b: &[u8]) -> PyResult<Tid> {
    u64_of("a tid", b).map(Tid)
}

/// The Python exception for `e`: (kind, message, oid, serial, other) to the factory.
fn py_err(py: Python<'_>, e: ClientError) -> PyErr {
    let message = e.to_string();
    let (kind, oid, serial, other) = match &e {
        ClientError::Conflict {
            oid,
            serial,
            committed,
        } => ("Conflict", Some(oid.0), Some(serial.0), Some(committed.0)),
        ClientError::ReadConflict {
            oid,
            serial,
            current,
        } => ("ReadConflict", Some(oid.0), Some(serial.0), Some(current.0)),
        ClientError::DoesNotExist(oid) => ("DoesNotExist", Some(oid.0), None, None),
        ClientError::NotFound(oid) => ("NotFound", Some(oid.0), None, None),
        ClientError::WrongChecksum { oid, serial } => {
            ("WrongChecksum", Some(oid.0), Some(serial.0), None)
        }
        ClientError::ReadOnly => ("ReadOnly", None, None, None),
        ClientError::Unavailable(_) => ("Unavailable", None, None, None),
        ClientError::TransactionFailed(_) => ("TransactionFailed", None, None, None),
        ClientError::OutcomeUnknown(_) => ("OutcomeUnknown", None, None, None),
        ClientError::Invalid(_) => ("Invalid", None, None, None),
        ClientError::UnknownTransaction(tid) => ("UnknownTransaction", None, Some(tid.0), None),
        ClientError::UndoFailed(_) => ("UndoFailed", None, None, None),
        ClientError::Closed => ("Closed", None, None, None),
    };
    let b = |v: Option<u64>| v.map(|v| p64(py, v).unbind());
    let args = (kind, message.clone(), b(oid), b(serial), b(other));
    match ERROR_FACTORY.get() {
        Some(f) => match f.call1(py, args) {
            Ok(exc) => PyErr::from_value(exc.into_bound(py)),
            Err(failed) => failed,
        },
        None => Error::new_err(args),
    }
}

/// Register the function that turns a client error into the exception to raise.
#[pyfunction]
fn set_error_factory(factory: Py<PyAny>) -> PyResult<()> {
    ERROR_FACTORY
        .set(factory)
        .map_err(|_| PyValueError::new_err("the error factory is already set"))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A connected client of one cluster (`neo::client::Client`).
#[pyclass(module = "neo.client._neo", frozen)]
struct Client {
    inner: Core,
}

/// An open transaction (from `tpc_begin`), until `tpc_finish` or `tpc_abort`.
#[pyclass(module = "neo.client._neo", frozen)]
struct Txn {
    inner: Mutex<Option<Transaction>>,
    ttid: u64,
}

impl Txn {
    /// Run `f` on the open transaction; a finished or aborted one is an error.
    fn with<T>(
        &self,
        f: impl FnOnce(&Transaction) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        match lock(&self.inner).as_ref() {
            Some(t) => f(t),
            None => Err(ClientError::Invalid("the transaction is over".into())),
        }
    }

    fn take(&self) -> Result<Transaction, ClientError> {
        lock(&self.inner)
            .take()
            .ok_or_else(|| ClientError::Invalid("the transaction is over".into()))
    }
}

#[pymethods]
impl Txn {
    /// The temporary TID (8 bytes).
    #[getter]
    fn ttid<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        p64(py, self.ttid)
    }
}

fn data<'py>(py: Python<'py>, d: Option<Vec<u8>>) -> Option<Bound<'py, PyBytes>> {
    d.map(|d| PyBytes::new(py, &d))
}

/// (data or None, serial, next serial or None, data serial or None)
type LoadedPy<'py> = (
    Option<Bound<'py, PyBytes>>,
    Bound<'py, PyBytes>,
    Option<Bound<'py, PyBytes>>,
    Option<Bound<'py, PyBytes>>,
);

fn loaded(py: Python<'_>, l: Loaded) -> LoadedPy<'_> {
    (
        data(py, l.data),
        p64(py, l.serial.0),
        l.next_serial.map(|t| p64(py, t.0)),
        l.data_serial.map(|t| p64(py, t.0)),
    )
}

/// (tid, user, description, extension, packed, oids)
type InfoPy<'py> = (
    Bound<'py, PyBytes>,
    Bound<'py, PyBytes>,
    Bound<'py, PyBytes>,
    Bound<'py, PyBytes>,
    bool,
    Vec<Bound<'py, PyBytes>>,
);

fn info(py: Python<'_>, i: TransactionInfo) -> InfoPy<'_> {
    (
        p64(py, i.tid.0),
        PyBytes::new(py, &i.user),
        PyBytes::new(py, &i.description),
        PyBytes::new(py, &i.extension),
        i.packed,
        i.oids.iter().map(|o| p64(py, o.0)).collect(),
    )
}

/// (oid, data or None, data serial or None)
type RecordPy<'py> = (
    Bound<'py, PyBytes>,
    Option<Bound<'py, PyBytes>>,
    Option<Bound<'py, PyBytes>>,
);

fn records(py: Python<'_>, t: TransactionRecords) -> (InfoPy<'_>, Vec<RecordPy<'_>>) {
    let records = t
        .records
        .into_iter()
        .map(|r| {
            (
                p64(py, r.oid.0),
                data(py, r.data),
                r.data_serial.map(|t| p64(py, t.0)),
            )
        })
        .collect();
    (info(py, t.info), records)
}

#[pymethods]
impl Client {
    /// Connect to cluster `name` through any of `masters` ("host:port" strings) and wait
    /// until it serves, at most `connect_timeout` seconds.
    #[new]
    #[pyo3(signature = (masters, name, read_only=false, compress=true, cache_size=None, connect_timeout=30.0))]
    fn new(
        py: Python<'_>,
        masters: Vec<String>,
        name: String,
        read_only: bool,
        compress: bool,
        cache_size: Option<u64>,
        connect_timeout: f64,
    ) -> PyResult<Client> {
        if masters.is_empty() {
            return Err(PyValueError::new_err("no master address given"));
        }
        let masters = masters
            .iter()
            .map(|m| {
                Address::parse_with_default(m.trim(), Some(neo::config::MASTER_PORT))
                    .map_err(|e| PyValueError::new_err(format!("master address {m:?}: {e}")))
            })
            .collect::<PyResult<Vec<_>>>()?;
        if name.is_empty() {
            return Err(PyValueError::new_err("no cluster name given"));
        }
        if !(connect_timeout.is_finite() && connect_timeout > 0.0) {
            return Err(PyValueError::new_err("connect_timeout must be positive"));
        }
        let mut options = Options::new(name, masters);
        options.read_only = read_only;
        options.compress = compress;
        if let Some(size) = cache_size {
            options.cache_size = size;
        }
        options.connect_timeout = Duration::from_secs_f64(connect_timeout);
        let inner = py
            .detach(|| Core::connect(options))
            .map_err(|e| py_err(py, e))?;
        Ok(Client { inner })
    }

    /// `count` fresh oids.
    fn new_oids<'py>(&self, py: Python<'py>, count: u32) -> PyResult<Vec<Bound<'py, PyBytes>>> {
        let oids = py
            .detach(|| self.inner.new_oids(count))
            .map_err(|e| py_err(py, e))?;
        Ok(oids.into_iter().map(|o| p64(py, o.0)).collect())
    }

    /// The latest revision: (data or None, serial, next serial, data serial).
    fn load<'py>(&self, py: Python<'py>, oid: &[u8]) -> PyResult<LoadedPy<'py>> {
        let oid = oid_of(oid)?;
        let l = py
            .detach(|| self.inner.load(oid))
            .map_err(|e| py_err(py, e))?;
        Ok(loaded(py, l))
    }

    /// The revision current just before `tid`; None if the object exists but has no
    /// revision before `tid` (ZODB's loadBefore).
    fn load_before<'py>(
        &self,
        py: Python<'py>,
        oid: &[u8],
        tid: &[u8],
    ) -> PyResult<Option<LoadedPy<'py>>> {
        let (oid, tid) = (oid_of(oid)?, tid_of(tid)?);
        match py.detach(|| self.inner.load_before(oid, tid)) {
            Ok(l) => Ok(Some(loaded(py, l))),
            Err(ClientError::NotFound(_)) => Ok(None),
            Err(e) => Err(py_err(py, e)),
        }
    }

    /// The revision committed by `serial`.
    fn load_serial<'py>(
        &self,
        py: Python<'py>,
        oid: &[u8],
        serial: &[u8],
    ) -> PyResult<LoadedPy<'py>> {
        let (oid, serial) = (oid_of(oid)?, tid_of(serial)?);
        let l = py
            .detach(|| self.inner.load_serial(oid, serial))
            .map_err(|e| py_err(py, e))?;
        Ok(loaded(py, l))
    }

    /// The last TID this client knows committed, or None.
    fn last_transaction<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let t = py
            .detach(|| self.inner.last_transaction())
            .map_err(|e| py_err(py, e))?;
        Ok(t.map(|t| p64(py, t.0)))
    }

    /// Ask the cluster for its last TID; returns once the invalidation callback went
    /// through every invalidation up to it.
    fn sync<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let t = py.detach(|| self.inner.sync()).map_err(|e| py_err(py, e))?;
        Ok(t.map(|t| p64(py, t.0)))
    }

    #[pyo3(signature = (tid=None))]
    fn tpc_begin(&self, py: Python<'_>, tid: Option<&[u8]>) -> PyResult<Txn> {
        let tid = tid.map(tid_of).transpose()?;
        let t = py
            .detach(|| self.inner.tpc_begin(tid))
            .map_err(|e| py_err(py, e))?;
        Ok(Txn {
            ttid: t.ttid().0,
            inner: Mutex::new(Some(t)),
        })
    }

    /// Store `data` (None: delete) for `oid` based on `serial`.
    fn store(
        &self,
        py: Python<'_>,
        txn: &Txn,
        oid: &[u8],
        serial: &[u8],
        data: Option<Vec<u8>>,
    ) -> PyResult<()> {
        let (oid, serial) = (oid_of(oid)?, tid_of(serial)?);
        py.detach(|| txn.with(|t| self.inner.store(t, oid, serial, data)))
            .map_err(|e| py_err(py, e))
    }

    fn check_current_serial(
        &self,
        py: Python<'_>,
        txn: &Txn,
        oid: &[u8],
        serial: &[u8],
    ) -> PyResult<()> {
        let (oid, serial) = (oid_of(oid)?, tid_of(serial)?);
        py.detach(|| txn.with(|t| self.inner.check_current_serial(t, oid, serial)))
            .map_err(|e| py_err(py, e))
    }

    /// Vote. Each conflict goes to `resolver(oid, committed, serial, data)`, which returns
    /// the resolved data or None to give up; an exception it raises ends the vote with it.
    fn tpc_vote(
        &self,
        py: Python<'_>,
        txn: &Txn,
        user: Vec<u8>,
        description: Vec<u8>,
        extension: Vec<u8>,
        resolver: Py<PyAny>,
    ) -> PyResult<()> {
        let meta = TransactionMeta {
            user,
            description,
            extension,
        };
        let mut raised: Option<PyErr> = None;
        let result = py.detach(|| {
            txn.with(|t| {
                self.inner.tpc_vote(t, &meta, |c| {
                    Python::attach(|py| {
                        let args = (
                            p64(py, c.oid.0),
                            p64(py, c.committed.0),
                            p64(py, c.serial.0),
                            data(py, c.data.clone()),
                        );
                        resolve(py, &resolver, args, &mut raised)
                    })
                })
            })
        });
        match (result, raised) {
            (Ok(()), _) => Ok(()),
            (Err(_), Some(e)) => Err(e),
            (Err(e), None) => Err(py_err(py, e)),
        }
    }

    /// Commit; returns the TID.
    fn tpc_finish<'py>(&self, py: Python<'py>, txn: &Txn) -> PyResult<Bound<'py, PyBytes>> {
        let tid = py
            .detach(|| txn.take().and_then(|t| self.inner.tpc_finish(t)))
            .map_err(|e| py_err(py, e))?;
        Ok(p64(py, tid.0))
    }

    /// Abort; a transaction already over is left alone.
    fn tpc_abort(&self, py: Python<'_>, txn: &Txn) -> PyResult<()> {
        // The transaction's lock may be held by a vote waiting for the GIL (resolving).
        py.detach(|| match lock(&txn.inner).take() {
            Some(t) => self.inner.tpc_abort(t),
            None => Ok(()),
        })
        .map_err(|e| py_err(py, e))
    }

    /// A committed transaction: (tid, user, description, extension, packed, oids).
    fn transaction_info<'py>(&self, py: Python<'py>, tid: &[u8]) -> PyResult<InfoPy<'py>> {
        let tid = tid_of(tid)?;
        let i = py
            .detach(|| self.inner.transaction_info(tid))
            .map_err(|e| py_err(py, e))?;
        Ok(info(py, i))
    }

    /// Undo transaction `tid` within `txn`; returns the oids it stores. An object changed
    /// since goes to `resolver(oid, current serial, tid, data to undo to, current data)`,
    /// which returns merged data or None (the undo fails); an exception it raises ends
    /// the undo with it.
    fn undo<'py>(
        &self,
        py: Python<'py>,
        txn: &Txn,
        tid: &[u8],
        resolver: Py<PyAny>,
    ) -> PyResult<Vec<Bound<'py, PyBytes>>> {
        let tid = tid_of(tid)?;
        let mut raised: Option<PyErr> = None;
        let result = py.detach(|| {
            txn.with(|t| {
                self.inner
                    .undo(t, tid, |oid, current, undone, undo_data, data| {
                        Python::attach(|py| {
                            let args = (
                                p64(py, oid.0),
                                p64(py, current.0),
                                p64(py, undone.0),
                                undo_data.map(|d| PyBytes::new(py, d)),
                                data.map(|d| PyBytes::new(py, d)),
                            );
                            resolve(py, &resolver, args, &mut raised)
                        })
                    })
            })
        });
        match (result, raised) {
            (Ok(oids), _) => Ok(oids.iter().map(|o| p64(py, o.0)).collect()),
            (Err(_), Some(e)) => Err(e),
            (Err(e), None) => Err(py_err(py, e)),
        }
    }

    /// Up to `size` revisions of `oid`, newest first: (serial, size, transaction info).
    fn history<'py>(
        &self,
        py: Python<'py>,
        oid: &[u8],
        size: u32,
    ) -> PyResult<Vec<(Bound<'py, PyBytes>, u64, InfoPy<'py>)>> {
        let oid = oid_of(oid)?;
        let revs = py
            .detach(|| self.inner.history(oid, size))
            .map_err(|e| py_err(py, e))?;
        Ok(revs
            .into_iter()
            .map(|r| (p64(py, r.serial.0), r.size, info(py, r.info)))
            .collect())
    }

    /// Committed transactions newest first, skipping `first`, up to (excluding) `last`.
    fn undo_log<'py>(&self, py: Python<'py>, first: u64, last: u64) -> PyResult<Vec<InfoPy<'py>>> {
        let infos = py
            .detach(|| self.inner.undo_log(first, last))
            .map_err(|e| py_err(py, e))?;
        Ok(infos.into_iter().map(|i| info(py, i)).collect())
    }

    /// Committed TIDs in `min..=max`, ascending, at most `limit`.
    fn tids<'py>(
        &self,
        py: Python<'py>,
        min: &[u8],
        max: &[u8],
        limit: u32,
    ) -> PyResult<Vec<Bound<'py, PyBytes>>> {
        let (min, max) = (tid_of(min)?, tid_of(max)?);
        let tids = py
            .detach(|| self.inner.tids(min, max, limit))
            .map_err(|e| py_err(py, e))?;
        Ok(tids.into_iter().map(|t| p64(py, t.0)).collect())
    }

    /// Transaction `tid` and its records: (info, [(oid, data or None, data serial)]).
    fn transaction_records<'py>(
        &self,
        py: Python<'py>,
        tid: &[u8],
    ) -> PyResult<(InfoPy<'py>, Vec<RecordPy<'py>>)> {
        let tid = tid_of(tid)?;
        let t = py
            .detach(|| self.inner.transaction_records(tid))
            .map_err(|e| py_err(py, e))?;
        Ok(records(py, t))
    }

    /// Store a copied record: `data`, or a backpointer to `data_serial` when given.
    #[pyo3(signature = (txn, oid, serial, data, data_serial=None))]
    fn restore(
        &self,
        py: Python<'_>,
        txn: &Txn,
        oid: &[u8],
        serial: &[u8],
        data: Option<Vec<u8>>,
        data_serial: Option<&[u8]>,
    ) -> PyResult<()> {
        let (oid, serial) = (oid_of(oid)?, tid_of(serial)?);
        let data_serial = data_serial.map(tid_of).transpose()?;
        py.detach(|| txn.with(|t| self.inner.restore(t, oid, serial, data, data_serial)))
            .map_err(|e| py_err(py, e))
    }

    /// Pack the cluster at `tid`; returns once every storage packed.
    fn pack(&self, py: Python<'_>, tid: &[u8]) -> PyResult<()> {
        let tid = tid_of(tid)?;
        py.detach(|| self.inner.pack(tid))
            .map_err(|e| py_err(py, e))
    }

    /// Start loading `oids` (before `tid`, or the latest) into the cache; waits for none.
    #[pyo3(signature = (oids, tid=None))]
    fn prefetch(&self, py: Python<'_>, oids: Vec<Vec<u8>>, tid: Option<&[u8]>) -> PyResult<()> {
        let oids = oids
            .iter()
            .map(|o| oid_of(o))
            .collect::<PyResult<Vec<_>>>()?;
        let tid = tid.map(tid_of).transpose()?;
        py.detach(|| self.inner.prefetch(&oids, tid));
        Ok(())
    }

    /// Whether the cache holds the latest revision of `oid` (no round trip).
    fn cached(&self, oid: &[u8]) -> PyResult<bool> {
        Ok(self.inner.cached(oid_of(oid)?))
    }

    /// Call `callback(tid, oids)` for each invalidation, in commit order, from the
    /// library's invalidation thread; `callback(tid, None)` when every cached object may be
    /// stale. None removes the callback.
    fn on_invalidation(&self, py: Python<'_>, callback: Option<Py<PyAny>>) {
        // Replacing the callback waits for the one running, which may be waiting for the
        // GIL: release it meanwhile.
        let Some(cb) = callback else {
            py.detach(|| self.inner.on_invalidation(|_| {}));
            return;
        };
        py.detach(|| {
            self.inner.on_invalidation(move |n| {
                Python::attach(|py| {
                    let args = match n {
                        Notice::Invalidate { tid, oids } => (
                            Some(p64(py, tid.0)),
                            Some(oids.iter().map(|o| p64(py, o.0)).collect::<Vec<_>>()),
                        ),
                        Notice::InvalidateAll { tid } => (tid.map(|t| p64(py, t.0)), None),
                    };
                    if let Err(e) = cb.call1(py, args) {
                        e.write_unraisable(py, Some(cb.bind(py)));
                    }
                })
            })
        });
    }

    /// Stop the client; every later call fails.
    fn close(&self, py: Python<'_>) {
        py.detach(|| {
            self.inner.on_invalidation(|_| {});
            self.inner.close()
        });
    }
}

#[pymodule]
fn _neo(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Client>()?;
    m.add_class::<Txn>()?;
    m.add("Error", m.py().get_type::<Error>())?;
    m.add_function(wrap_pyfunction!(set_error_factory, m)?)?;
    Ok(())
}

/// Call a Python conflict resolver: its bytes, or None when it gives up (returns None) or
/// raises, the exception kept in `raised` to be re-raised once the call is over.
fn resolve<'py>(
    py: Python<'py>,
    resolver: &Py<PyAny>,
    args: impl pyo3::call::PyCallArgs<'py>,
    raised: &mut Option<PyErr>,
) -> Option<Vec<u8>> {
    let result = resolver.call1(py, args).and_then(|r| {
        let r = r.into_bound(py);
        if r.is_none() {
            return Ok(None);
        }
        let data = r.cast::<PyBytes>().map_err(PyErr::from)?;
        Ok(Some(data.as_bytes().to_vec()))
    });
    result.unwrap_or_else(|e| {
        *raised = Some(e);
        None
    })
}
