//! [`XsClient`]: the XenStore operations a driver uses, whether it calls the store in process
//! (an [`xs_core::Session`], a VMM's own backends) or over a ring (a guest's
//! [`crate::guest::Blocking`] client), so that code such as the [`crate::xenbus`] helper is
//! written once for both.

use alloc::vec::Vec;

use xs_core::perms::{self, Perm};
use xs_core::store::{Session, split_names};
use xs_core::wire::{Args, MsgType};
use xs_core::{TxId, XsError, XsResult};
use xs_ring::Page;

use crate::guest::{Blocking, Waiter};

/// Attempts [`XsClient::transaction`] makes before it gives up with `EAGAIN`.
pub const TRANSACTION_ATTEMPTS: usize = 64;

/// XenStore operations, each waiting for its answer. `tx` is a transaction id from
/// [`XsClient::transaction_start`], or 0 for none (or use [`XsClient::transaction`]). Paths
/// are absolute, or relative to the client's domain home (`/local/domain/<domid>`).
///
/// A [`Session`]'s own methods (no `tx` argument: it has `Session::in_tx`) take precedence
/// over these in method calls on a `Session`; code generic over `XsClient` (the
/// [`crate::xenbus`] helper) and [`XsClient::transaction`] use these.
pub trait XsClient {
    /// `READ`: the value of `path`.
    fn read(&mut self, tx: TxId, path: &str) -> XsResult<Vec<u8>>;

    /// `WRITE`: sets `path` to `value`, creating it (and missing parents).
    fn write(&mut self, tx: TxId, path: &str, value: &[u8]) -> XsResult<()>;

    /// `MKDIR`: makes sure `path` exists.
    fn mkdir(&mut self, tx: TxId, path: &str) -> XsResult<()>;

    /// `RM`: removes `path` and everything below it.
    fn rm(&mut self, tx: TxId, path: &str) -> XsResult<()>;

    /// `DIRECTORY`: the names of `path`'s children.
    fn directory(&mut self, tx: TxId, path: &str) -> XsResult<Vec<Vec<u8>>>;

    /// `GET_PERMS`: the permissions of `path`.
    fn get_perms(&mut self, tx: TxId, path: &str) -> XsResult<Vec<Perm>>;

    /// `SET_PERMS`: sets the permissions of `path` (the first entry names the owner and what
    /// every other domain may do).
    fn set_perms(&mut self, tx: TxId, path: &str, perms: &[Perm]) -> XsResult<()>;

    /// `WATCH`: events for changes at `path` and below it (at most `depth` levels below with
    /// `Some(depth)`), each carrying `token`. The store sends one event at once.
    fn watch(&mut self, path: &str, token: &str, depth: Option<u32>) -> XsResult<()>;

    /// `UNWATCH`.
    fn unwatch(&mut self, path: &str, token: &str) -> XsResult<()>;

    /// `TRANSACTION_START`.
    fn transaction_start(&mut self) -> XsResult<TxId>;

    /// `TRANSACTION_END`: commits (`true`) or aborts. A commit may fail with `EAGAIN`: the
    /// transaction conflicted and must be run again.
    fn transaction_end(&mut self, tx: TxId, commit: bool) -> XsResult<()>;

    /// The next watch event that has arrived, as (path, token), without waiting.
    fn next_event(&mut self) -> XsResult<Option<(Vec<u8>, Vec<u8>)>>;

