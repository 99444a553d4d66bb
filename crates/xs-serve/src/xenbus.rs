//! The xenbus device handshake, typed: what Linux's `xenbus_client.c` and QEMU's `xen-bus`
//! give their backends, over any [`XsClient`].
//!
//! A PV device is two directories: the backend's,
//! `/local/domain/<backend>/backend/<type>/<frontend>/<devid>`, owned by the backend domain
//! and readable by the frontend, and the frontend's, `/local/domain/<frontend>/device/<type>/<devid>`,
//! owned by the frontend domain and readable by the backend (the permissions libxl's
//! `libxl__device_generic_add` sets). Each end has a `state` node ([`XenbusState`], written
//! as a decimal number) and watches the other's; the usual sequence
//! (`docs/misc/xenstore-paths.pandoc`, Xen's `io/xenbus.h`) is
//!
//! ```text
//! backend:  Initialising -> InitWait ........................ -> Connected -> Closing -> Closed
//! frontend: Initialising ............ -> Initialised (or Connected) ... -> Closing -> Closed
//! ```
//!
//! The backend publishes its features and goes to InitWait; the frontend, seeing InitWait,
//! publishes its rings (`ring-ref`, `event-channel`) and goes to Initialised; the backend,
//! seeing Initialised, maps them and goes to Connected; the frontend, seeing Connected, goes
//! to Connected. [`backend_next`] and [`frontend_next`] are those rules.

use alloc::format;
use alloc::string::String;

use xs_core::perms::{Access, Perm};
use xs_core::{DomId, TxId, XsError, XsResult};

use crate::client::{Tx, XsClient};

/// The state of one end of a device (`enum xenbus_state`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
#[repr(u8)]
pub enum XenbusState {
    /// No `state` node, or an unknown value.
    Unknown = 0,
    /// Setting up.
    Initialising = 1,
    /// Finished early initialisation, waiting for the peer (a backend's state).
    InitWait = 2,
    /// Initialised, waiting for a connection from the peer (a frontend's state).
    Initialised = 3,
    /// Connected: the device works.
    Connected = 4,
    /// Being closed (an error, an unplug).
    Closing = 5,
    /// Closed.
    Closed = 6,
    /// Being reconfigured.
    Reconfiguring = 7,
    /// Reconfigured.
    Reconfigured = 8,
}

impl XenbusState {
    /// Every state, by number.
    pub const ALL: [XenbusState; 9] = [
        XenbusState::Unknown,
        XenbusState::Initialising,
        XenbusState::InitWait,
        XenbusState::Initialised,
        XenbusState::Connected,
        XenbusState::Closing,
        XenbusState::Closed,
        XenbusState::Reconfiguring,
        XenbusState::Reconfigured,
    ];

    /// The state a `state` node's value names; anything else (another number, no number,
    /// trailing bytes) is [`XenbusState::Unknown`], as Linux's `xenbus_read_driver_state`
    /// reads a missing or malformed node.
    pub fn parse(value: &[u8]) -> XenbusState {
        match value {
            [digit @ b'0'..=b'8'] => XenbusState::ALL
                .get(usize::from(digit.wrapping_sub(b'0')))
                .copied()
                .unwrap_or(XenbusState::Unknown),
            _ => XenbusState::Unknown,
        }
    }

    /// The value written to a `state` node.
    pub fn value(self) -> &'static [u8] {
        match self {
            XenbusState::Unknown => b"0",
            XenbusState::Initialising => b"1",
            XenbusState::InitWait => b"2",
            XenbusState::Initialised => b"3",
            XenbusState::Connected => b"4",
            XenbusState::Closing => b"5",
            XenbusState::Closed => b"6",
            XenbusState::Reconfiguring => b"7",
            XenbusState::Reconfigured => b"8",
        }
    }
}

/// Which end of a device.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum End {
    /// The backend (the VMM, a driver domain).
    Backend,
    /// The frontend (the guest).
    Frontend,
}

impl End {
    /// The other end.
    pub fn other(self) -> End {
        match self {
            End::Backend => End::Frontend,
            End::Frontend => End::Backend,
        }
    }
}

