//! The PV console backend: the device `console/0` through the store (the xenbus device
//! helper), and the ring page the frontend grants (`struct xencons_interface`,
//! `xen/include/public/io/console.h`: `in[1024]`, `out[2048]`, then `in_cons`, `in_prod`,
//! `out_cons`, `out_prod`), with the event channel it allocated for dom0 — what Linux's
//! `hvc_xen` frontend publishes as `ring-ref` and `port`.

use std::sync::atomic::{Ordering, fence};

use xs_core::{DomId, XsError, XsResult};
use xs_serve::client::XsClient;
use xs_serve::xenbus::{End, XenbusDevice, XenbusState, backend_next};

use crate::layout::PAGE_SHIFT;
use crate::memory::GuestRam;
use crate::xen::Xen;

const OUT: u64 = 1024;
const OUT_SIZE: u32 = 2048;
/// `out_cons`, followed by `out_prod`.
const OUT_CONS: u64 = 3080;

/// The longest line kept of a guest's output (the console's, the debug port's): the rest of a
/// longer one is dropped.
pub(crate) const LINE_MAX: usize = 4096;

/// What the frontend's state asks of the backend: its next state, and the frontend's
/// `ring-ref` and `port` when that is Connected.
pub type Step = (XenbusState, Option<(String, String)>);

/// The backend's state.
#[derive(Debug)]
pub struct ConsoleBackend {
    /// The device.
    pub dev: XenbusDevice,
    /// Our state.
    pub state: XenbusState,
    /// The ring's guest frame, once connected.
    ring_gfn: Option<u64>,
    /// Our local port, once connected.
    pub port: Option<u32>,
    /// Output bytes not yet making a whole line.
    partial: Vec<u8>,
    /// Whole lines the guest wrote, not yet taken.
    lines: Vec<String>,
    /// Why the last connection attempt failed, if it did.
    pub failure: Option<String>,
}

impl ConsoleBackend {
    /// The backend of `console/0` of `guest`, served from dom0.
    pub fn new(guest: u16) -> ConsoleBackend {
        ConsoleBackend {
            dev: XenbusDevice::new("console", 0, DomId::DOM0, DomId(guest)),
            state: XenbusState::Initialising,
            ring_gfn: None,
            port: None,
            partial: Vec::new(),
            lines: Vec::new(),
            failure: None,
        }
    }

    /// The toolstack's and the backend's first steps: the device's nodes, InitWait, and the
    /// watch on the frontend's state (token `token`).
    pub fn create(&mut self, c: &mut impl XsClient, token: &str) -> XsResult<()> {
        self.dev.create(c, &[("protocol", "vt100")], &[])?;
        self.dev
            .switch_state(c, End::Backend, XenbusState::InitWait)?;
        self.state = XenbusState::InitWait;
        self.dev.watch_state(c, End::Frontend, token)
    }

    /// What the frontend's state asks of us: the backend's next state, with the frontend's
    /// `ring-ref` and `port` when that is Connected (the caller then [`Self::connect`]s, and
    /// [`Self::switch`]es to Connected, or to Closing if connecting failed).
    pub fn poll(&mut self, c: &mut impl XsClient) -> XsResult<Option<Step>> {
        let frontend = self.dev.state(c, End::Frontend)?;
        let Some(next) = backend_next(frontend, self.state) else {
            return Ok(None);
        };
        if next != XenbusState::Connected {
            return Ok(Some((next, None)));
        }
        let ring_ref = self.dev.read(c, End::Frontend, "ring-ref");
        let port = self.dev.read(c, End::Frontend, "port");
        match (ring_ref, port) {
            (Ok(r), Ok(p)) => Ok(Some((next, Some((r, p))))),
            (Err(e), _) | (_, Err(e)) if e != XsError::NoEnt => Err(e),
            _ => Ok(Some((next, Some((String::new(), String::new()))))),
        }
    }

    /// Switches our state (after [`Self::poll`]).
    pub fn switch(&mut self, c: &mut impl XsClient, next: XenbusState) -> XsResult<()> {
        self.dev.switch_state(c, End::Backend, next)?;
        self.state = next;
        Ok(())
    }

    /// Maps the ring the frontend granted (`ring-ref`) and binds its `port`. A frontend that
    /// published bad values is refused with the reason.
    pub fn connect(
        &mut self,
        xen: &mut Xen,
        ram: &GuestRam,
        ring_ref: &str,
        port: &str,
    ) -> Result<(), String> {
        let number = |node: &str, text: &str| -> Result<u32, String> {
            text.trim()
                .parse()
                .map_err(|_| format!("frontend {node} `{text}` is not a number"))
        };
        let gref = number("ring-ref", ring_ref)?;
        let port = number("port", port)?;
        let gfn = xen
            .map_grant(ram, gref, false)
            .map_err(|status| format!("grant {gref}: status {status}"))?;
        let local = xen
            .bind_local(port)
            .map_err(|e| format!("binding port {port}: {e}"))?;
        self.ring_gfn = Some(gfn);
        self.port = Some(local);
        // Output written before we connected.
        self.drain(xen, ram);
        Ok(())
    }

    /// Forgets the ring and closes our port (the frontend is closing).
    pub fn disconnect(&mut self, xen: &mut Xen) {
        if let Some(port) = self.port.take() {
            xen.close_local(port);
        }
        self.ring_gfn = None;
    }
    /// Takes what the frontend wrote to the ring (its event on our port), and notifies it
    /// that there is room again.
    pub fn drain(&mut self, xen: &mut Xen, ram: &GuestRam) {
        let (Some(gfn), Some(port)) = (self.ring_gfn, self.port) else {
            return;
        };
        let base = gfn << PAGE_SHIFT;
        let mut idx = [0u8; 8];
        if ram.read(base + OUT_CONS, &mut idx).is_err() {
            return;
        }
        let cons = u32::from_le_bytes([idx[0], idx[1], idx[2], idx[3]]);
        let prod = u32::from_le_bytes([idx[4], idx[5], idx[6], idx[7]]);
        // ORDERING: Acquire; the producer index before the bytes it publishes, pairing with
        // the frontend's write barrier between its bytes and `out_prod`.
        fence(Ordering::Acquire);
        let n = prod.wrapping_sub(cons);
        if n == 0 {
            return;
        }
        // A frontend that claims more than the ring holds is broken: take nothing.
        if n > OUT_SIZE {
            self.failure = Some(format!("out_prod {prod} - out_cons {cons} > {OUT_SIZE}"));
            return;
        }
        for i in 0..n {
            let at = u64::from(cons.wrapping_add(i) % OUT_SIZE);
            let mut b = [0u8];
            // A line is kept up to 4 KiB (as the debug port's): a guest that never writes a
            // newline cannot grow it without bound.
            if ram.read(base + OUT + at, &mut b).is_ok()
                && (b[0] == b'\n' || self.partial.len() < LINE_MAX)
            {
                self.partial.push(b[0]);
            }
        }
        // ORDERING: Release; the bytes are read before the consumer index frees their slots.
        fence(Ordering::Release);
        let _ = ram.write(base + OUT_CONS, &prod.to_le_bytes());
        while let Some(nl) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=nl).collect();
            self.lines
                .push(String::from_utf8_lossy(&line[..line.len() - 1]).into_owned());
        }
        xen.notify_local(ram, port);
    }

    /// Whole lines received since the last call.
    pub fn take_lines(&mut self) -> Vec<String> {
        std::mem::take(&mut self.lines)
    }
}