    /// Runs `body` in a transaction and commits it, running it again while the commit
    /// conflicts (`EAGAIN`), at most [`TRANSACTION_ATTEMPTS`] times. `body` reads and writes
    /// through the [`Tx`] it is given. An error from `body` aborts the transaction and is
    /// returned.
    ///
    /// # Examples
    ///
    /// ```
    /// use xs_core::{DomId, Store, StoreConfig, XsError};
    /// use xs_serve::client::XsClient;
    ///
    /// # let entropy = [0x243f_6a88_85a3_08d3, 0x1319_8a2e_0370_7344];
    /// let mut store = Store::new(StoreConfig::new(entropy))?;
    /// let dom0 = store.connect(DomId::DOM0)?;
    /// let mut s = store.session(dom0);
    /// s.write("/counter", b"41")?;
    /// // A read-modify-write that no other writer can interleave with.
    /// let new = s.transaction(|t| {
    ///     let old: u32 = String::from_utf8_lossy(&t.read("/counter")?)
    ///         .parse()
    ///         .map_err(|_| XsError::Inval)?;
    ///     t.write("/counter", (old + 1).to_string().as_bytes())?;
    ///     Ok(old + 1)
    /// })?;
    /// assert_eq!(new, 42);
    /// // A failing body aborts: nothing it wrote is kept.
    /// let failed = s.transaction(|t| -> Result<(), XsError> {
    ///     t.write("/counter", b"0")?;
    ///     Err(XsError::Inval)
    /// });
    /// assert_eq!(failed, Err(XsError::Inval));
    /// assert_eq!(s.read("/counter")?, b"42");
    /// # Ok::<(), XsError>(())
    /// ```
    fn transaction<T>(
        &mut self,
        mut body: impl FnMut(&mut Tx<'_, Self>) -> XsResult<T>,
    ) -> XsResult<T>
    where
        Self: Sized,
    {
        for _ in 0..TRANSACTION_ATTEMPTS {
            let id = self.transaction_start()?;
            let value = match body(&mut Tx { client: self, id }) {
                Ok(v) => v,
                Err(e) => {
                    // The body's error is the one that matters; the abort cannot conflict.
                    let _ = self.transaction_end(id, false);
                    return Err(e);
                }
            };
            match self.transaction_end(id, true) {
                Ok(()) => return Ok(value),
                Err(XsError::Again) => {}
                Err(e) => return Err(e),
            }
        }
        Err(XsError::Again)
    }
}

/// A client inside one transaction (see [`XsClient::transaction`]): the node operations,
/// each in the transaction.
#[derive(Debug)]
pub struct Tx<'a, C> {
    client: &'a mut C,
    id: TxId,
}

impl<C: XsClient> Tx<'_, C> {
    /// The transaction's id.
    pub fn id(&self) -> TxId {
        self.id
    }

    /// The client, for operations that name the transaction themselves.
    pub fn client(&mut self) -> &mut C {
        self.client
    }

    /// `READ` in the transaction.
    pub fn read(&mut self, path: &str) -> XsResult<Vec<u8>> {
        self.client.read(self.id, path)
    }

    /// `WRITE` in the transaction.
    pub fn write(&mut self, path: &str, value: &[u8]) -> XsResult<()> {
        self.client.write(self.id, path, value)
    }

    /// `MKDIR` in the transaction.
    pub fn mkdir(&mut self, path: &str) -> XsResult<()> {
        self.client.mkdir(self.id, path)
    }

    /// `RM` in the transaction.
    pub fn rm(&mut self, path: &str) -> XsResult<()> {
        self.client.rm(self.id, path)
    }

    /// `DIRECTORY` in the transaction.
    pub fn directory(&mut self, path: &str) -> XsResult<Vec<Vec<u8>>> {
        self.client.directory(self.id, path)
    }

    /// `GET_PERMS` in the transaction.
    pub fn get_perms(&mut self, path: &str) -> XsResult<Vec<Perm>> {
        self.client.get_perms(self.id, path)
    }

    /// `SET_PERMS` in the transaction.
    pub fn set_perms(&mut self, path: &str, perms: &[Perm]) -> XsResult<()> {
        self.client.set_perms(self.id, path, perms)
    }
}

/// In process: a connection's [`Session`].
impl XsClient for Session<'_> {
    fn read(&mut self, tx: TxId, path: &str) -> XsResult<Vec<u8>> {
        self.in_tx(tx).read(path)
    }

    fn write(&mut self, tx: TxId, path: &str, value: &[u8]) -> XsResult<()> {
        self.in_tx(tx).write(path, value)
    }

    fn mkdir(&mut self, tx: TxId, path: &str) -> XsResult<()> {
        self.in_tx(tx).mkdir(path)
    }

    fn rm(&mut self, tx: TxId, path: &str) -> XsResult<()> {
        self.in_tx(tx).rm(path)
    }

    fn directory(&mut self, tx: TxId, path: &str) -> XsResult<Vec<Vec<u8>>> {
        self.in_tx(tx).directory(path)
    }

    fn get_perms(&mut self, tx: TxId, path: &str) -> XsResult<Vec<Perm>> {
        self.in_tx(tx).get_perms(path)
    }

    fn set_perms(&mut self, tx: TxId, path: &str, perms: &[Perm]) -> XsResult<()> {
        self.in_tx(tx).set_perms(path, perms)
    }

    fn watch(&mut self, path: &str, token: &str, depth: Option<u32>) -> XsResult<()> {
        Session::watch(self, path, token, depth)
    }

    fn unwatch(&mut self, path: &str, token: &str) -> XsResult<()> {
        Session::unwatch(self, path, token)
    }

    fn transaction_start(&mut self) -> XsResult<TxId> {
        Session::transaction_start(self)
    }

    fn transaction_end(&mut self, tx: TxId, commit: bool) -> XsResult<()> {
        Session::transaction_end(self, tx, commit)
    }

    fn next_event(&mut self) -> XsResult<Option<(Vec<u8>, Vec<u8>)>> {
        Ok(self
            .pop_event()
            .map(|e| (e.path.to_vec(), e.token.to_vec())))
    }
}