/// What a backend moves to when its frontend is in `frontend` and it is in `backend`, the
/// rule Linux's backends (`frontend_changed` in `xen-blkback`) and QEMU's `xen-bus` follow;
/// `None`: nothing to do. Before it moves to [`XenbusState::Connected`] the backend reads
/// what the frontend published (ring references, event channel) and sets the device up.
pub fn backend_next(frontend: XenbusState, backend: XenbusState) -> Option<XenbusState> {
    use XenbusState::*;
    let next = match frontend {
        // A frontend starting (again) after the backend closed: offer the device again.
        Initialising if backend == Closed => InitWait,
        Initialised | Connected if backend != Closing && backend != Closed => Connected,
        Closing => Closing,
        Closed | Unknown => Closed,
        _ => return None,
    };
    (next != backend).then_some(next)
}

/// What a frontend moves to when its backend is in `backend` and it is in `frontend`, the
/// rule of Linux's frontends (`backend_changed` in `xen-blkfront`); `None`: nothing to do.
/// Before it moves to [`XenbusState::Initialised`] the frontend publishes its ring
/// references and event channel.
pub fn frontend_next(backend: XenbusState, frontend: XenbusState) -> Option<XenbusState> {
    use XenbusState::*;
    let next = match backend {
        InitWait if frontend == Initialising => Initialised,
        Connected if frontend == Initialised || frontend == Initialising => Connected,
        Closing if frontend != Closed => Closing,
        Closed => Closed,
        _ => return None,
    };
    (next != frontend).then_some(next)
}

/// One PV device: its two directories and their `state` nodes.
///
/// # Examples
///
/// The toolstack creates the device, the backend moves to InitWait and watches the
/// frontend's state (in process, with a [`xs_core::Session`] of dom0, the backend here):
///
/// ```
/// use xs_core::{DomId, Store, StoreConfig};
/// use xs_serve::client::XsClient;
/// use xs_serve::xenbus::{End, XenbusDevice, XenbusState};
///
/// let mut store = Store::new(StoreConfig::new([3, 4]))?;
/// let dom0 = store.connect(DomId::DOM0)?;
/// let mut s = store.session(dom0);
/// let console = XenbusDevice::new("console", 0, DomId::DOM0, DomId(5));
/// console.create(&mut s, &[("type", "xenconsoled")], &[])?;
/// assert_eq!(console.frontend_path(), "/local/domain/5/device/console/0");
/// assert_eq!(console.state(&mut s, End::Frontend)?, XenbusState::Initialising);
///
/// console.switch_state(&mut s, End::Backend, XenbusState::InitWait)?;
/// console.watch_state(&mut s, End::Frontend, "fe-state")?;
/// assert_eq!(console.state(&mut s, End::Backend)?, XenbusState::InitWait);
/// # Ok::<(), xs_core::XsError>(())
/// ```
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct XenbusDevice {
    backend: DomId,
    frontend: DomId,
    backend_path: String,
    frontend_path: String,
}

impl XenbusDevice {
    /// Device `devid` of type `kind` (`"vif"`, `"vbd"`, `"console"`, ...) between `backend`
    /// and `frontend`.
    pub fn new(kind: &str, devid: u32, backend: DomId, frontend: DomId) -> XenbusDevice {
        XenbusDevice {
            backend,
            frontend,
            backend_path: format!("/local/domain/{backend}/backend/{kind}/{frontend}/{devid}"),
            frontend_path: format!("/local/domain/{frontend}/device/{kind}/{devid}"),
        }
    }

    /// The backend's directory.
    pub fn backend_path(&self) -> &str {
        &self.backend_path
    }

    /// The frontend's directory.
    pub fn frontend_path(&self) -> &str {
        &self.frontend_path
    }

    /// The directory of `end`.
    pub fn path(&self, end: End) -> &str {
        match end {
            End::Backend => &self.backend_path,
            End::Frontend => &self.frontend_path,
        }
    }

    /// The path of `node` in `end`'s directory.
    pub fn node(&self, end: End, node: &str) -> String {
        format!("{}/{node}", self.path(end))
    }

