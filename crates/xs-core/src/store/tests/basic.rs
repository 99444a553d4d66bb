//! Basic operations: reads, writes, directories, removal and paths.

use super::*;

// ----- basic operations ----------------------------------------------------------------

#[test]
fn initial_tree_is_xens() {
    let mut h = Host::new();
    assert_eq!(names(h.d0().directory("/").unwrap()), ["tool"]);
    assert_eq!(names(h.d0().directory("/tool").unwrap()), ["xenstored"]);
    assert_eq!(h.d0().get_perms("/").unwrap(), perms(&["n0"]));
    h.checked();
}

#[test]
fn write_read_mkdir_rm_directory() {
    let mut h = Host::new();
    let mut s = h.d0();
    s.write("/a/b/c", b"v\0al").unwrap();
    assert_eq!(s.read("/a/b/c").unwrap(), b"v\0al");
    assert_eq!(s.read("/a/b").unwrap(), b"");
    assert_eq!(s.read("/a/x"), Err(XsError::NoEnt));
    s.mkdir("/a/b/c").unwrap();
    assert_eq!(s.read("/a/b/c").unwrap(), b"v\0al", "mkdir keeps the value");
    s.mkdir("/a/d").unwrap();
    s.write("/a/B", b"").unwrap();
    s.write("/a/0", b"").unwrap();
    assert_eq!(names(s.directory("/a").unwrap()), ["0", "B", "b", "d"]);
    s.rm("/a/b").unwrap();
    assert_eq!(s.read("/a/b/c"), Err(XsError::NoEnt));
    s.rm("/a/b").unwrap();
    assert_eq!(s.rm("/a/b/c"), Err(XsError::NoEnt), "parent missing too");
    assert_eq!(s.rm("/"), Err(XsError::Inval));
    assert_eq!(s.read("/a//b"), Err(XsError::Inval));
    assert_eq!(s.write("/a/", b""), Err(XsError::Inval));
    assert_eq!(s.directory("/nope"), Err(XsError::NoEnt));
    h.checked();
}

#[test]
fn relative_paths_are_under_the_callers_home() {
    let mut h = Host::new();
    let g = h.guest(5);
    h.s(g).write("data/x", b"1").unwrap();
    assert_eq!(h.d0().read("/local/domain/5/data/x").unwrap(), b"1");
    assert_eq!(h.s(g).read("data/x").unwrap(), b"1");
    // dom0's relative paths are under /local/domain/0.
    h.d0().write("y", b"2").unwrap();
    assert_eq!(h.d0().read("/local/domain/0/y").unwrap(), b"2");
}

#[test]
fn path_max_quota_counts_after_the_home_prefix() {
    let mut h = Host::new();
    let g = h.guest(5);
    h.store
        .set_quota(h.dom0, Some(DomId(5)), QuotaKind::PathMax, 10)
        .unwrap();
    assert!(h.s(g).write("data/12345", b"").is_ok()); // "data/12345" is 10 bytes
    assert_eq!(h.s(g).write("data/123456", b""), Err(XsError::Inval));
    assert_eq!(
        h.s(g).write("/local/domain/5/data/123456", b""),
        Err(XsError::Inval)
    );
}

#[test]
fn values_may_hold_any_bytes_up_to_the_payload() {
    let mut h = Host::new();
    let big: Vec<u8> = (0..=255u8).cycle().take(4000).collect();
    h.d0().write("/big", &big).unwrap();
    assert_eq!(h.d0().read("/big").unwrap(), big);
}

#[test]
fn deep_trees_are_removed_without_recursion() {
    let mut h = Host::new();
    // The deepest path the protocol allows: ~1500 levels.
    let mut path = String::new();
    while path.len() + 2 <= path::ABS_PATH_MAX {
        path.push_str("/a");
    }
    h.d0().write(&path, b"deep").unwrap();
    assert_eq!(h.d0().read(&path).unwrap(), b"deep");
    let before = h.store.node_count();
    h.d0().rm("/a").unwrap();
    assert_eq!(h.store.node_count(), before - path.len() / 2);
    h.checked();
}

#[test]
fn directory_part_walks_a_large_directory() {
    let mut h = Host::new();
    for i in 0..2000 {
        h.d0().mkdir(&alloc::format!("/local/domain/{i}")).unwrap();
    }
    let mut out = Vec::new();
    assert_eq!(
        h.store.directory(h.dom0, 0, b"/local/domain", &mut out),
        Err(XsError::TooBig)
    );
    let mut all = Vec::new();
    let mut offset = 0;
    let mut gencnt = None;
    loop {
        let mut out = Vec::new();
        h.store
            .directory_part(h.dom0, 0, b"/local/domain", offset, &mut out)
            .unwrap();
        let nul = out.iter().position(|&b| b == 0).unwrap();
        let g = out[..nul].to_vec();
        assert!(gencnt.is_none() || gencnt.as_ref() == Some(&g));
        gencnt = Some(g);
        let body = &out[nul + 1..];
        let end = body.ends_with(b"\0\0") || body == b"\0";
        let chunk = if end { &body[..body.len() - 1] } else { body };
        all.extend_from_slice(chunk);
        offset += chunk.len();
        if end {
            break;
        }
    }
    let listed = split_names(&all);
    assert_eq!(listed.len(), 2000);
    assert!(listed.windows(2).all(|w| w[0] < w[1]));
    // The generation count changes when a child is added.
    h.d0().mkdir("/local/domain/99999").unwrap();
    let mut out = Vec::new();
    h.store
        .directory_part(h.dom0, 0, b"/local/domain", 0, &mut out)
        .unwrap();
    assert_ne!(
        Some(out[..out.iter().position(|&b| b == 0).unwrap()].to_vec()),
        gencnt
    );
}

#[test]
fn dead_and_unknown_connections_are_refused() {
    let mut h = Host::new();
    let g = h.guest(3);
    h.store.release(h.dom0, DomId(3)).unwrap();
    assert_eq!(h.s(g).read("/"), Err(XsError::Io));
    h.store.disconnect(g);
    assert_eq!(h.s(g).read("/"), Err(XsError::Inval));
    assert_eq!(h.store.connect(DomId(0x7FF5)), Err(XsError::Inval));
    let _ = Access::READ;
    let _ = vec![0u8];
}