/// A request payload: the strings, each NUL-terminated, then `tail` as is.
fn payload(strings: &[&[u8]], tail: &[u8]) -> Vec<u8> {
    let len = strings
        .iter()
        .map(|s| s.len().saturating_add(1))
        .sum::<usize>();
    let mut out = Vec::with_capacity(len.saturating_add(tail.len()));
    for s in strings {
        out.extend_from_slice(s);
        out.push(0);
    }
    out.extend_from_slice(tail);
    out
}

/// Over a ring: every operation is a request, answered before it returns.
impl<P: Page, W: Waiter> XsClient for Blocking<'_, P, W> {
    fn read(&mut self, tx: TxId, path: &str) -> XsResult<Vec<u8>> {
        self.call(MsgType::Read, tx, &payload(&[path.as_bytes()], b""))
    }

    fn write(&mut self, tx: TxId, path: &str, value: &[u8]) -> XsResult<()> {
        self.call(MsgType::Write, tx, &payload(&[path.as_bytes()], value))
            .map(drop)
    }

    fn mkdir(&mut self, tx: TxId, path: &str) -> XsResult<()> {
        self.call(MsgType::Mkdir, tx, &payload(&[path.as_bytes()], b""))
            .map(drop)
    }

    fn rm(&mut self, tx: TxId, path: &str) -> XsResult<()> {
        self.call(MsgType::Rm, tx, &payload(&[path.as_bytes()], b""))
            .map(drop)
    }

    fn directory(&mut self, tx: TxId, path: &str) -> XsResult<Vec<Vec<u8>>> {
        let list = self.call(MsgType::Directory, tx, &payload(&[path.as_bytes()], b""))?;
        Ok(split_names(&list))
    }

    fn get_perms(&mut self, tx: TxId, path: &str) -> XsResult<Vec<Perm>> {
        let list = self.call(MsgType::GetPerms, tx, &payload(&[path.as_bytes()], b""))?;
        perms::parse_list(Args(&list).strings())
    }

    fn set_perms(&mut self, tx: TxId, path: &str, perms: &[Perm]) -> XsResult<()> {
        let mut body = payload(&[path.as_bytes()], b"");
        for p in perms {
            p.push_text(&mut body);
            body.push(0);
        }
        self.call(MsgType::SetPerms, tx, &body).map(drop)
    }

    fn watch(&mut self, path: &str, token: &str, depth: Option<u32>) -> XsResult<()> {
        let mut depth_text = Vec::new();
        if let Some(d) = depth {
            xs_core::domid::push_decimal(&mut depth_text, u64::from(d));
            depth_text.push(0);
        }
        let body = payload(&[path.as_bytes(), token.as_bytes()], &depth_text);
        self.call(MsgType::Watch, 0, &body).map(drop)
    }

    fn unwatch(&mut self, path: &str, token: &str) -> XsResult<()> {
        let body = payload(&[path.as_bytes(), token.as_bytes()], b"");
        self.call(MsgType::Unwatch, 0, &body).map(drop)
    }

    fn transaction_start(&mut self) -> XsResult<TxId> {
        let id = self.call(MsgType::TransactionStart, 0, b"\0")?;
        let digits = id.split(|&b| b == 0).next().unwrap_or_default();
        xs_core::domid::parse_decimal(digits)
            .and_then(|n| TxId::try_from(n).ok())
            .ok_or(XsError::Io)
    }

    fn transaction_end(&mut self, tx: TxId, commit: bool) -> XsResult<()> {
        let body: &[u8] = if commit { b"T\0" } else { b"F\0" };
        self.call(MsgType::TransactionEnd, tx, body).map(drop)
    }

    fn next_event(&mut self) -> XsResult<Option<(Vec<u8>, Vec<u8>)>> {
        let event = self.client.pop_event().map_err(|_| XsError::Io)?;
        Ok(event.and_then(|m| m.event().map(|(p, t)| (p.to_vec(), t.to_vec()))))
    }
}
