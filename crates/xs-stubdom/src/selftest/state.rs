//! `CONTROL save-state` in the image: the production save (`x86_glue::state`, which the
//! Xen loop runs at the end of a turn) over the rig's store and rings, and the saved buffer
//! taken over by a new store serving the same ring.
//!
//! * `state/save`: dom0 writes nodes, sets a watch and opens a transaction; its
//!   `CONTROL save-state` is answered `OK`; [`x86_glue::state::run_requested`] saves the
//!   whole state into a heap buffer, verifies it and prints its `xs: state: saved ...`
//!   line on the console; dom0 is served on (its watch fires, its reads are answered).
//! * `state/handover`: the state saved into a buffer ([`x86_glue::state::save_to_buffer`])
//!   is restored into a new store (`xs_core::state::restore`), whose restored connection
//!   serves dom0's ring from then on, as a new image would take it over: the event queued
//!   before arrives once, the transaction commits.
//!
//! The rig serves its rings by hand, not through xs-serve's dispatcher (the Xen loop's):
//! a second instance of the dispatcher's generic code would not fit the image's size
//! budget. The dispatcher's own save and restore are tested on the host (xs-serve).

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use x86_glue::StubHost;
use x86_glue::state::{self, StateSink, StubState, Verified};
use xs_core::protocol::{Access, Limits};
use xs_core::state::{Global, SaveError, SaveOptions, SaveStats, SavedConnection, Transport};
use xs_core::wire::MsgType;
use xs_core::{DomId, Store};
use xs_ring::Server;

use super::Runner;
use super::rig::{Rig, ensure, expect_eq};
use crate::console::{Console, println};
use crate::time;

impl StubState for Rig {
    /// The store with the rig's rings' connections (ring `n` as local port `n`).
    fn save_state(
        &mut self,
        sink: &mut StateSink<'_>,
    ) -> Result<SaveStats, SaveError<&'static str>> {
        let conns: Vec<SavedConnection<'_>> = self
            .rings
            .iter()
            .map(|r| SavedConnection {
                id: r.conn.id(),
                transport: Transport::Ring {
                    port: r.number as u32,
                    unique_id: None,
                },
                protocol: Some(&r.conn),
                input: &[],
            })
            .collect();
        xs_core::state::save(
            &mut self.store,
            Global::default(),
            &conns,
            SaveOptions::default(),
            sink,
        )
    }

    fn store(&self) -> &Store {
        &self.store
    }

    fn stub_host(&mut self) -> &mut StubHost {
        &mut self.host.stub
    }

    fn now_ns(&mut self) -> Option<u64> {
        let hz = time::tsc_hz()?;
        Some((u128::from(time::rdtsc()) * 1_000_000_000 / u128::from(hz)) as u64)
    }
}

pub(super) fn checks(t: &mut Runner, rig: &mut Rig) {
    let mut tx = 0;
    t.check("state/save", || {
        // Only dom0's ring is served now (the guest was released).
        rig.rings.retain(|r| r.number == 0);
        for (path, value) in [("a", "1"), ("b", "2"), ("c/d", "3")] {
            rig.write(
                0,
                0,
                &alloc::format!("/tool/xs-state/{path}"),
                value.as_bytes(),
            )?;
        }
        rig.ok(0, MsgType::Watch, 0, &["/tool/xs-state/w", "tok-s"])?;
        rig.clear_events(0)?;
        tx = rig.tx_start(0)?;
        rig.write(0, tx, "/tool/xs-state/tx", b"in-tx")?;
        rig.ok(0, MsgType::Control, 0, &["save-state"])?;
        let outcome = state::run_requested(rig, &mut Console)
            .ok_or("CONTROL save-state did not ask for a save")?;
        let saved = outcome.map_err(|r| r.to_string())?;
        ensure(
            matches!(saved.verified, Verified::Same { .. }),
            alloc::format!("not verified: {saved}"),
        )?;
        ensure(
            state::run_requested(rig, &mut Console).is_none(),
            "saved twice for one request",
        )?;
        // Serving goes on.
        expect_eq("read", rig.read(0, 0, "/tool/xs-state/c/d")?, "3".into())?;
        rig.write(0, 0, "/tool/xs-state/w/x", b"v")?;
        expect_eq(
            "event",
            rig.next_event(0)?,
            Some(("/tool/xs-state/w/x".into(), "tok-s".into())),
        )
    });

    t.check("state/handover", || handover(rig, tx));
}

/// The state saved into a buffer and taken over by a new store serving the same ring.
fn handover(rig: &mut Rig, tx: u32) -> Result<(), String> {
    ensure(tx != 0, "state/save opened no transaction")?;
    // An event queued before the handover, not yet read.
    rig.write(0, 0, "/tool/xs-state/w/y", b"v")?;
    let (buf, saved) = state::save_to_buffer(rig).map_err(|r| r.to_string())?;
    let mut config = rig.store.config().clone();
    let mut rng = x86_glue::rng::Rng::detect();
    config.hash_key = [rng.next_u64(), rng.next_u64()];
    let restored =
        xs_core::state::restore(config, &buf, |_, _| (Access::default(), Limits::default()))
            .map_err(|e| e.to_string())?;
    drop(buf);
    let mut conns = restored.connections;
    let at = conns
        .iter()
        .position(|c| matches!(c.transport, Transport::Ring { port: 0, .. }))
        .ok_or("no connection for ring 0 in the stream")?;
    let c = conns.swap_remove(at);
    expect_eq("its domain", c.domid, DomId::DOM0)?;
    ensure(c.input.is_empty(), "input left over")?;
    // The new store serves the ring from here: its page as the old one left it, the
    // restored connection (the old one and its store are dropped).
    rig.store = restored.store;
    let ring = rig.ring_mut(0)?;
    ring.server = Server::new(ring.server_page(), Server::<xs_ring::RawPage>::FEATURES);
    ring.conn = c.connection;
    expect_eq(
        "the queued event, once",
        rig.next_event(0)?,
        Some(("/tool/xs-state/w/y".into(), "tok-s".into())),
    )?;
    expect_eq("no other event", rig.next_event(0)?, None)?;
    rig.tx_end(0, tx, true)?;
    expect_eq(
        "committed",
        rig.read(0, 0, "/tool/xs-state/tx")?,
        "in-tx".into(),
    )?;
    rig.write(0, 0, "/tool/xs-state/w/z", b"v")?;
    expect_eq(
        "a new event",
        rig.next_event(0)?,
        Some(("/tool/xs-state/w/z".into(), "tok-s".into())),
    )?;
    rig.store
        .check()
        .map_err(|e| alloc::format!("Store::check: {e}"))?;
    println!(
        "state: handover: {} bytes taken over by a new store serving dom0's ring",
        saved.bytes
    );
    Ok(())
}