    /// Creates both directories, as the toolstack does (libxl's `libxl__device_generic_add`),
    /// in one transaction (run again on conflicts): any old ones removed; the backend's owned
    /// by the backend domain and readable by the frontend, with `frontend`, `frontend-id`,
    /// `online` = 1, `state` = Initialising and `backend_entries`; the frontend's owned by the
    /// frontend domain and readable by the backend, with `backend`, `backend-id`, `state` =
    /// Initialising and `frontend_entries`. Needs a client allowed to write both (the
    /// toolstack's: a privileged domain's).
    pub fn create(
        &self,
        c: &mut impl XsClient,
        backend_entries: &[(&str, &str)],
        frontend_entries: &[(&str, &str)],
    ) -> XsResult<()> {
        let initialising = XenbusState::Initialising.value();
        let backend_perms = [
            Perm::owner(self.backend),
            Perm::new(self.frontend, Access::READ),
        ];
        let frontend_perms = [
            Perm::owner(self.frontend),
            Perm::new(self.backend, Access::READ),
        ];
        c.transaction(|t| {
            self.fill(
                t,
                End::Frontend,
                &frontend_perms,
                &[
                    ("backend", self.backend_path.as_bytes()),
                    ("backend-id", format!("{}", self.backend).as_bytes()),
                    ("state", initialising),
                ],
                frontend_entries,
            )?;
            self.fill(
                t,
                End::Backend,
                &backend_perms,
                &[
                    ("frontend", self.frontend_path.as_bytes()),
                    ("frontend-id", format!("{}", self.frontend).as_bytes()),
                    ("online", b"1"),
                    ("state", initialising),
                ],
                backend_entries,
            )
        })
    }

    /// Writes one end's directory afresh (see [`XenbusDevice::create`]).
    fn fill<C: XsClient>(
        &self,
        t: &mut Tx<'_, C>,
        end: End,
        perms: &[Perm],
        links: &[(&str, &[u8])],
        entries: &[(&str, &str)],
    ) -> XsResult<()> {
        let dir = self.path(end);
        match t.rm(dir) {
            Ok(()) | Err(XsError::NoEnt) => {}
            Err(e) => return Err(e),
        }
        t.mkdir(dir)?;
        t.set_perms(dir, perms)?;
        for (node, value) in links {
            t.write(&self.node(end, node), value)?;
        }
        for (node, value) in entries {
            t.write(&self.node(end, node), value.as_bytes())?;
        }
        Ok(())
    }

