//! What the protocol engine asks of the daemon ([`xs_core::protocol::Host`]): domain sockets
//! on `INTRODUCE`/`RELEASE`, `CONTROL print|log|logfile|memreport`, and the trace file.
//!
//! Domain events are queued as [`Action`]s and carried out by the event loop right after the
//! request that caused them, before its reply is written: a client that got `OK` for
//! `INTRODUCE` finds the domain's socket there.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::SystemTime;

use xs_core::protocol::{Host, LiveUpdate};
use xs_core::store::{Introduced, Introduction};
use xs_core::wire::{Header, MsgType};
use xs_core::{ConnId, DomId, Store, XsError, XsResult};

use crate::live_update;
use crate::trace::{self, TraceFile};

/// A domain change the event loop must act on.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Action {
    /// Serve the domain's socket.
    Introduced(DomId),
    /// Remove the domain's socket and close its connections.
    Released(DomId),
}

/// What the trace needs to know of a connection.
#[derive(Clone, Copy, Debug)]
struct ConnInfo {
    number: u64,
    domid: DomId,
}

/// The daemon's side of the protocol.
#[derive(Debug)]
pub(crate) struct HostCtx {
    trace: Option<TraceFile>,
    /// The `io` log switch: trace requests, replies and events.
    io: bool,
    conns: HashMap<ConnId, ConnInfo>,
    /// Domain changes to carry out.
    pub(crate) actions: Vec<Action>,
    /// Live update: the session, held requests, transaction ages.
    pub(crate) lu: live_update::Control,
}

fn path_of(bytes: &[u8]) -> &Path {
    Path::new(OsStr::from_bytes(bytes))
}

impl HostCtx {
    pub(crate) fn new(trace: Option<TraceFile>) -> HostCtx {
        HostCtx {
            trace,
            io: true,
            conns: HashMap::new(),
            actions: Vec::new(),
            lu: live_update::Control::default(),
        }
    }

    /// A connection carried over by live update, numbered `number` in the trace as before.
    pub(crate) fn adopted(&mut self, conn: ConnId, number: u64, domid: DomId) {
        self.conns.insert(conn, ConnInfo { number, domid });
    }

    /// The `io` switch (for live update's record).
    pub(crate) fn io(&self) -> bool {
        self.io
    }

    /// Sets the `io` switch (after live update).
    pub(crate) fn set_io(&mut self, on: bool) {
        self.io = on;
    }

    /// The trace file's path, if one is open.
    pub(crate) fn trace_path(&self) -> Option<&Path> {
        self.trace.as_ref().map(TraceFile::path)
    }

    /// A new connection: `number` names it in the trace.
    pub(crate) fn opened(&mut self, conn: ConnId, number: u64, domid: DomId, socket: &str) {
        self.conns.insert(conn, ConnInfo { number, domid });
        if self.tracing() {
            let line =
                trace::conn_line(SystemTime::now(), number, domid, &format!("OPEN {socket}"));
            self.write_line(&line);
        }
    }

    /// A connection went away.
    pub(crate) fn closed(&mut self, conn: ConnId, reason: &str) {
        self.lu.closed(conn);
        if let Some(info) = self.conns.remove(&conn)
            && self.tracing()
        {
            let what = format!("CLOSE {reason}");
            let line = trace::conn_line(SystemTime::now(), info.number, info.domid, &what);
            self.write_line(&line);
        }
    }

    fn write_line(&mut self, line: &str) {
        self.with_trace(|t| t.line(line));
    }

    /// Runs `write` on the trace file, if there is one; an error stops tracing.
    fn with_trace(&mut self, write: impl FnOnce(&mut TraceFile) -> std::io::Result<()>) {
        if let Some(t) = self.trace.as_mut()
            && let Err(e) = write(t)
        {
            log::warn!("trace file {}: {e}; tracing stopped", t.path().display());
            self.trace = None;
        }
    }

    /// Pushes buffered trace lines to the file (once per loop iteration).
    pub(crate) fn flush(&mut self) {
        self.with_trace(TraceFile::flush);
    }

    /// Reopens the trace file (`SIGHUP`, after log rotation).
    pub(crate) fn reopen_trace(&mut self) {
        let Some(path) = self.trace.as_ref().map(|t| t.path().to_owned()) else {
            return;
        };
        self.flush();
        match TraceFile::open(&path) {
            Ok(t) => self.trace = Some(t),
            Err(e) => {
                log::warn!("trace file {}: {e}; tracing stopped", path.display());
                self.trace = None;
            }
        }
    }
}

impl Host for HostCtx {
    fn introduced(
        &mut self,
        _store: &mut Store,
        domid: DomId,
        intro: Introduction,
        kind: Introduced,
    ) {
        log::info!(
            "domain {domid} introduced (gfn {:#x}, event channel {}){}",
            intro.gfn,
            intro.evtchn,
            if kind == Introduced::Rebind {
                ", again"
            } else {
                ""
            }
        );
        self.actions.push(Action::Introduced(domid));
    }

    fn released(&mut self, _store: &mut Store, domid: DomId) {
        log::info!("domain {domid} released");
        self.actions.push(Action::Released(domid));
    }

    // The soft quota's warning and `CONTROL print`'s text are logged by the dispatcher
    // (xs-serve), whose log lines the event loop prints; here only the trace file is written.

    fn print(&mut self, text: &[u8]) {
        let text = String::from_utf8_lossy(text);
        if self.trace.is_some() {
            let line = format!("{} PRINT {text}", trace::Timestamp(SystemTime::now()));
            self.write_line(&line);
        }
    }

