//! The dispatcher's whole state through xs-core's state stream: [`Dispatcher::save_state`]
//! and [`Dispatcher::restore`] (see the module documentation of the dispatcher, "State").

use alloc::format;
use alloc::vec::Vec;

use xs_core::DomId;
use xs_core::protocol::{Host, Limits};
use xs_core::state::{
    self, Global, Restored, RestoredConnection, SaveError, SaveOptions, SaveStats, SavedConnection,
    Sink, Transport,
};
use xs_core::store::Introduction;
use xs_ring::layout::Field;
use xs_ring::{Page, RingFault, Server, ServerFeatures};

use super::{Dispatcher, ring_features};
use crate::services::{DomainState, Services};

/// Maps a restored domain's ring as its introduction did: [`Services::map_ring`] with the
/// introduction's guest frame, or frame 0 for a domain served without one (the privileged
/// domain served from the start: a stub domain's `map_ring` maps its grant
/// `GNTTAB_RESERVED_XENSTORE` whatever the frame). The `ring` argument of
/// [`Dispatcher::restore`] for a program whose every ring comes from its services.
pub fn map_again<S: Services>(
    services: &mut S,
    domid: DomId,
    intro: Option<Introduction>,
) -> Result<S::Ring, S::Error> {
    services.map_ring(domid, intro.map_or(0, |i| i.gfn))
}

