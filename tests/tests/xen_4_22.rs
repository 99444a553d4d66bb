//! What a Xen 4.22 toolstack meets that Xen 4.17's did not, as C xenstored 4.22 answers it:
//! `GET_QUOTA`/`SET_QUOTA` with its names (`node-permissions`, `soft-memory`) and for a
//! domain not yet introduced (libxl sets a guest's `xenstore_quota` before INTRODUCE),
//! `SET_FEATURE` refused with `EBUSY` once the domain is introduced, `INTRODUCE` creating no
//! `/local/domain/<N>` (the toolstack does), and `-K`. C xenstored 4.17, the reference
//! daemon here, has none of the requests, so these run on xs-host only.

use xs_e2e::wire::ty;
use xs_e2e::{Client, Daemon, Wire, require, tools, xs_host_only};

const DOMID: u32 = 5;

/// One request's reply payload, or the error's name.
fn ask(c: &mut (impl Client + ?Sized), t: u32, args: &[&str]) -> Result<String, String> {
    let mut payload = Vec::new();
    for a in args {
        payload.extend_from_slice(a.as_bytes());
        payload.push(0);
    }
    c.request(t, &payload)
        .map(|r| String::from_utf8_lossy(r.strip_suffix(b"\0").unwrap_or(&r)).into_owned())
}

/// libxl 4.22's `libxl_xs_quota_domain_get`: every name `GET_QUOTA` lists, read back for one
/// domain.
fn domain_quotas(c: &mut Wire, domid: u32) -> Vec<(String, String)> {
    let names = ask(c, ty::GET_QUOTA, &[]).expect("GET_QUOTA");
    names
        .split(' ')
        .map(|n| {
            let v = ask(c, ty::GET_QUOTA, &[&domid.to_string(), n])
                .unwrap_or_else(|e| panic!("GET_QUOTA {domid} {n}: {e}"));
            (n.to_owned(), v)
        })
        .collect()
}

#[test]
fn quotas_and_features_set_before_introduce() {
    if !xs_host_only() {
        return;
    }
    let d = require!(Daemon::start());
    let mut dom0 = d.connect();
    let dom = DOMID.to_string();
    assert_eq!(
        ask(&mut dom0, ty::GET_QUOTA, &[]).as_deref(),
        Ok(
            "nodes watches outstanding memory soft-memory transactions transaction-nodes \
             node-permissions path-max node-size"
        )
    );
    // Before INTRODUCE: the global values, then the domain's own.
    let before = domain_quotas(&mut dom0, DOMID);
    assert!(
        before.contains(&("nodes".into(), "1000".into())),
        "{before:?}"
    );
    assert!(
        before.contains(&("soft-memory".into(), "2097152".into())),
        "{before:?}"
    );
    for (name, value) in [
        ("nodes", "3"),
        ("soft-memory", "4096"),
        ("permissions", "2"),
    ] {
        assert_eq!(
            ask(&mut dom0, ty::SET_QUOTA, &[&dom, name, value]).as_deref(),
            Ok("OK"),
            "SET_QUOTA {dom} {name} {value}"
        );
    }
    assert_eq!(
        ask(&mut dom0, ty::GET_QUOTA, &[&dom, "node-permissions"]).as_deref(),
        Ok("2")
    );
    assert_eq!(
        ask(&mut dom0, ty::GET_QUOTA, &["nodes"]).as_deref(),
        Ok("1000")
    );
    assert_eq!(
        ask(&mut dom0, ty::SET_QUOTA, &[&dom, "soft-nodes", "1"]),
        Err("EINVAL".to_owned())
    );
    assert_eq!(
        ask(&mut dom0, ty::SET_FEATURE, &[&dom, "2"]).as_deref(),
        Ok("OK")
    );
    assert_eq!(ask(&mut dom0, ty::GET_FEATURE, &[&dom]).as_deref(), Ok("2"));
    // Xen 4.17's xenstore-control shows the domain's usage already.
    if let Ok([control]) = tools(["xenstore-control"]) {
        let out = d.run(&control, &["quota", &dom]);
        assert!(out.ok().starts_with("Domain 5:\n"), "{out:?}");
    }

    // INTRODUCE creates nothing in the store; the toolstack makes the home.
    let mut g = require!(d.guest(DOMID));
    assert_eq!(dom0.read("/local/domain/5"), Err("ENOENT".to_owned()));
    assert_eq!(
        ask(&mut dom0, ty::SET_FEATURE, &[&dom, "0"]),
        Err("EBUSY".to_owned())
    );
    assert_eq!(
        ask(&mut dom0, ty::SET_FEATURE, &["0", "0"]),
        Err("EBUSY".to_owned())
    );
    assert_eq!(ask(&mut *g, ty::GET_FEATURE, &[]).as_deref(), Ok("2"));
    dom0.write("/local/domain/5", b"").expect("home");
    dom0.set_perms("/local/domain/5", &["n5"])
        .expect("home perms");
    // The quotas set before INTRODUCE hold: 3 nodes (the home is one), 2 permissions.
    g.write("a", b"").expect("2nd node");
    g.write("b", b"").expect("3rd node");
    assert_eq!(g.write("c", b""), Err("ENOSPC".to_owned()));
    assert_eq!(
        g.set_perms("a", &["n5", "r0", "r1"]),
        Err("ENOSPC".to_owned())
    );
    assert_eq!(domain_quotas(&mut dom0, DOMID).len(), before.len());
    drop(g);
    d.stop();
}

/// `-K`: a released domain's nodes outside its home stay, owned by dom0, with their other
/// entries; without it they go.
#[test]
fn keep_orphans() {
    if !xs_host_only() {
        return;
    }
    for keep in [true, false] {
        let d = require!(Daemon::start_with(if keep { &["-K"][..] } else { &[] }));
        let mut dom0 = d.connect();
        dom0.write("/shared", b"").expect("mkdir");
        dom0.set_perms("/shared", &["n5", "r6"]).expect("chmod");
        let mut g = require!(d.guest(DOMID));
        g.write("/shared/x", b"v").expect("guest write");
        drop(g);
        assert_eq!(dom0.release(DOMID).as_deref(), Ok(&b"OK\0"[..]));
        if keep {
            assert_eq!(dom0.read("/shared/x").as_deref(), Ok(&b"v"[..]));
            assert_eq!(
                dom0.get_perms("/shared").as_deref(),
                Ok(&["n0".to_owned(), "r6".to_owned()][..])
            );
        } else {
            assert_eq!(dom0.read("/shared"), Err("ENOENT".to_owned()));
        }
        d.stop();
    }
}