    /// Removes both directories (the toolstack's part of unplugging; missing ones are fine).
    pub fn destroy(&self, c: &mut impl XsClient) -> XsResult<()> {
        c.transaction(|t| {
            for end in [End::Frontend, End::Backend] {
                match t.rm(self.path(end)) {
                    Ok(()) | Err(XsError::NoEnt) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        })
    }

    /// The state of `end` ([`XenbusState::Unknown`] if its `state` node is missing or
    /// malformed).
    pub fn state(&self, c: &mut impl XsClient, end: End) -> XsResult<XenbusState> {
        match c.read(0, &self.node(end, "state")) {
            Ok(value) => Ok(XenbusState::parse(&value)),
            Err(XsError::NoEnt) => Ok(XenbusState::Unknown),
            Err(e) => Err(e),
        }
    }

    /// Switches `end` (ours) to `state`, as Linux's `xenbus_switch_state`: in a transaction
    /// that first checks the `state` node still exists (so that a directory the toolstack
    /// removed is not re-created by a late switch: `ENOENT` then), and writes only a change.
    pub fn switch_state(
        &self,
        c: &mut impl XsClient,
        end: End,
        state: XenbusState,
    ) -> XsResult<()> {
        let node = self.node(end, "state");
        c.transaction(|t| {
            let now = XenbusState::parse(&t.read(&node)?);
            if now != state {
                t.write(&node, state.value())?;
            }
            Ok(())
        })
    }

    /// Watches `end`'s `state` node (normally the other end's) with `token`. The store sends
    /// one event at once, so the current state is learnt as any change is.
    pub fn watch_state(&self, c: &mut impl XsClient, end: End, token: &str) -> XsResult<()> {
        c.watch(&self.node(end, "state"), token, Some(0))
    }

    /// Reads `node` of `end`'s directory as text (ring references, event channels, features).
    pub fn read(&self, c: &mut impl XsClient, end: End, node: &str) -> XsResult<String> {
        let value = c.read(0, &self.node(end, node))?;
        String::from_utf8(value).map_err(|_| XsError::Inval)
    }

    /// Writes `value` at `node` of `end`'s directory, in transaction `tx` (0 for none).
    pub fn write(
        &self,
        c: &mut impl XsClient,
        tx: TxId,
        end: End,
        node: &str,
        value: &str,
    ) -> XsResult<()> {
        c.write(tx, &self.node(end, node), value.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xs_core::{Store, StoreConfig};

    #[test]
    fn states_parse_as_written_and_junk_is_unknown() {
        for s in XenbusState::ALL {
            assert_eq!(XenbusState::parse(s.value()), s);
            assert_eq!(s.value(), [b'0' + s as u8]);
        }
        for junk in [&b""[..], b"9", b"4\0", b" 4", b"44", b"-1", b"x"] {
            assert_eq!(XenbusState::parse(junk), XenbusState::Unknown, "{junk:?}");
        }
    }

    /// Both rules together reach Connected from a fresh device, and Closed from a closing
    /// one, with no step that has nothing to do.
    #[test]
    fn the_rules_connect_and_close() {
        use XenbusState::*;
        // The backend has offered the device; each end follows its rule in turn.
        let (mut be, mut fe) = (InitWait, Initialising);
        for _ in 0..4 {
            if let Some(f) = frontend_next(be, fe) {
                fe = f;
            }
            if let Some(b) = backend_next(fe, be) {
                be = b;
            }
        }
        assert_eq!((be, fe), (Connected, Connected));
        // Nothing to do when in step.
        assert_eq!(backend_next(Connected, Connected), None);
        assert_eq!(frontend_next(Connected, Connected), None);
        // The frontend closes, and the backend follows.
        assert_eq!(backend_next(Closing, Connected), Some(Closing));
        assert_eq!(backend_next(Closed, Closing), Some(Closed));
        // It starts again: the backend offers the device again.
        assert_eq!(backend_next(Initialising, Closed), Some(InitWait));
        // The backend closes, and the frontend follows.
        assert_eq!(frontend_next(Closing, Connected), Some(Closing));
        assert_eq!(frontend_next(Closed, Closing), Some(Closed));
        assert_eq!(frontend_next(Closed, Closed), None);
    }

    #[test]
    fn create_sets_the_permissions_and_links_of_both_ends() {
        let mut store = Store::new(StoreConfig::new([1, 1])).unwrap();
        let dom0 = store.connect(DomId::DOM0).unwrap();
        let guest = store.connect(DomId(7)).unwrap();
        let dev = XenbusDevice::new("vif", 0, DomId::DOM0, DomId(7));
        let mut s = store.session(dom0);
        dev.create(&mut s, &[("mac", "00:16:3e:00:00:01")], &[("handle", "0")])
            .unwrap();
        assert_eq!(
            s.get_perms(dev.frontend_path()).unwrap(),
            [Perm::owner(DomId(7)), Perm::new(DomId::DOM0, Access::READ)]
        );
        assert_eq!(
            s.get_perms(dev.backend_path()).unwrap(),
            [Perm::owner(DomId::DOM0), Perm::new(DomId(7), Access::READ)]
        );
        assert_eq!(
            dev.read(&mut s, End::Frontend, "backend").unwrap(),
            dev.backend_path()
        );
        assert_eq!(dev.read(&mut s, End::Backend, "frontend-id").unwrap(), "7");
        assert_eq!(
            dev.read(&mut s, End::Backend, "mac").unwrap(),
            "00:16:3e:00:00:01"
        );
        // The guest may switch its own state, and read but not write the backend's.
        let mut g = store.session(guest);
        dev.switch_state(&mut g, End::Frontend, XenbusState::Initialised)
            .unwrap();
        assert_eq!(
            dev.state(&mut g, End::Backend).unwrap(),
            XenbusState::Initialising
        );
        assert_eq!(
            dev.switch_state(&mut g, End::Backend, XenbusState::Closed),
            Err(XsError::Acces)
        );
        // A switch after the toolstack removed the device does not re-create it.
        let mut s = store.session(dom0);
        dev.destroy(&mut s).unwrap();
        assert_eq!(
            dev.switch_state(&mut s, End::Backend, XenbusState::Closed),
            Err(XsError::NoEnt)
        );
        assert_eq!(
            dev.state(&mut s, End::Backend).unwrap(),
            XenbusState::Unknown
        );
    }
}
