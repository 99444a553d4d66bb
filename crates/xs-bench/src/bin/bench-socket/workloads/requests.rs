//! Requests built before a run (a guest's nodes from the host template), and how a batch of
//! them is sent.

use xs_bench::client::{Client, ClientError, MsgType, push_strings, push_write};
use xs_bench::host::{self, Base, Entry, Perms, TEMPLATE, Value};

use crate::config::{R, other};

/// Number of nodes of a guest's home directory in the template (64).
pub(super) fn home_entries() -> Vec<&'static Entry> {
    TEMPLATE.iter().filter(|e| e.base == Base::Home).collect()
}

/// Sends `reqs` with up to `window` in flight; an error reply fails unless its name is in
/// `tolerate` (`"*"` tolerates any). Returns the number of tolerated errors.
pub(super) fn batch(
    c: &mut Client,
    window: usize,
    reqs: &[(MsgType, Vec<u8>)],
    tolerate: &[&str],
) -> R<u64> {
    let mut tolerated = 0u64;
    let mut failure: Option<ClientError> = None;
    c.pipeline(
        window,
        |i, payload| {
            let (t, p) = reqs.get(i as usize)?;
            payload.extend_from_slice(p);
            Some((*t, 0))
        },
        |i, reply| {
            if let Some(name) = reply.error() {
                if tolerate.contains(&name.as_str()) || tolerate.contains(&"*") {
                    tolerated += 1;
                } else if failure.is_none() {
                    let (t, p) = &reqs[i as usize];
                    let path = p.split(|&b| b == 0).next().unwrap_or_default();
                    failure = Some(other(format!(
                        "request type {t} on {} failed: {name}",
                        String::from_utf8_lossy(path)
                    )));
                }
            }
            Ok(())
        },
    )?;
    match failure {
        Some(e) => Err(e),
        None => Ok(tolerated),
    }
}

pub(super) fn req_path(t: MsgType, path: &[u8]) -> (MsgType, Vec<u8>) {
    let mut p = Vec::with_capacity(path.len() + 1);
    push_strings(&mut p, &[path]);
    (t, p)
}

pub(super) fn req_write(path: &[u8], value: &[u8]) -> (MsgType, Vec<u8>) {
    let mut p = Vec::with_capacity(path.len() + 1 + value.len());
    push_write(&mut p, path, value);
    (MsgType::Write, p)
}

pub(super) fn req_perms(path: &[u8], perms: &[String]) -> (MsgType, Vec<u8>) {
    let mut p = Vec::new();
    push_strings(&mut p, &[path]);
    for perm in perms {
        push_strings(&mut p, &[perm.as_bytes()]);
    }
    (MsgType::SetPerms, p)
}

/// libxl's permission lists for guest `d`, as wire strings.
fn perm_strings(perms: Perms, d: u32) -> Option<Vec<String>> {
    match perms {
        Perms::Inherit => None,
        Perms::Toolstack => Some(vec!["n0".into(), format!("r{d}")]),
        Perms::Guest => Some(vec![format!("n{d}")]),
        Perms::Frontend => Some(vec![format!("n{d}"), "r0".into()]),
    }
}

/// The requests that create `entries` of guest `d` (mkdir or write, then set_perms where the
/// template wants other permissions than inherited), parents first.
pub(super) fn guest_requests(entries: &[&Entry], d: u32, out: &mut Vec<(MsgType, Vec<u8>)>) {
    let d16 = u16::try_from(d).unwrap_or(u16::MAX);
    let (mut path, mut value) = (Vec::new(), Vec::new());
    for e in entries {
        path.clear();
        host::push_path(e, d16, &mut path);
        if e.value == Value::Dir {
            out.push(req_path(MsgType::Mkdir, &path));
        } else {
            value.clear();
            host::push_value(e.value, d16, &mut value);
            out.push(req_write(&path, &value));
        }
        if let Some(perms) = perm_strings(e.perms, d) {
            out.push(req_perms(&path, &perms));
        }
    }
}