impl<S: Services, H: Host> Dispatcher<S, H> {
    /// Writes the whole state to `sink` as xs-core's state stream ([`xs_core::state::save`]):
    /// the store, the program's own connections (`program`: its sockets, with their
    /// protocol state and backlog, as it knows them; in-process connections it does not
    /// list are written as sockets without a descriptor), and one ring connection per
    /// served domain: its local port, its [`xs_core::protocol::Connection`] (the request
    /// partly read, the output not yet in the ring) and the input it has not taken yet.
    ///
    /// Bytes the guest wrote and the connection did not take stay in the ring (the pump
    /// consumes only what the connection took), so they are not in the stream: the ring
    /// itself carries them to whoever serves it next. Introductions and releases the store
    /// made and the dispatcher has not carried out yet are carried out first (a domain
    /// whose `INTRODUCE` the store took is saved as served, without its ring having been
    /// pumped; a released one is unmapped and unbound); set-ups the store did not take are
    /// undone. Other pending work (a ring with service rounds left, watch events not yet
    /// delivered) needs nothing: the events are in the stream, and [`Dispatcher::restore`]
    /// serves every ring once. Nothing else changes: no ring is pumped, so saving twice in
    /// a row writes the same stream.
    ///
    /// Xen's unique domain id is not known here: ring connections are written without one.
    pub fn save_state<K: Sink>(
        &mut self,
        global: Global,
        program: &[SavedConnection<'_>],
        options: SaveOptions,
        sink: &mut K,
    ) -> Result<SaveStats, SaveError<K::Error>> {
        self.settle_for_save();
        let mut conns: Vec<SavedConnection<'_>> =
            Vec::with_capacity(program.len().saturating_add(self.served.len()));
        conns.extend_from_slice(program);
        conns.extend(self.served.values().map(|s| SavedConnection {
            id: s.conn.id(),
            transport: Transport::Ring {
                port: s.local_port,
                unique_id: None,
            },
            protocol: Some(&s.conn),
            input: &s.backlog,
        }));
        state::save(&mut self.store, global, &conns, options, sink)
    }

    /// Carries out the introductions and releases the store made (without pumping the new
    /// rings: they are served after the restore), and undoes set-ups it did not take.
    fn settle_for_save(&mut self) {
        self.carry_out_changes(false);
    }

    /// Serves a store restored from a state stream ([`xs_core::state::restore`]), every
    /// ring connection in it again; returns the dispatcher and the other connections (the
    /// program's sockets and in-process clients, in stream order) for the program to take
    /// over.
    ///
    /// For each ring connection: its page is mapped again by `ring` (given the services,
    /// the domain and its introduction, `None` for a domain served without one: the
    /// privileged domain served from the start; [`map_again`] maps every ring through the
    /// services); its local port, already bound (event channels live in the hypervisor
    /// and, across an exec, in the inherited event-channel device), is used as it is,
    /// never bound again; its restored [`xs_core::protocol::Connection`] is installed with
    /// its input ([`RestoredConnection::input`]), which it takes before the ring's. A ring
    /// the previous server had stopped serving (its page's `error` field set, where that
    /// feature is offered) stays so until the guest asks for a reconnection.
    ///
    /// A ring that cannot be mapped again, or a connection that makes no sense (a second
    /// ring connection of a domain, a port already used, a dead connection), is dropped:
    /// its store connection closed, its port unbound (unless another ring uses it), a
    /// warning logged ([`Dispatcher::take_log`]); a domain whose ring cannot be mapped and
    /// that the platform reports dying is forgotten by the store, as
    /// [`Dispatcher::on_dom_exc`] would. Every other ring carries on.
    ///
    /// Then domain states are asked once ([`Dispatcher::on_dom_exc`]: a domain may have
    /// died or shut down while nobody served it), and every ring is served once after a
    /// notification of its guest (harmless if nothing changed): a request the guest wrote
    /// meanwhile is read, output not sent before is written, watch events queued in the
    /// store are delivered. The program's connections with watch events queued are
    /// reported by [`Dispatcher::take_local_notifications`].
    ///
    /// The protocol settings of the restored ring connections are those `state::restore`
    /// gave them (`Access::default()` and `limits` are what [`Dispatcher::new`] gives
    /// rings); `limits` is for the rings introduced from now on. The store's watch-hash
    /// key is the one the program passed to `state::restore`: it should come from
    /// [`Services::entropy`], as [`Dispatcher::new`] draws it.
    pub fn restore(
        services: S,
        restored: Restored,
        limits: Limits,
        host: H,
        mut ring: impl FnMut(&mut S, DomId, Option<Introduction>) -> Result<S::Ring, S::Error>,
    ) -> (Dispatcher<S, H>, Vec<RestoredConnection>) {
        let Restored {
            store, connections, ..
        } = restored;
        let mut this = Dispatcher::bare(services, store, limits, host);
        let mut program = Vec::new();
        for c in connections {
            match c.transport {
                Transport::Ring { port, .. } => this.resume_ring(c, port, &mut ring),
                Transport::Socket { .. } => program.push(c),
            }
        }
        this.on_dom_exc();
        let domids: Vec<DomId> = this.served.keys().copied().collect();
        for domid in domids {
            if let Some(port) = this.local_port(domid) {
                this.services.notify(port);
            }
            this.service(domid);
        }
        this.settle();
        for c in &program {
            if this.store.queued_events(c.id) > 0 {
                this.local_notified.insert(c.id);
            }
        }
        (this, program)
    }

    /// Serves a restored ring connection again on its bound `port`, or drops it.
    fn resume_ring(
        &mut self,
        c: RestoredConnection,
        port: u32,
        ring: &mut impl FnMut(&mut S, DomId, Option<Introduction>) -> Result<S::Ring, S::Error>,
    ) {
        let domid = c.domid;
        let odd = if self.served.contains_key(&domid) {
            Some("a second ring connection of the domain")
        } else if self.ports.contains_key(&port) {
            Some("its port is another ring's")
        } else if self.store.is_dead(c.id) {
            Some("its connection is dead")
        } else {
            None
        };
        if let Some(why) = odd {
            self.host.warn(format!(
                "dom{domid}: restored ring connection on port {port} dropped: {why}"
            ));
            self.drop_restored(c, port);
            return;
        }
        let intro = self.store.introduction(domid);
        let page = match ring(&mut self.services, domid, intro) {
            Ok(page) => page,
            Err(e) => {
                self.host.warn(format!(
                    "dom{domid}: its ring could not be mapped again ({e}): its connection \
                     is dropped"
                ));
                self.drop_restored(c, port);
                if self.services.domain_state(domid) == DomainState::Dying {
                    self.host.log(format!("dom{domid} is gone"));
                    self.store.domain_gone(domid);
                }
                return;
            }
        };
        let features = ring_features(&self.store, domid);
        let mut server = Server::new(page, features);
        if features.contains(ServerFeatures::ERROR) {
            // ORDERING: relaxed; the field was written by the previous server (whose
            // writes this process follows), and it is only a diagnostic the guest reads.
            // (`ERROR_NONE` names no fault.)
            if let Some(fault) = RingFault::from_code(server.page().load(Field::Error)) {
                server.fail(fault);
            }
        }
        self.serve(domid, server, c.connection, port, c.input);
        self.host
            .log(format!("serving dom{domid} again on port {port}"));
    }

    /// Drops a restored connection that is not served: its store connection closed, its
    /// port unbound unless a served ring uses it.
    fn drop_restored(&mut self, c: RestoredConnection, port: u32) {
        self.store.disconnect(c.id);
        if !self.ports.contains_key(&port) {
            self.services.unbind(port);
        }
    }
}
