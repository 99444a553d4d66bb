//! The protocol engine: requests in, replies and watch events out, for one connection at a
//! time, independent of the transport (a ring page, a socket, a test harness).
//!
//! [`Connection`] is the per-connection state machine: fed bytes in whatever chunks the
//! transport delivers, it reassembles messages, has the store answer them in order, and
//! produces the bytes to send. [`dispatch`] maps one request onto the store; [`Host`] is the
//! little the protocol needs from the program around it.

pub mod connection;
mod control;
pub mod dispatch;
pub mod live_update;
#[cfg(test)]
mod tests;

use alloc::vec::Vec;

pub use connection::{Connection, Limits};
pub use control::memory_report;
pub use dispatch::Access;
pub use live_update::LiveUpdate;

use crate::domid::DomId;
use crate::error::{XsError, XsResult};
use crate::store::{ConnId, Introduced, Introduction, Store};
use crate::wire::Header;

/// What the program embedding the store provides to the protocol. Every method has a
/// do-nothing default, so a test or a minimal program implements only what it needs.
pub trait Host {
    /// `INTRODUCE` is about to succeed (the store checked it and changed nothing yet): set
    /// the domain's ring up (map it, bind its channel). An error refuses the request with
    /// that error and the store is left as it was, as C xenstored maps the ring before it
    /// answers. [`Host::introduced`] follows once the store took the domain; if the store
    /// fails instead, the program finds its set-up not followed by it.
    fn introducing(
        &mut self,
        _store: &mut Store,
        _domid: DomId,
        _intro: Introduction,
        _kind: Introduced,
    ) -> XsResult<()> {
        Ok(())
    }

    /// `INTRODUCE` succeeded: start serving the domain (map its ring, bind its channel).
    fn introduced(
        &mut self,
        _store: &mut Store,
        _domid: DomId,
        _intro: Introduction,
        _kind: Introduced,
    ) {
    }

    /// `RELEASE` succeeded: stop serving the domain (its connections are now dead).
    fn released(&mut self, _store: &mut Store, _domid: DomId) {}

    /// `CONTROL print`: log the text.
    fn print(&mut self, _text: &[u8]) {}

    /// A domain reached its soft memory quota (C xenstored logs this as a warning).
    fn soft_quota_reached(&mut self, _domid: DomId) {}

    /// The log switches and their state, for `CONTROL log`.
    fn log_switches(&self) -> Vec<(&'static str, bool)> {
        Vec::new()
    }

    /// `CONTROL log on|off|+<switch>|-<switch>`.
    fn set_log(&mut self, _arg: &[u8]) -> XsResult<()> {
        Err(XsError::Inval)
    }

    /// `CONTROL logfile <file>`.
    fn set_logfile(&mut self, _file: &[u8]) -> XsResult<()> {
        Err(XsError::Inval)
    }

    /// `CONTROL memreport [<file>]`: write the report to the log or to `file`.
    fn memreport(&mut self, _report: &str, _file: Option<&[u8]>) -> XsResult<()> {
        Ok(())
    }

    /// A message crossed the connection (`incoming` for requests), for the trace file.
    fn trace(&mut self, _conn: ConnId, _incoming: bool, _header: &Header, _payload: &[u8]) {}

    /// Whether [`Host::trace`] wants to be called (so that the connection can skip the work
    /// of re-reading its replies when it does not).
    fn tracing(&self) -> bool {
        false
    }

    /// Whether the whole request `header`/`payload` of `conn` must wait, unanswered (C
    /// xenstored's delayed requests): a live update's `-s` until the update can happen,
    /// a `TRANSACTION_START` while one is pending. The connection then holds it (and takes
    /// nothing after it) until the program offers it input again
    /// ([`Connection::holds_request`]), when this is asked again.
    fn hold_request(
        &mut self,
        _store: &Store,
        _conn: ConnId,
        _header: &Header,
        _payload: &[u8],
    ) -> bool {
        false
    }

    /// `conn` started a transaction (`first`: its only open one now), for the age of its
    /// transactions that live update's `-t` weighs.
    fn transaction_started(&mut self, _conn: ConnId, _first: bool) {}

    /// `CONTROL live-update <params>` from `conn` (see [`live_update`]): the text to answer
    /// (`OK`, or what went wrong). `EINVAL` where the program cannot update itself.
    fn live_update(
        &mut self,
        _store: &mut Store,
        _conn: ConnId,
        _command: LiveUpdate<'_>,
    ) -> XsResult<Vec<u8>> {
        Err(XsError::Inval)
    }

    /// `CONTROL save-state [<file>]`: write the store's state stream ([`crate::state`]) to
    /// `file` (empty without one: the program decides where, or answers `EINVAL`).
    /// `EINVAL` where the program cannot save its state.
    fn save_state(&mut self, _store: &mut Store, _file: &[u8]) -> XsResult<()> {
        Err(XsError::Inval)
    }

    /// The `CONTROL` commands the program adds (name, parameters), for `help`: those of
    /// [`Host::live_update`] and [`Host::save_state`] where it implements them.
    fn control_commands(&self) -> Vec<(&'static str, &'static str)> {
        Vec::new()
    }
}

/// Introduces `domid` as the host, with no connection: what a privileged `INTRODUCE` does,
/// through the same code, [`Host::introducing`] and [`Host::introduced`] included. For the program that is itself the
/// toolstack (a VMM introducing its guest).
///
/// # Examples
///
/// ```
/// use xs_core::protocol::{self, NoHost};
/// use xs_core::store::{Introduced, Introduction};
/// use xs_core::{DomId, Store, StoreConfig};
///
/// let mut store = Store::new(StoreConfig::new([1, 2]))?;
/// let intro = Introduction { gfn: 0xfeffc, evtchn: 3 };
/// let kind = protocol::introduce(&mut store, &mut NoHost, DomId(7), intro)?;
/// assert_eq!(kind, Introduced::New);
/// assert!(store.is_introduced(DomId(7)));
/// protocol::release(&mut store, &mut NoHost, DomId(7))?;
/// assert!(!store.is_introduced(DomId(7)));
/// # Ok::<(), xs_core::XsError>(())
/// ```
pub fn introduce(
    store: &mut Store,
    host: &mut dyn Host,
    domid: DomId,
    intro: Introduction,
) -> XsResult<Introduced> {
    let kind = store.introduction_kind(domid, intro)?;
    host.introducing(store, domid, intro, kind)?;
    let kind = store.introduce_domain(domid, intro)?;
    host.introduced(store, domid, intro, kind);
    Ok(kind)
}

/// Releases `domid` as the host, with no connection: what a privileged `RELEASE` does, through
/// the same code, [`Host::released`] included.
pub fn release(store: &mut Store, host: &mut dyn Host, domid: DomId) -> XsResult<()> {
    store.release_domain(domid)?;
    host.released(store, domid);
    Ok(())
}

/// A [`Host`] that provides nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoHost;

impl Host for NoHost {}
