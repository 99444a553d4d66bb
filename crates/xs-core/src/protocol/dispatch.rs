//! One request in, one reply out: the wire's message types mapped onto the store.
//!
//! The rules around the operations are C xenstored's `process_message`: unknown types (and
//! `WATCH_EVENT`/`ERROR`, which only the store sends) get `ENOSYS`; privileged-only types get
//! `EACCES` from unprivileged callers; a `tx_id` naming no transaction of the connection gets
//! `ENOENT` (except for `WATCH`/`UNWATCH`, which ignore it); a reply larger than
//! `XENSTORE_PAYLOAD_MAX` becomes `E2BIG`. Read-only connections (the `socket_ro` of older
//! Xen) get `EROFS` for anything that changes the store.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;

use super::Host;
use super::control;
use crate::domid::{DomId, push_decimal};
use crate::error::{XsError, XsResult};
use crate::perms::{self, Perm};
use crate::quota::QuotaName;
use crate::store::{ChangeKind, ConnId, Introduction, Store};
use crate::wire::PAYLOAD_MAX;
use crate::wire::{Args, Header, MsgType, domid_arg, push_header, u32_arg};

/// How a connection may use the store.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Access {
    /// Only requests that do not change the store are allowed.
    pub read_only: bool,
}

/// Types only privileged callers may send.
fn privileged_only(t: MsgType) -> bool {
    matches!(
        t,
        MsgType::Control
            | MsgType::Introduce
            | MsgType::Release
            | MsgType::IsDomainIntroduced
            | MsgType::Resume
            | MsgType::SetTarget
            | MsgType::SetFeature
            | MsgType::GetQuota
            | MsgType::SetQuota
    )
}

/// Types that change the store.
fn writes(t: MsgType) -> bool {
    matches!(
        t,
        MsgType::Write
            | MsgType::Mkdir
            | MsgType::Rm
            | MsgType::SetPerms
            | MsgType::Introduce
            | MsgType::Release
            | MsgType::Resume
            | MsgType::SetTarget
            | MsgType::SetFeature
            | MsgType::SetQuota
            | MsgType::Control
    )
}

/// Whether the request must wait, unanswered, for a protected transaction to end (see
/// [`crate::store::PROTECT_AFTER`] and the store's fairness rules): a change outside a
/// transaction, or a commit, that would fail a transaction starving on what it changes. The
/// store then notifies the connection when it may go on.
pub fn must_wait(store: &mut Store, conn: ConnId, header: &Header, payload: &[u8]) -> bool {
    if store.protected_transactions() == 0 {
        return false;
    }
    let first = payload.split(|&b| b == 0).next().unwrap_or_default();
    let change = match header.kind() {
        Some(MsgType::TransactionEnd) if header.tx_id != 0 && first == b"T" => {
            return store.commit_must_wait(conn, header.tx_id);
        }
        // Inside a transaction a change takes effect at the commit, which is checked then.
        _ if header.tx_id != 0 => return false,
        Some(MsgType::Write | MsgType::Mkdir | MsgType::SetPerms) => ChangeKind::Node,
        Some(MsgType::Rm) => ChangeKind::Subtree,
        _ => return false,
    };
    store.change_must_wait(conn, first, change)
}

/// Handles one request and appends exactly one reply message to `out`.
pub fn handle(
    store: &mut Store,
    host: &mut dyn Host,
    conn: ConnId,
    access: Access,
    header: &Header,
    payload: &[u8],
    out: &mut Vec<u8>,
) {
    let start = out.len();
    // Room for the header, filled in once the payload is known.
    out.extend_from_slice(&[0u8; crate::wire::HEADER_LEN]);
    let body = out.len();
    let result = request(store, host, conn, access, header, Args(payload), out);
    let result = result.and_then(|t| {
        if out.len().saturating_sub(body) > PAYLOAD_MAX {
            Err(XsError::TooBig)
        } else {
            Ok(t)
        }
    });
    let msg_type = match result {
        Ok(t) => t as u32,
        Err(e) => {
            out.truncate(body);
            out.extend_from_slice(e.name().as_bytes());
            out.push(0);
            MsgType::Error as u32
        }
    };
    let len = out.len().saturating_sub(body);
    let reply = Header {
        msg_type,
        req_id: header.req_id,
        tx_id: header.tx_id,
        len: u32::try_from(len).unwrap_or(0),
    };
    if let Some(h) = out.get_mut(start..body) {
        h.copy_from_slice(&reply.encode());
    }
}

fn ok(out: &mut Vec<u8>) {
    out.extend_from_slice(b"OK\0");
}

fn push_text(out: &mut Vec<u8>, text: &[u8]) {
    out.extend_from_slice(text);
    out.push(0);
}

fn push_number(out: &mut Vec<u8>, n: u64) {
    push_decimal(out, n);
    out.push(0);
}

