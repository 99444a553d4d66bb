//! A convenient handle for in-process clients (a VMM's own back-ends, a toolstack in the
//! same image, tests): the store's operations for one connection, returning owned values.

use alloc::vec::Vec;

use super::{ConnId, Store, TxId, WatchEvent};
use crate::error::XsResult;
use crate::perms::Perm;

/// One connection's view of the store, optionally inside a transaction.
///
/// # Examples
///
/// ```
/// use xs_core::perms::{Access, Perm};
/// use xs_core::{DomId, Store, StoreConfig};
///
/// # let entropy = [0x243f_6a88_85a3_08d3, 0x1319_8a2e_0370_7344];
/// let mut store = Store::new(StoreConfig::new(entropy))?;
/// let dom0 = store.connect(DomId::DOM0)?;
/// let mut s = store.session(dom0);
/// s.write("/vm/1/name", b"guest")?;
/// s.set_perms("/vm/1", &[Perm::owner(DomId::DOM0), Perm::new(DomId(1), Access::READ)])?;
/// s.watch("/vm/1", "vm1", None)?;
/// assert_eq!(s.drain_events(), [(b"/vm/1".to_vec(), b"vm1".to_vec())]);
///
/// // A transaction: nothing is visible until the commit, which fires the watch.
/// let tx = s.transaction_start()?;
/// s.in_tx(tx).write("/vm/1/state", b"running")?;
/// assert!(s.read("/vm/1/state").is_err());
/// s.transaction_end(tx, true)?;
/// assert_eq!(s.read("/vm/1/state")?, b"running");
/// assert_eq!(s.drain_events()[0].0, b"/vm/1/state");
/// # Ok::<(), xs_core::XsError>(())
/// ```
#[derive(Debug)]
pub struct Session<'a> {
    store: &'a mut Store,
    conn: ConnId,
    tx: TxId,
}

impl Store {
    /// A handle for `conn`, outside any transaction.
    pub fn session(&mut self, conn: ConnId) -> Session<'_> {
        Session {
            store: self,
            conn,
            tx: 0,
        }
    }
}

impl Session<'_> {
    /// The same connection inside transaction `tx` (0 for none).
    pub fn in_tx(&mut self, tx: TxId) -> Session<'_> {
        Session {
            store: self.store,
            conn: self.conn,
            tx,
        }
    }

    /// The connection.
    pub fn conn(&self) -> ConnId {
        self.conn
    }

    /// The value of `path`.
    pub fn read(&mut self, path: &str) -> XsResult<Vec<u8>> {
        let mut out = Vec::new();
        self.store
            .read(self.conn, self.tx, path.as_bytes(), &mut out)?;
        Ok(out)
    }

    /// Writes `value` at `path`.
    pub fn write(&mut self, path: &str, value: &[u8]) -> XsResult<()> {
        self.store.write(self.conn, self.tx, path.as_bytes(), value)
    }

    /// Makes sure `path` exists.
    pub fn mkdir(&mut self, path: &str) -> XsResult<()> {
        self.store.mkdir(self.conn, self.tx, path.as_bytes())
    }

    /// Removes `path` and everything below.
    pub fn rm(&mut self, path: &str) -> XsResult<()> {
        self.store.rm(self.conn, self.tx, path.as_bytes())
    }

    /// The names of `path`'s children, in order.
    pub fn directory(&mut self, path: &str) -> XsResult<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        self.store
            .directory(self.conn, self.tx, path.as_bytes(), &mut out)?;
        Ok(split_names(&out))
    }

    /// The permissions of `path`.
    pub fn get_perms(&mut self, path: &str) -> XsResult<Vec<Perm>> {
        self.store.get_perms(self.conn, self.tx, path.as_bytes())
    }

    /// Sets the permissions of `path`.
    pub fn set_perms(&mut self, path: &str, perms: &[Perm]) -> XsResult<()> {
        self.store
            .set_perms(self.conn, self.tx, path.as_bytes(), perms)
    }

    /// Watches `path` with `token`: events for changes at `path` and, with `depth`
    /// `Some(n)`, at most `n` levels below it (`XENSTORE_SERVER_FEATURE_WATCHDEPTH`), or at
    /// any depth with `None`.
    pub fn watch(&mut self, path: &str, token: &str, depth: Option<u32>) -> XsResult<()> {
        self.store
            .watch(self.conn, path.as_bytes(), token.as_bytes(), depth)
    }

    /// Removes a watch.
    pub fn unwatch(&mut self, path: &str, token: &str) -> XsResult<()> {
        self.store
            .unwatch(self.conn, path.as_bytes(), token.as_bytes())
    }

    /// Starts a transaction and returns its id (use it with [`Session::in_tx`]).
    pub fn transaction_start(&mut self) -> XsResult<TxId> {
        self.store.transaction_start(self.conn)
    }

    /// Commits (`true`) or aborts a transaction.
    pub fn transaction_end(&mut self, tx: TxId, commit: bool) -> XsResult<()> {
        self.store.transaction_end(self.conn, tx, commit)
    }

    /// The next queued watch event.
    pub fn pop_event(&mut self) -> Option<WatchEvent> {
        self.store.pop_event(self.conn)
    }

    /// All queued watch events as (path, token) strings.
    pub fn drain_events(&mut self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut out = Vec::new();
        while let Some(e) = self.store.pop_event(self.conn) {
            out.push((e.path.to_vec(), e.token.to_vec()));
        }
        out
    }
}

/// Splits a NUL-terminated name list (a `DIRECTORY` reply) into names.
pub fn split_names(list: &[u8]) -> Vec<Vec<u8>> {
    list.split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}