    fn log_switches(&self) -> Vec<(&'static str, bool)> {
        vec![("io", self.io)]
    }

    fn set_log(&mut self, arg: &[u8]) -> XsResult<()> {
        self.io = match arg {
            b"on" | b"+io" => true,
            b"off" | b"-io" => false,
            _ => return Err(XsError::Inval),
        };
        log::info!("io tracing {}", if self.io { "on" } else { "off" });
        Ok(())
    }

    fn set_logfile(&mut self, file: &[u8]) -> XsResult<()> {
        if file.is_empty() {
            return Err(XsError::Inval);
        }
        self.flush();
        let path = path_of(file);
        match TraceFile::open(path) {
            Ok(t) => {
                log::info!("trace file now {}", path.display());
                self.trace = Some(t);
                Ok(())
            }
            Err(e) => {
                log::warn!("trace file {}: {e}", path.display());
                Err(XsError::Io)
            }
        }
    }

    fn memreport(&mut self, report: &str, file: Option<&[u8]>) -> XsResult<()> {
        if let Some(file) = file {
            let path = path_of(file);
            let written = File::create(path).and_then(|mut f| f.write_all(report.as_bytes()));
            return written.map_err(|e| {
                log::warn!("memreport to {}: {e}", path.display());
                XsError::Io
            });
        }
        if let Some(t) = self.trace.as_mut() {
            if t.text(report).is_err() {
                return Err(XsError::Io);
            }
            return Ok(());
        }
        for line in report.lines() {
            log::info!("{line}");
        }
        Ok(())
    }

    fn trace(&mut self, conn: ConnId, incoming: bool, header: &Header, payload: &[u8]) {
        let (number, domid) = self
            .conns
            .get(&conn)
            .map_or((0, DomId::INVALID), |c| (c.number, c.domid));
        let line = trace::MessageLine {
            at: SystemTime::now(),
            conn: number,
            domid,
            incoming,
            header,
            payload,
        };
        self.with_trace(|t| t.message(&line));
    }

    fn tracing(&self) -> bool {
        self.io && self.trace.is_some()
    }

    fn hold_request(
        &mut self,
        store: &Store,
        conn: ConnId,
        header: &Header,
        payload: &[u8],
    ) -> bool {
        // Every request passes here: only the two types that may be held are looked at.
        matches!(
            header.kind(),
            Some(MsgType::TransactionStart | MsgType::Control)
        ) && self.lu.hold(store, conn, header, payload)
    }

    fn transaction_started(&mut self, conn: ConnId, first: bool) {
        self.lu.transaction_started(conn, first);
    }

    fn live_update(
        &mut self,
        _store: &mut Store,
        conn: ConnId,
        command: LiveUpdate<'_>,
    ) -> XsResult<Vec<u8>> {
        Ok(match command {
            LiveUpdate::Binary(file) => self.lu.binary(conn, file),
            LiveUpdate::Cmdline(text) => self.lu.cmdline(conn, text),
            LiveUpdate::Start { version, .. } => self.lu.start_answer(conn, version),
            LiveUpdate::Abort => self.lu.abort(),
            // C's daemon takes `-f` only (`lu_arch()` in lu_daemon.c); the upload is a
            // stub domain's.
            LiveUpdate::Upload(_) | LiveUpdate::Chunk(_) => return Err(XsError::Inval),
        })
    }

    fn save_state(&mut self, store: &mut Store, file: &[u8]) -> XsResult<()> {
        if file.is_empty() {
            return Err(XsError::Inval);
        }
        let path = path_of(file);
        match live_update::save_file(store, path) {
            Ok(stats) => {
                log::info!(
                    "state saved to {} ({} records, {} bytes)",
                    path.display(),
                    stats.records,
                    stats.bytes
                );
                Ok(())
            }
            Err(e) => {
                log::warn!("save-state to {}: {e}", path.display());
                Err(XsError::Io)
            }
        }
    }

    fn control_commands(&self) -> Vec<(&'static str, &'static str)> {
        vec![
            (
                "live-update",
                "[-c <cmdline>] [-F] [-t <timeout>] [-v <version>] <file>\n    Default timeout is 60 seconds, default version is 2.",
            ),
            ("save-state", "<file>"),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_switches() {
        let mut h = HostCtx::new(None);
        assert_eq!(h.log_switches(), vec![("io", true)]);
        assert!(!h.tracing(), "no trace file");
        h.set_log(b"-io").unwrap();
        assert_eq!(h.log_switches(), vec![("io", false)]);
        h.set_log(b"on").unwrap();
        assert_eq!(h.log_switches(), vec![("io", true)]);
        h.set_log(b"off").unwrap();
        h.set_log(b"+io").unwrap();
        assert_eq!(h.log_switches(), vec![("io", true)]);
        assert_eq!(h.set_log(b"+bogus"), Err(XsError::Inval));
    }

    #[test]
    fn logfile_and_memreport() {
        let dir = std::env::temp_dir().join(format!("xs-host-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let trace = dir.join("trace");
        let mut h = HostCtx::new(None);
        h.set_logfile(trace.as_os_str().as_bytes()).unwrap();
        assert!(h.tracing());
        h.memreport("report\n", None).unwrap();
        let file = dir.join("mem");
        h.memreport("to file\n", Some(file.as_os_str().as_bytes()))
            .unwrap();
        h.flush();
        assert_eq!(std::fs::read_to_string(&trace).unwrap(), "report\n");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "to file\n");
        assert_eq!(
            h.memreport("x", Some(b"/nonexistent-dir/x")),
            Err(XsError::Io)
        );
        assert_eq!(h.set_logfile(b""), Err(XsError::Inval));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