/// Runs the request, appending the reply payload; returns the reply's type.
fn request(
    store: &mut Store,
    host: &mut dyn Host,
    conn: ConnId,
    access: Access,
    header: &Header,
    args: Args<'_>,
    out: &mut Vec<u8>,
) -> XsResult<MsgType> {
    let t = header.kind().ok_or(XsError::NoSys)?;
    if matches!(t, MsgType::WatchEvent | MsgType::Error) {
        return Err(XsError::NoSys);
    }
    let privileged = store
        .conn_domid(conn)
        .is_some_and(|d| store.is_privileged(d));
    if privileged_only(t) && !privileged {
        return Err(XsError::Acces);
    }
    let tx = header.tx_id;
    if tx != 0
        && !matches!(t, MsgType::Watch | MsgType::Unwatch)
        && !store.has_transaction(conn, tx)
    {
        return Err(XsError::NoEnt);
    }
    if access.read_only && writes(t) {
        return Err(XsError::RoFs);
    }
    match t {
        MsgType::Read => store.read(conn, tx, args.one()?, out)?,
        MsgType::Write => {
            let (path, value) = args.path_and_value()?;
            store.write(conn, tx, path, value)?;
            ok(out);
        }
        MsgType::Mkdir => {
            store.mkdir(conn, tx, args.one()?)?;
            ok(out);
        }
        MsgType::Rm => {
            store.rm(conn, tx, args.one()?)?;
            ok(out);
        }
        MsgType::Directory => store.directory(conn, tx, args.one()?, out)?,
        MsgType::DirectoryPart => {
            let [path, offset] = args.exactly::<2>()?;
            let offset = usize::try_from(u32_arg(offset)?).map_err(|_| XsError::Inval)?;
            store.directory_part(conn, tx, path, offset, out)?;
        }
        MsgType::GetPerms => {
            for p in store.get_perms(conn, tx, args.one()?)? {
                p.push_text(out);
                out.push(0);
            }
        }
        MsgType::SetPerms => {
            let mut strings = args.strings();
            let path = strings.next().ok_or(XsError::Inval)?;
            let list: Vec<Perm> = perms::parse_list(strings)?;
            store.set_perms(conn, tx, path, &list)?;
            ok(out);
        }
        MsgType::Watch => {
            let (path, token, depth) = watch_args(args)?;
            store.watch(conn, path, token, depth)?;
            ok(out);
        }
        MsgType::Unwatch => {
            let [path, token] = args.exactly::<2>()?;
            store.unwatch(conn, path, token)?;
            ok(out);
        }
        MsgType::ResetWatches => {
            store.reset_watches(conn)?;
            ok(out);
        }
        MsgType::TransactionStart => {
            if tx != 0 {
                // No nested transactions.
                return Err(XsError::Busy);
            }
            let id = store.transaction_start(conn)?;
            host.transaction_started(conn, store.open_transactions(conn) == 1);
            push_number(out, u64::from(id));
        }
        MsgType::TransactionEnd => {
            let commit = match args.one()? {
                b"T" => true,
                b"F" => false,
                _ => return Err(XsError::Inval),
            };
            if tx == 0 {
                return Err(XsError::NoEnt);
            }
            store.transaction_end(conn, tx, commit)?;
            ok(out);
        }
        MsgType::GetDomainPath => {
            let domid = domid_arg(args.one()?)?;
            push_text(out, &Store::domain_path(domid));
        }
        MsgType::IsDomainIntroduced => {
            let domid = domid_arg(args.one()?)?;
            let yes = domid == DomId::SELF || store.is_introduced(domid);
            push_text(out, if yes { b"T" } else { b"F" });
        }
        MsgType::Introduce => {
            let [domid, gfn, evtchn] = args.at_least::<3>()?;
            let domid = domid_arg(domid)?;
            let intro = Introduction {
                gfn: signed_decimal(gfn)?,
                evtchn: u32_arg(evtchn)?,
            };
            store.require_privileged(conn)?;
            super::introduce(store, host, domid, intro)?;
            ok(out);
        }
        MsgType::Release => {
            let domid = domid_arg(args.one()?)?;
            store.require_privileged(conn)?;
            super::release(store, host, domid)?;
            ok(out);
        }
        MsgType::Resume => {
            store.resume(conn, domid_arg(args.one()?)?)?;
            ok(out);
        }
        MsgType::SetTarget => {
            let [domid, target] = args.at_least::<2>()?;
            store.set_target(conn, domid_arg(domid)?, domid_arg(target)?)?;
            ok(out);
        }
        MsgType::GetFeature => {
            let domid = match args.count() {
                0 => None,
                _ => Some(domid_arg(args.one()?)?),
            };
            push_number(out, u64::from(store.get_features(conn, domid)?));
        }
        MsgType::SetFeature => {
            let [domid, value] = args.exactly::<2>()?;
            store.set_features(conn, domid_arg(domid)?, u32_arg(value)?)?;
            ok(out);
        }
        MsgType::GetQuota => get_quota(store, conn, args, out)?,
        MsgType::SetQuota => {
            let (domid, name, value) = match args.count() {
                2 => {
                    let [name, value] = args.exactly::<2>()?;
                    (None, name, value)
                }
                3 => {
                    let [domid, name, value] = args.exactly::<3>()?;
                    (Some(domid_arg(domid)?), name, value)
                }
                _ => return Err(XsError::Inval),
            };
            let name = QuotaName::parse(name).ok_or(XsError::Inval)?;
            store.set_quota(conn, domid, name, u32_arg(value)?)?;
            ok(out);
        }
        MsgType::Control => {
            control::control(store, host, conn, args, out)?;
        }
        MsgType::WatchEvent | MsgType::Error => return Err(XsError::NoSys),
    }
    Ok(t)
}

