//! `CONTROL` commands, with the names, parameters and output formats of C xenstored as
//! `xenstore-control` shows them (`tools/xenstored/control.c`).

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;

use super::Host;
use super::live_update::{self, LiveUpdate};
use crate::domid::DomId;
use crate::error::{XsError, XsResult};
use crate::quota::QuotaKind;
use crate::store::{ConnId, Store};
use crate::wire::{Args, MsgType, domid_arg, u32_arg};

/// The commands and their parameters, as `help` lists them.
const COMMANDS: &[(&str, &str)] = &[
    ("check", ""),
    ("log", "[on|off|+<switch>|-<switch>]"),
    ("logfile", "<file>"),
    ("memreport", "[<file>]"),
    ("print", "<string>"),
    ("quota", "[set <name> <val>|<domid>|max [-r]]"),
    ("quota-soft", "[set <name> <val>]"),
    ("help", ""),
];

fn ok(out: &mut Vec<u8>) {
    out.extend_from_slice(b"OK\0");
}

fn text(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

/// Runs `CONTROL <command>|[<parameters>|]`.
pub(super) fn control(
    store: &mut Store,
    host: &mut dyn Host,
    conn: ConnId,
    args: Args<'_>,
    out: &mut Vec<u8>,
) -> XsResult<MsgType> {
    let mut strings = args.strings();
    let command = strings.next().ok_or(XsError::Inval)?;
    let params: Vec<&[u8]> = strings.collect();
    match (command, params.as_slice()) {
        (b"check", []) => {
            store.check().map_err(|_| XsError::Io)?;
            ok(out);
        }
        (b"help", []) => {
            let mut s = String::new();
            let extra = host.control_commands();
            let mut all: Vec<(&str, &str)> = COMMANDS.iter().copied().chain(extra).collect();
            // Alphabetical as C lists them, `help` last.
            all.sort_by_key(|&(name, _)| (name == "help", name));
            for (name, pars) in all {
                let _ = writeln!(s, "{name:<15} {pars}");
            }
            text(out, &s);
        }
        (live_update::COMMAND, _) => {
            // The parameters as bytes: an uploaded chunk (`-d`) may hold NULs.
            let raw = args
                .0
                .get(live_update::COMMAND.len().saturating_add(1)..)
                .unwrap_or_default();
            let command = LiveUpdate::parse(raw).ok_or(XsError::Inval)?;
            let mut answer = host.live_update(store, conn, command)?;
            answer.push(0);
            out.extend_from_slice(&answer);
        }
        (b"save-state", [file]) => {
            host.save_state(store, file)?;
            ok(out);
        }
        // Where there are no files (a stub domain), the state goes to memory.
        (b"save-state", []) => {
            host.save_state(store, b"")?;
            ok(out);
        }
        (b"print", [msg]) => {
            host.print(msg);
            ok(out);
        }
        (b"log", []) => {
            let mut s = String::from("Log switch settings:\n");
            for (name, on) in host.log_switches() {
                let _ = writeln!(s, "{name:<8}: {}", if on { "on" } else { "off" });
            }
            text(out, &s);
        }
        (b"log", [arg]) => {
            host.set_log(arg)?;
            ok(out);
        }
        (b"logfile", [file]) => {
            host.set_logfile(file)?;
            ok(out);
        }
        (b"memreport", []) | (b"memreport", [_]) => {
            let report = memory_report(store);
            host.memreport(&report, params.first().copied())?;
            ok(out);
        }
        (b"quota", []) => {
            let mut s = String::from("Quota settings:\n");
            for kind in QuotaKind::ALL {
                let value = store.get_quota(conn, None, kind)?;
                let _ = writeln!(
                    s,
                    "{:<17}: {value:>8} {}",
                    kind.control_name(),
                    kind.description()
                );
            }
            text(out, &s);
        }
        (b"quota", [b"set", name, value]) => {
            let kind = QuotaKind::from_name(name).ok_or(XsError::Inval)?;
            let value = u32_arg(value)?;
            if value < 1 {
                return Err(XsError::Inval);
            }
            store.set_quota(conn, None, kind, value)?;
            ok(out);
        }
        (b"quota", [b"max"]) | (b"quota", [b"max", b"-r"]) => {
            let mut s = String::from("Max. seen accounting values:\n");
            for kind in QuotaKind::ALL {
                let _ = writeln!(
                    s,
                    "{:<17}: {:>8}",
                    kind.control_name(),
                    store.peak(None, kind)
                );
            }
            if params.len() == 2 {
                store.reset_peaks();
            }
            text(out, &s);
        }
        (b"quota-soft", []) => {
            let mut s = String::from("Quota settings:\n");
            let _ = writeln!(
                s,
                "{:<17}: {:>8} Total Xenstore memory per domain (warning level)",
                "memory",
                store.memory_soft_quota()
            );
            text(out, &s);
        }
        (b"quota-soft", [b"set", b"memory", value]) => {
            let value = u32_arg(value)?;
            if value < 1 {
                return Err(XsError::Inval);
            }
            store.set_memory_soft_quota(conn, value)?;
            ok(out);
        }
        (b"quota", [domid]) => {
            let domid: DomId = domid_arg(domid)?;
            let usage = store.usage(domid).ok_or(XsError::NoEnt)?;
            let mut s = String::new();
            let _ = writeln!(s, "Domain {domid}:");
            for kind in QuotaKind::ALL {
                let now = match kind {
                    QuotaKind::Nodes => usage.nodes,
                    QuotaKind::Watches => usage.watches,
                    QuotaKind::Transactions => usage.transactions,
                    QuotaKind::Memory => usage.memory,
                    QuotaKind::Outstanding => usage.outstanding,
                    _ => 0,
                };
                let max = store.peak(Some(domid), kind).max(now);
                let _ = writeln!(s, "{:<17}: {now:>8} (max {max:>8})", kind.control_name());
            }
            text(out, &s);
        }
        _ => return Err(XsError::Inval),
    }
    Ok(MsgType::Control)
}

/// The text of `memreport`: what the store holds and what each domain uses.
pub fn memory_report(store: &Store) -> String {
    let mut s = String::new();
    let nodes = store.node_count().max(1);
    let heap = store.tree_heap_bytes();
    let _ = writeln!(s, "xs memory report");
    let _ = writeln!(
        s,
        "nodes: {} ({} bytes of heap, {} per node)",
        store.node_count(),
        heap,
        heap.checked_div(nodes).unwrap_or(0)
    );
    let _ = writeln!(s, "watches: {}", store.watch_count());
    let _ = writeln!(s, "transactions: {}", store.transaction_count());
    let _ = writeln!(s, "transaction history: {} bytes", store.history_bytes());
    let _ = writeln!(s, "domain     nodes  watches  transactions    memory");
    for domid in store.known_domains() {
        if let Some(u) = store.usage(domid) {
            let _ = writeln!(
                s,
                "{domid:<6} {:>9} {:>8} {:>13} {:>9}",
                u.nodes, u.watches, u.transactions, u.memory
            );
        }
    }
    s
}
