//! The guest's client over a served ring: every operation of [`XsClient`] answered as the
//! store answers it in process, errors included, and the xenbus helper from the guest's side.

use xs_core::perms::{Access, Perm};
use xs_core::store::Introduction;
use xs_core::{DomId, XsError};
use xs_serve::client::XsClient;
use xs_serve::fake::FakeServices;
use xs_serve::guest::{GuestClient, Waiter};
use xs_serve::xenbus::{End, XenbusDevice, XenbusState};
use xs_serve::{Dispatcher, ServeConfig};

const GUEST: DomId = DomId(3);

/// The guest's notification is served at once (a VM exit into the store).
struct Exit<'a> {
    xs: &'a mut Dispatcher<FakeServices>,
}

impl Waiter for Exit<'_> {
    fn kick(&mut self) {
        let port = self.xs.local_port(GUEST).expect("served");
        self.xs.on_event(port);
    }

    fn wait(&mut self) {
        assert!(self.xs.has_work(), "waiting for a store that owes nothing");
        self.xs.run_pending();
    }
}

fn setup() -> (
    Dispatcher<FakeServices>,
    GuestClient<xs_serve::fake::FakeRing>,
) {
    let mut fake = FakeServices::new();
    let page = fake.create_domain(GUEST);
    let mut xs = Dispatcher::new(fake, ServeConfig::default()).unwrap();
    xs.introduce(GUEST, Introduction { gfn: 1, evtchn: 1 })
        .unwrap();
    (xs, GuestClient::new(page))
}

#[test]
fn every_operation_over_the_ring() {
    let (mut xs, mut client) = setup();
    let mut exit = Exit { xs: &mut xs };
    let mut c = client.blocking(&mut exit);
    assert_eq!(c.read(0, "domid").unwrap(), b"3");
    c.mkdir(0, "data/dir").unwrap();
    c.write(0, "data/dir/a", b"1").unwrap();
    c.write(0, "data/dir/b", b"").unwrap();
    assert_eq!(
        c.directory(0, "data/dir").unwrap(),
        [b"a".to_vec(), b"b".to_vec()]
    );
    let perms = [Perm::owner(GUEST), Perm::new(DomId::DOM0, Access::READ)];
    c.set_perms(0, "data/dir/a", &perms).unwrap();
    assert_eq!(c.get_perms(0, "data/dir/a").unwrap(), perms);
    c.rm(0, "data/dir/b").unwrap();
    assert_eq!(c.read(0, "data/dir/b"), Err(XsError::NoEnt));
    // The store's refusals arrive as the errors they name.
    assert_eq!(c.read(0, "/tool/xenstored"), Err(XsError::Acces));
    assert_eq!(c.write(0, "", b"x"), Err(XsError::Inval));
    // Watches, with a depth; the first event comes at once.
    c.watch("data", "d", Some(1)).unwrap();
    assert_eq!(c.wait_event().unwrap().event().unwrap().0, b"data");
    c.write(0, "data/dir/deep/er", b"not reported: two levels below")
        .unwrap();
    c.write(0, "data/top", b"reported").unwrap();
    assert_eq!(c.next_event().unwrap().unwrap().0, b"data/top");
    assert_eq!(c.next_event().unwrap(), None);
    c.unwatch("data", "d").unwrap();
    assert_eq!(c.unwatch("data", "d"), Err(XsError::NoEnt));
    // Transactions: isolated until committed.
    let tx = c.transaction_start().unwrap();
    c.write(tx, "data/t", b"in tx").unwrap();
    assert_eq!(c.read(0, "data/t"), Err(XsError::NoEnt));
    c.transaction_end(tx, true).unwrap();
    assert_eq!(c.read(0, "data/t").unwrap(), b"in tx");
    assert_eq!(c.transaction_end(tx, true), Err(XsError::NoEnt));
}

/// A conflicting commit is run again by `transaction`; the guest sees one result.
#[test]
fn a_conflicting_transaction_is_run_again() {
    let (mut xs, mut client) = setup();
    let vmm = xs.connect(DomId::DOM0).unwrap();
    let mut runs = 0;
    {
        let mut exit = Exit { xs: &mut xs };
        let mut c = client.blocking(&mut exit);
        c.write(0, "data/n", b"1").unwrap();
        let seen = c
            .transaction(|t| {
                runs += 1;
                let v = t.read("data/n")?;
                if runs == 1 {
                    // Someone else changes what the transaction read.
                    let xs = &mut *t.client().waiter_mut().xs;
                    xs.session(vmm, |s| s.write("/local/domain/3/data/n", b"2"))?;
                }
                t.write("data/copy", &v)?;
                Ok(v)
            })
            .unwrap();
        assert_eq!(seen, b"2");
    }
    assert_eq!(runs, 2);
}

/// The guest's side of a device the toolstack made: it reads the backend's state and
/// switches its own, but cannot touch the backend's.
#[test]
fn a_frontend_over_the_ring() {
    let (mut xs, mut client) = setup();
    let vmm = xs.connect(DomId::DOM0).unwrap();
    let dev = XenbusDevice::new("vif", 0, DomId::DOM0, GUEST);
    xs.session(vmm, |s| dev.create(s, &[], &[])).unwrap();
    xs.session(vmm, |s| {
        dev.switch_state(s, End::Backend, XenbusState::InitWait)
    })
    .unwrap();
    let mut exit = Exit { xs: &mut xs };
    let mut c = client.blocking(&mut exit);
    assert_eq!(
        dev.state(&mut c, End::Backend).unwrap(),
        XenbusState::InitWait
    );
    dev.switch_state(&mut c, End::Frontend, XenbusState::Initialised)
        .unwrap();
    assert_eq!(
        dev.switch_state(&mut c, End::Backend, XenbusState::Closed),
        Err(XsError::Acces)
    );
    let state = xs.session(vmm, |s| dev.state(s, End::Frontend)).unwrap();
    assert_eq!(state, XenbusState::Initialised);
}