/// `WATCH <wpath>|<token>|[<depth>|]?`: a third string is the depth
/// (`XENSTORE_SERVER_FEATURE_WATCHDEPTH`); an empty one is no depth, as a reserved value
/// sent empty must not change the meaning.
fn watch_args(args: Args<'_>) -> XsResult<(&[u8], &[u8], Option<u32>)> {
    let mut strings = args.strings();
    let path = strings.next().ok_or(XsError::Inval)?;
    let token = strings.next().ok_or(XsError::Inval)?;
    let depth = match strings.next() {
        None | Some(b"") => None,
        Some(d) => Some(u32_arg(d)?),
    };
    if strings.next().is_some() {
        return Err(XsError::Inval);
    }
    Ok((path, token, depth))
}

/// `INTRODUCE`'s `<gfn>` is "signed decimal (!)" (`docs/misc/xenstore.txt`).
fn signed_decimal(text: &[u8]) -> XsResult<u64> {
    match text.split_first() {
        Some((b'-', digits)) => {
            let v = crate::domid::parse_decimal(digits).ok_or(XsError::Inval)?;
            let v = i64::try_from(v).map_err(|_| XsError::Inval)?;
            Ok(v.wrapping_neg() as u64)
        }
        _ => crate::domid::parse_decimal(text).ok_or(XsError::Inval),
    }
}

/// `GET_QUOTA [[<domid>|]<quota>|]`: without arguments the supported quota names separated by
/// blanks (C xenstored 4.22's, see [`QuotaName::all`]); else one value, global or of one
/// domain.
fn get_quota(store: &mut Store, conn: ConnId, args: Args<'_>, out: &mut Vec<u8>) -> XsResult<()> {
    match args.count() {
        0 => {
            let mut names = String::new();
            for name in QuotaName::all() {
                let gap = if names.is_empty() { "" } else { " " };
                let _ = write!(names, "{gap}{name}");
            }
            push_text(out, names.as_bytes());
        }
        1 => {
            let name = QuotaName::parse(args.one()?).ok_or(XsError::Inval)?;
            push_number(out, u64::from(store.get_quota(conn, None, name)?));
        }
        2 => {
            let [domid, name] = args.exactly::<2>()?;
            let name = QuotaName::parse(name).ok_or(XsError::Inval)?;
            let value = store.get_quota(conn, Some(domid_arg(domid)?), name)?;
            push_number(out, u64::from(value));
        }
        _ => return Err(XsError::Inval),
    }
    Ok(())
}

/// Appends a `WATCH_EVENT` message for `path` and `token` to `out` (events too long for one
/// message never reach here: the store substitutes the watch's own path, see `Store`).
pub fn push_event(out: &mut Vec<u8>, path: &[u8], token: &[u8]) {
    let len = path.len().saturating_add(token.len()).saturating_add(2);
    if len > PAYLOAD_MAX {
        return;
    }
    // Written in place, without an intermediate payload buffer.
    push_header(out, MsgType::WatchEvent as u32, 0, 0, len);
    out.extend_from_slice(path);
    out.push(0);
    out.extend_from_slice(token);
    out.push(0);
}

/// The path and token of a `WATCH_EVENT` payload (`<path>\0<token>\0`), if it is one.
pub(crate) fn event_parts(payload: &[u8]) -> Option<(&[u8], &[u8])> {
    let (last, body) = payload.split_last()?;
    if *last != 0 {
        return None;
    }
    let nul = body.iter().position(|&b| b == 0)?;
    let (path, rest) = body.split_at_checked(nul)?;
    let token = rest.get(1..)?;
    (!token.contains(&0)).then_some((path, token))
}

/// Whether `payload` is the payload [`push_event`] writes for `path` and `token`.
pub(crate) fn is_event_payload(payload: &[u8], path: &[u8], token: &[u8]) -> bool {
    let Some((p, rest)) = payload.split_at_checked(path.len()) else {
        return false;
    };
    let Some((&0, rest)) = rest.split_first() else {
        return false;
    };
    let Some((t, rest)) = rest.split_at_checked(token.len()) else {
        return false;
    };
    p == path && t == token && rest == [0]
}
