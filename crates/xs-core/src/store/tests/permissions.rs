//! Permissions: owners, entries, inheritance, targets and the XSAs about them.

use super::*;

// ----- permissions ---------------------------------------------------------------------

#[test]
fn permissions_owner_default_and_entries() {
    let mut h = Host::new();
    let g1 = h.guest(1);
    let g2 = h.guest(2);
    let g3 = h.guest(3);
    h.d0().write("/p", b"v").unwrap();
    h.d0().set_perms("/p", &perms(&["r1", "w2", "n3"])).unwrap();
    assert_eq!(h.s(g1).read("/p").unwrap(), b"v");
    assert_eq!(h.s(g1).write("/p", b"x"), Ok(()), "owner may write");
    assert_eq!(h.s(g2).read("/p"), Err(XsError::Acces));
    assert_eq!(h.s(g2).write("/p", b"y"), Ok(()));
    assert_eq!(h.s(g3).read("/p"), Err(XsError::Acces));
    let g4 = h.guest(4);
    assert_eq!(
        h.s(g4).read("/p").unwrap(),
        b"y",
        "default is the owner letter"
    );
    assert_eq!(h.s(g4).write("/p", b"z"), Err(XsError::Acces));
    // Only the owner may change permissions; only privileged callers the owner.
    assert_eq!(
        h.s(g2).set_perms("/p", &perms(&["b1"])),
        Err(XsError::Acces)
    );
    assert_eq!(h.s(g1).set_perms("/p", &perms(&["b2"])), Err(XsError::Perm));
    assert_eq!(h.s(g1).set_perms("/p", &perms(&["n1", "r2"])), Ok(()));
    assert_eq!(h.s(g2).read("/p").unwrap(), b"y");
    assert_eq!(h.s(g4).read("/p"), Err(XsError::Acces));
}

#[test]
fn missing_and_unreadable_look_the_same() {
    let mut h = Host::new();
    let g = h.guest(7);
    h.d0().write("/secret/exists", b"x").unwrap();
    h.d0().set_perms("/secret", &perms(&["n0"])).unwrap();
    h.d0().set_perms("/secret/exists", &perms(&["n0"])).unwrap();
    let a = h.s(g).read("/secret/exists");
    let b = h.s(g).read("/secret/missing");
    assert_eq!(a, Err(XsError::Acces));
    assert_eq!(a, b);
    assert_eq!(h.s(g).directory("/secret"), Err(XsError::Acces));
    assert_eq!(h.s(g).directory("/secret/nope"), Err(XsError::Acces));
}

#[test]
fn created_nodes_inherit_and_guests_own_what_they_create() {
    let mut h = Host::new();
    let g = h.guest(6);
    h.d0().mkdir("/shared").unwrap();
    h.d0()
        .set_perms("/shared", &perms(&["n0", "b6", "r9"]))
        .unwrap();
    h.s(g).write("/shared/mine/leaf", b"1").unwrap();
    assert_eq!(
        h.d0().get_perms("/shared/mine").unwrap(),
        perms(&["n6", "b6", "r9"])
    );
    assert_eq!(
        h.d0().get_perms("/shared/mine/leaf").unwrap(),
        perms(&["n6", "b6", "r9"])
    );
    // A privileged creator keeps the inherited owner.
    h.d0().write("/shared/tool", b"").unwrap();
    assert_eq!(
        h.d0().get_perms("/shared/tool").unwrap(),
        perms(&["n0", "b6", "r9"])
    );
    assert_eq!(h.store.usage(DomId(6)).unwrap().nodes, 2 + 13);
}

#[test]
fn unprivileged_permission_lists_are_limited() {
    let mut h = Host::new();
    let g = h.guest(2);
    h.s(g).write("data/x", b"").unwrap();
    let six = perms(&["n2", "r1", "r3", "r4", "r5", "r6"]);
    assert_eq!(h.s(g).set_perms("data/x", &six), Err(XsError::NoSpc));
    assert_eq!(h.s(g).set_perms("data/x", &six[..5]), Ok(()));
    assert_eq!(h.d0().set_perms("/local/domain/2/data/x", &six), Ok(()));
}

#[test]
fn set_target_lets_a_device_model_act_for_its_guest() {
    let mut h = Host::new();
    let guest = h.guest(3);
    let dm = h.guest(4);
    h.s(guest).write("data/private", b"x").unwrap();
    h.s(guest)
        .set_perms("data/private", &perms(&["n3"]))
        .unwrap();
    assert_eq!(
        h.s(dm).read("/local/domain/3/data/private"),
        Err(XsError::Acces)
    );
    assert_eq!(
        h.store.set_target(guest, DomId(4), DomId(3)),
        Err(XsError::Acces)
    );
    h.store.set_target(h.dom0, DomId(4), DomId(3)).unwrap();
    assert_eq!(h.s(dm).read("/local/domain/3/data/private").unwrap(), b"x");
    assert_eq!(h.s(dm).write("/local/domain/3/data/private", b"y"), Ok(()));
}

/// Xen XSA-175: a guest with write access to its frontend directory may remove it, but
/// cannot re-create it, because it cannot write the directory containing it.
#[test]
fn xsa_175_a_removed_frontend_cannot_be_recreated_by_the_guest() {
    let mut h = Host::new();
    let g = h.guest(8);
    // As libxl creates a vif: the frontend directory is the guest's, readable by the backend.
    let fe = "/local/domain/8/device/vif/0";
    h.d0().mkdir(fe).unwrap();
    h.d0().set_perms(fe, &perms(&["n8", "r0"])).unwrap();
    h.d0()
        .write(&alloc::format!("{fe}/backend-id"), b"0")
        .unwrap();
    assert_eq!(
        h.d0().get_perms("/local/domain/8/device/vif").unwrap(),
        perms(&["n0", "r8"])
    );
    h.s(g).write("device/vif/0/state", b"1").unwrap();
    h.s(g).rm("device/vif/0").unwrap();
    assert_eq!(h.d0().read(fe), Err(XsError::NoEnt));
    assert_eq!(h.s(g).mkdir("device/vif/0"), Err(XsError::Acces));
    assert_eq!(
        h.s(g).write("device/vif/0/state", b"1"),
        Err(XsError::Acces)
    );
    assert_eq!(h.d0().read(fe), Err(XsError::NoEnt));
    h.checked();
}
