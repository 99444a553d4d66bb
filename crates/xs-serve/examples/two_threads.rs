//! The guest's end and the store's end of a ring on two threads, as a guest and a store
//! domain are on two CPUs: the only things they share are the ring page and notifications.
//!
//! ```text
//! cargo run -p xs-serve --example two_threads
//! ```
//!
//! The store thread owns the [`Dispatcher`] and sleeps on its event channel (a `mpsc`
//! channel of port numbers here); the guest thread uses a [`GuestClient`] whose [`Waiter`]
//! notifies the store and sleeps on its own channel until the store notifies back.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::thread;
use std::time::{Duration, Instant};

use xs_serve::prelude::*;

const GUEST: DomId = DomId(7);
/// The guest's end of its store event channel.
const GUEST_PORT: u32 = 1;
/// The store's end of it.
const STORE_PORT: u32 = 10;

/// The store side's platform: one guest, one event channel to it.
struct Platform {
    page: Arc<SharedPage>,
    /// Wakes the guest.
    to_guest: Sender<()>,
    started: Instant,
}

impl Services for Platform {
    type Ring = Arc<SharedPage>;
    type Error = String;

    fn map_ring(&mut self, domid: DomId, _gfn: u64) -> Result<Arc<SharedPage>, String> {
        if domid == GUEST {
            Ok(self.page.clone())
        } else {
            Err(format!("no dom{domid}"))
        }
    }

    fn unmap_ring(&mut self, _domid: DomId, _ring: Arc<SharedPage>) {}

    fn bind_interdomain(&mut self, domid: DomId, remote_port: u32) -> Result<u32, String> {
        if (domid, remote_port) == (GUEST, GUEST_PORT) {
            Ok(STORE_PORT)
        } else {
            Err(format!("dom{domid} has no unbound port {remote_port}"))
        }
    }

    fn unbind(&mut self, _local_port: u32) {}

    fn notify(&mut self, _local_port: u32) {
        // The guest may have gone: nothing to wake then.
        let _ = self.to_guest.send(());
    }

    fn domain_state(&mut self, _domid: DomId) -> DomainState {
        DomainState::Running
    }

    fn entropy(&mut self) -> u64 {
        let mut bytes = [0u8; 8];
        getrandom::fill(&mut bytes).expect("the OS has entropy");
        u64::from_ne_bytes(bytes)
    }

    fn now_ns(&mut self) -> Option<u64> {
        u64::try_from(self.started.elapsed().as_nanos()).ok()
    }
}

/// The guest's event channel: send on it, wait on it.
struct EventChannel {
    to_store: Sender<u32>,
    from_store: Receiver<()>,
}

impl Waiter for EventChannel {
    fn kick(&mut self) {
        self.to_store.send(STORE_PORT).expect("the store runs");
    }

    fn wait(&mut self) {
        match self.from_store.recv_timeout(Duration::from_secs(5)) {
            Ok(()) => while self.from_store.try_recv().is_ok() {},
            Err(RecvTimeoutError::Timeout) => panic!("the store did not answer in 5 s"),
            Err(RecvTimeoutError::Disconnected) => panic!("the store stopped"),
        }
    }
}

/// The store's thread: introduce the guest, then serve events until the guest is done.
fn store(platform: Platform, events: Receiver<u32>) -> Result<(), String> {
    let mut xs = Dispatcher::new(platform, ServeConfig::default()).map_err(|e| e.to_string())?;
    xs.introduce(
        GUEST,
        Introduction {
            gfn: 0xfeffc,
            evtchn: GUEST_PORT,
        },
    )
    .map_err(|e| e.to_string())?;
    // Sleeps until an event; the loop ends when the guest drops its end of the channel.
    for port in events {
        xs.on_event(port);
        while xs.has_work() {
            xs.run_pending();
        }
    }
    for line in xs.take_log() {
        println!("store: {line}");
    }
    Ok(())
}

/// The guest's thread: a few requests, a watch, a transaction.
fn guest(page: Arc<SharedPage>, mut channel: EventChannel) -> XsResult<()> {
    let mut client = GuestClient::new(page);
    let mut xs = client.blocking(&mut channel);
    let domid = xs.read(0, "domid")?;
    println!("guest: my domid is {}", String::from_utf8_lossy(&domid));

    // A watch on our data, one level deep; the store sends one event at once.
    xs.watch("data", "mine", Some(1))?;
    let first = xs.wait_event()?;
    let (path, token) = first.event().expect("a watch event");
    println!(
        "guest: watch on {} set (token {})",
        String::from_utf8_lossy(path),
        String::from_utf8_lossy(token)
    );

    // Two nodes written in one transaction: the watch fires at the commit.
    xs.transaction(|t| {
        t.write("data/colour", b"green")?;
        t.write("data/shape", b"round")
    })?;
    let mut fired = Vec::new();
    for _ in 0..2 {
        let event = xs.wait_event()?;
        let (path, _) = event.event().expect("a watch event");
        fired.push(String::from_utf8_lossy(path).into_owned());
    }
    println!("guest: committed; events for {}", fired.join(", "));
    let names = xs.directory(0, "data")?;
    let names: Vec<_> = names.iter().map(|n| String::from_utf8_lossy(n)).collect();
    println!("guest: data holds {}", names.join(", "));
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let page = Arc::new(SharedPage::default());
    let (to_store, events) = channel();
    let (to_guest, from_store) = channel();
    let platform = Platform {
        page: page.clone(),
        to_guest,
        started: Instant::now(),
    };
    let store = thread::spawn(move || store(platform, events));
    let channel = EventChannel {
        to_store,
        from_store,
    };
    // The store introduces the guest before it serves events: the guest's first request
    // waits in the ring until then (the event announcing it is queued meanwhile).
    let result = thread::spawn(move || guest(page, channel)).join();
    // The guest's end of the channel is gone now: the store thread ends.
    store.join().map_err(|_| "the store thread panicked")??;
    result.map_err(|_| "the guest thread panicked")??;
    println!("done: both ends on their own threads, sharing only the page and events");
    Ok(())
}
