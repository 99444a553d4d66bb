//! The command line: every option of Xen's C xenstored 4.17 to 4.22 (`tools/xenstored/core.c`,
//! `tools/xenstore/xenstored_core.c` before 4.18), with the same letters, long names and
//! argument syntax, so that Xen's scripts (`launch-xenstore`, `XENSTORED_ARGS`) start xs-host
//! unchanged; plus xs-host's own socket options.
//!
//! Every letter xs-host had before matches C's meaning (`-T` is the trace file, `-S` the node
//! size, ...); `-s` and `-h` are xs-host's own (C has neither). As with `getopt_long`, a long
//! option may be abbreviated to any unambiguous prefix, and a value may be attached (`-Ffile`,
//! `--pid-file=file`) or follow (`-F file`, `--pid-file file`).

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::path::{Path, PathBuf};

use xs_core::path::REL_PATH_MAX;
use xs_core::{DomId, QuotaKind};

/// What `--help` prints.
pub(crate) const USAGE: &str = "\
Usage: xs-host [OPTIONS]

Serves XenStore on Unix sockets for Xen's client tools (xenstore-read, libxenstore, ...).
Takes the options of Xen's C xenstored 4.17 to 4.22. Like it, xs-host forks into the
background unless -N is given; it does so once its sockets are ready, so that when the
command returns (status 0) clients can connect. It logs to syslog (facility daemon, ident
xenstored) in the background, to stderr with -N.

Sockets:
  -s, --socket PATH          main socket; its clients act as dom0 (privileged)
      --socket-ro PATH       read-only socket (default: <socket>_ro; \"none\" disables it);
                             requests that change the store get EROFS
      --domain-sockets DIR   per-domain sockets: when domain N is introduced (INTRODUCE), DIR/N
                             is created; a client connecting to it acts as domain N
                             (unprivileged); it is removed, and its connections closed, when N
                             is released (RELEASE)
      --domain-nodes         create /local/domain/<N> and the default nodes libxl makes in it
                             on INTRODUCE (off by default: as C xenstored, xs-host leaves
                             them to the toolstack); --no-domain-nodes turns it off again
      --domain-connections N connections one domain may have open through DIR/N (default 64;
                             0 means unlimited); further attempts wait in the socket's backlog,
                             costing the daemon nothing, until one of them closes

Process:
  -N, --no-fork              stay in the foreground and log to stderr
  -F, --pid-file FILE        write the daemon's pid there once it serves (removed on exit)
  -P, --output-pid           print the daemon's pid on stdout once it serves
  -T, --trace-file FILE      log every request, reply and watch event, one readable line each
      --trace-control=+io|-io  start with request tracing on (the default) or off
  -V, --verbose              more logging (repeatable)
      --restore FILE         start from a state file (CONTROL save-state FILE wrote it, or C
                             xenstored's live update): the tree, permissions, quotas, domains;
                             its connections are gone, with their watches and transactions
      --state-file FILE      keep the store across a restart: on SIGTERM or SIGINT the daemon
                             writes its state there before it exits (the tree, domains, quotas,
                             and on Xen the guests' and dom0's rings with what they had in
                             flight); started with it, it restores FILE if FILE exists and is
                             newer than the last boot (the rings bound again), then removes it
      --live-update-timeout SECS  how long a live update's new process may take to take over
                             before it is killed and the old binary takes the state back
                             (default 60; 0: no limit)
  -H, -h, --help             print this help

Live update (xenstore-control live-update [-c CMDLINE] [-t SECS] [-F] FILE) replaces the
running daemon by FILE, which must be an xs-host, without a client noticing: the store and
every connection are handed over through memory files, the sockets stay open (see
crates/xs-host/README.md). CONTROL save-state FILE writes the state for --restore.

Domains:
      --priv-domid N         another privileged domain besides dom0 (repeatable)
  -m, --master-domid N       the domain the store runs in (default 0; for the Xen transport)
      --event PORT           dom0's store event channel, if not read from the kernel (for the
                             Xen transport)
  -K, --keep-orphans         when a domain is gone, give the nodes it owned to the privileged
                             domain (the last --priv-domid, else dom0) instead of removing
                             them: as C warns, a security risk (a guest's nodes outlive it)

Quotas (0 means unlimited):
  -E, --entry-nb N           nodes per domain
  -S, --entry-size N         node size
  -W, --watch-nb N           watches per domain
  -t, --transaction N        transactions per domain
  -A, --perm-nb N            permissions per node
  -M, --path-max N           path length (at most 2048)
  -Q, --quota NAME=N         any quota by its name: nodes, watches, outstanding, memory,
                             transactions, transaction-nodes, node-permissions, path-max
                             (or path-length), node-size
  -q, --quota-soft memory=N  soft memory quota (the only soft quota, as in C): a domain
                             reaching it is logged once, until it is below it again
                             (GET_QUOTA/SET_QUOTA name it soft-memory, per domain too)

Accepted for compatibility, warned about and ignored: -D/--no-domain-init, -R/--no-recovery,
-I/--internal-db[=on|off], -U/--live-update, the trace switches obj, wrl, acc and tdb of
--trace-control, and -w/--timeout watch-event=SECONDS: C xenstored drops a watch event still
pending for a guest after that long (20 s by default); xs-host's events do not expire, as a
guest's queue is bounded instead (a watcher that falls behind gets one event per watch when
it reads again, see crates/xs-core/src/store/watch.rs).

Default socket: $XENSTORED_PATH if set, else $XENSTORED_RUNDIR/socket if set, else (as
root) /var/run/xenstored/socket, where Xen's clients look; for other users
$XDG_RUNTIME_DIR/xs-host/socket, else /tmp/xs-host-<uid>/socket.
";

/// Connections one domain may have open through its per-domain socket, by default: far more
/// than a guest's tools need (its kernel has one ring), few enough that a domain's
/// connections cost little (each holds a descriptor and at most a request's payload; their
/// replies and events are bounded per domain by its quotas).
pub(crate) const DEFAULT_DOMAIN_CONNECTIONS: u32 = 64;

/// Seconds a live update's new process may take to take over (`--live-update-timeout`).
pub(crate) const DEFAULT_LIVE_UPDATE_TIMEOUT: u32 = 60;

/// Where the read-only socket goes.
#[derive(Clone, PartialEq, Eq, Debug)]
pub(crate) enum RoSocket {
    /// `<socket>_ro`.
    Default,
    /// `--socket-ro none`.
    Disabled,
    /// `--socket-ro PATH`.
    At(PathBuf),
}

/// The parsed command line.
#[derive(Clone, PartialEq, Eq, Debug)]
pub(crate) struct Options {
    /// `--socket`; `None` picks the default (see [`default_socket`]).
    pub(crate) socket: Option<PathBuf>,
    pub(crate) socket_ro: RoSocket,
    pub(crate) domain_sockets: Option<PathBuf>,
    /// `--domain-connections`: connections per domain through its socket (0: unlimited).
    pub(crate) domain_connections: u32,
    /// `--live-update-timeout`: seconds a live update's new process may take to take over
    /// before the guardian kills it and brings the old binary back (0: no limit).
    pub(crate) live_update_timeout: u32,
    /// `--domain-nodes`: create a domain's default nodes on INTRODUCE.
    pub(crate) domain_nodes: bool,
    /// `-K`: a gone domain's nodes are kept (given to the privileged domain).
    pub(crate) keep_orphans: bool,
    pub(crate) privileged: Vec<DomId>,
    /// Fork into the background (no `-N`).
    pub(crate) fork: bool,
    pub(crate) pid_file: Option<PathBuf>,
    /// `-P`: print the daemon's pid on stdout.
    pub(crate) output_pid: bool,
    pub(crate) trace_file: Option<PathBuf>,
    /// `--trace-control=±io`: the `io` switch at start (`None`: the default, on).
    pub(crate) trace_io: Option<bool>,
    pub(crate) verbose: u8,
    /// Quotas set on the command line, in order (later ones win).
    pub(crate) quotas: Vec<(QuotaKind, u32)>,
    /// `-q memory=N`.
    pub(crate) memory_soft: Option<u32>,
    /// `--master-domid`: the domain the store runs in (C: `store_domid`, `dom0_domid` in
    /// 4.17); the Xen transport serves its ring as the local one.
    pub(crate) master_domid: Option<DomId>,
    /// `--event`: dom0's store event channel when the kernel does not tell it (C:
    /// `dom0_event`).
    pub(crate) event: Option<u32>,
    /// `--restore FILE`: start from this state stream.
    pub(crate) restore: Option<PathBuf>,
    /// `--state-file FILE`: written on a clean stop, restored (and removed) on start.
    pub(crate) state_file: Option<PathBuf>,
    /// C options accepted but not supported, as the warning names them (each once).
    pub(crate) ignored: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            socket: None,
            socket_ro: RoSocket::Default,
            domain_sockets: None,
            domain_connections: DEFAULT_DOMAIN_CONNECTIONS,
            live_update_timeout: DEFAULT_LIVE_UPDATE_TIMEOUT,
            domain_nodes: false,
            keep_orphans: false,
            privileged: Vec::new(),
            fork: true,
            pid_file: None,
            output_pid: false,
            trace_file: None,
            trace_io: None,
            verbose: 0,
            quotas: Vec::new(),
            memory_soft: None,
            master_domid: None,
            event: None,
            restore: None,
            state_file: None,
            ignored: Vec::new(),
        }
    }
}

impl Options {
    fn ignore(&mut self, what: String) {
        if !self.ignored.contains(&what) {
            self.ignored.push(what);
        }
    }

    /// Makes every path option absolute against `cwd`: the daemon moves to `/` when it forks
    /// (as C's `daemonize()` does) and reopens the trace file and removes the pid file later
    /// (C 4.18+ does the same for its trace file: `absolute_filename()`).
    pub(crate) fn make_paths_absolute(&mut self, cwd: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = cwd.join(&*p);
            }
        };
        for p in [
            self.socket.as_mut(),
            self.domain_sockets.as_mut(),
            self.pid_file.as_mut(),
            self.trace_file.as_mut(),
            self.restore.as_mut(),
            self.state_file.as_mut(),
        ]
        .into_iter()
        .flatten()
        {
            fix(p);
        }
        if let RoSocket::At(p) = &mut self.socket_ro {
            fix(p);
        }
    }
}

/// What the command line asks for.
#[derive(Clone, PartialEq, Eq, Debug)]
pub(crate) enum Command {
    /// Run the daemon.
    Run(Box<Options>),
    /// Print the usage and exit.
    Help,
}

/// A command line that cannot be run (exit status 2).
#[derive(Clone, PartialEq, Eq, Debug)]
pub(crate) struct UsageError(pub(crate) String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<lexopt::Error> for UsageError {
    fn from(e: lexopt::Error) -> Self {
        UsageError(e.to_string())
    }
}

/// Every long option: C xenstored's of 4.17 to 4.22 (`options[]` in core.c) and xs-host's
/// own. An abbreviation is resolved against this list.
pub(crate) const LONG_OPTIONS: &[&str] = &[
    // xs-host's own.
    "socket",
    "socket-ro",
    "domain-sockets",
    "domain-nodes",
    "domain-connections",
    "no-domain-nodes",
    "restore",
    "state-file",
    "live-update-timeout",
    // C xenstored's.
    "no-domain-init",
    "entry-nb",
    "pid-file",
    "event",
    "master-domid",
    "help",
    "no-fork",
    "priv-domid",
    "output-pid",
    "entry-size",
    "trace-file",
    "trace-control",
    "transaction",
    "perm-nb",
    "path-max",
    "quota",
    "quota-soft",
    "timeout",
    "no-recovery",
    "internal-db",
    "keep-orphans",
    "verbose",
    "watch-nb",
    "live-update",
];

/// The long option a short one stands for. C's letters are its `getopt_long` string
/// (`"DE:F:HI::KNPS:t:A:M:Q:q:T:RVW:w:U"` in 4.17, `"E:F:H::KNS:t:A:M:Q:q:T:W:w:U"` in 4.22);
/// `-m` is documented by 4.22's usage although its string lacks it; `-s` and `-h` are
/// xs-host's.
fn long_for_short(c: char) -> Option<&'static str> {
    Some(match c {
        's' => "socket",
        'h' | 'H' => "help",
        'D' => "no-domain-init",
        'E' => "entry-nb",
        'F' => "pid-file",
        'I' => "internal-db",
        'K' => "keep-orphans",
        'N' => "no-fork",
        'P' => "output-pid",
        'S' => "entry-size",
        't' => "transaction",
        'A' => "perm-nb",
        'M' => "path-max",
        'Q' => "quota",
        'q' => "quota-soft",
        'T' => "trace-file",
        'R' => "no-recovery",
        'V' => "verbose",
        'W' => "watch-nb",
        'w' => "timeout",
        'U' => "live-update",
        'm' => "master-domid",
        _ => return None,
    })
}

/// How messages name an option: `-K/--keep-orphans`, or `--event` if it has no letter.
fn display_name(long: &str) -> String {
    const LETTERS: &str = "sDEFIKNPStAMQqTRVWwUm";
    match LETTERS.chars().find(|&c| long_for_short(c) == Some(long)) {
        Some(c) => format!("-{c}/--{long}"),
        None => format!("--{long}"),
    }
}

/// Resolves a long option as `getopt_long` does: an exact name, else the one option the text
/// is a prefix of.
fn resolve_long(name: &str) -> Result<&'static str, UsageError> {
    if let Some(exact) = LONG_OPTIONS.iter().find(|&&o| o == name) {
        return Ok(exact);
    }
    let mut matches = LONG_OPTIONS.iter().filter(|o| o.starts_with(name));
    match (matches.next(), matches.next()) {
        (Some(only), None) if !name.is_empty() => Ok(only),
        (Some(a), Some(b)) => Err(UsageError(format!(
            "option '--{name}' is ambiguous (--{a}, --{b}, ...)"
        ))),
        _ => Err(UsageError(format!("invalid option '--{name}'"))),
    }
}

/// The quota named `name` on the command line (`-Q NAME=N`): the protocol's names, plus
/// `path-length`, which C xenstored's usage uses for `path-max`.
pub(crate) fn quota_by_name(name: &str) -> Option<QuotaKind> {
    QuotaKind::from_name(name.as_bytes())
}

fn number(option: &str, value: &OsStr) -> Result<u32, UsageError> {
    let text = value.to_string_lossy();
    text.parse::<u32>()
        .map_err(|_| UsageError(format!("{option}: not a number: {text:?}")))
}

/// `NAME=N`, as C's `set_quota()` and `set_timeout()` take it.
fn setting(option: &str, value: &OsStr) -> Result<(String, u32), UsageError> {
    let text = value.to_string_lossy().into_owned();
    let (name, n) = text
        .split_once('=')
        .ok_or_else(|| UsageError(format!("{option}: expected NAME=N, got {text:?}")))?;
    let n = number(&format!("{option} {name}"), OsStr::new(n))?;
    Ok((name.to_owned(), n))
}

fn quota_setting(value: &OsStr) -> Result<(QuotaKind, u32), UsageError> {
    let (name, n) = setting("--quota", value)?;
    let kind = quota_by_name(&name)
        .ok_or_else(|| UsageError(format!("--quota: unknown quota {name:?}")))?;
    Ok((kind, n))
}

fn domid(option: &str, value: &OsStr, allow_dom0: bool) -> Result<DomId, UsageError> {
    let text = value.to_string_lossy();
    match DomId::parse(text.as_bytes()) {
        Some(d) if d.is_real() && (allow_dom0 || d != DomId::DOM0) => Ok(d),
        _ => Err(UsageError(format!(
            "{option}: not a domain id ({}..32751): {text:?}",
            if allow_dom0 { 0 } else { 1 }
        ))),
    }
}

/// The trace switches of C xenstored 4.18+ (`trace_switches[]` in core.c); xs-host has `io`.
const TRACE_SWITCHES: &[&str] = &["obj", "io", "wrl", "acc", "tdb"];

/// Parses the arguments after the program name.
pub(crate) fn parse<I>(args: I) -> Result<Command, UsageError>
where
    I: IntoIterator,
    I::Item: Into<OsString>,
{
    use lexopt::prelude::*;

    let mut o = Options::default();
    let mut p = lexopt::Parser::from_args(args);
    // getopt takes `-F=x` as the value "=x"; so do we.
    p.set_short_equals(false);
    while let Some(arg) = p.next()? {
        let name = match arg {
            Short(c) => {
                long_for_short(c).ok_or_else(|| UsageError(format!("invalid option '-{c}'")))?
            }
            Long(l) => resolve_long(l)?,
            Value(v) => {
                return Err(UsageError(format!(
                    "unexpected argument {:?}: no arguments are taken",
                    v.to_string_lossy()
                )));
            }
        };
        let shown = display_name(name);
        match name {
            "socket" => o.socket = Some(p.value()?.into()),
            "socket-ro" => {
                let v = p.value()?;
                o.socket_ro = if v == "none" {
                    RoSocket::Disabled
                } else {
                    RoSocket::At(v.into())
                };
            }
            "domain-sockets" => o.domain_sockets = Some(p.value()?.into()),
            "domain-nodes" => o.domain_nodes = true,
            "domain-connections" => o.domain_connections = number(&shown, &p.value()?)?,
            "no-domain-nodes" => o.domain_nodes = false,
            "restore" => o.restore = Some(p.value()?.into()),
            "state-file" => o.state_file = Some(p.value()?.into()),
            "live-update-timeout" => {
                o.live_update_timeout = number(&shown, &p.value()?)?;
            }
            "priv-domid" => {
                let d = domid("--priv-domid", &p.value()?, false)?;
                if !o.privileged.contains(&d) {
                    o.privileged.push(d);
                }
            }
            "master-domid" => o.master_domid = Some(domid(&shown, &p.value()?, true)?),
            "event" => o.event = Some(number("--event", &p.value()?)?),
            "timeout" => {
                let (what, seconds) = setting(&shown, &p.value()?)?;
                if what != "watch-event" {
                    return Err(UsageError(format!("{shown}: unknown timeout {what:?}")));
                }
                // C drops a guest's pending watch events after `seconds`; 0 turns that off,
                // which is what xs-host does anyway (see USAGE for why its events do not
                // expire).
                if seconds != 0 {
                    o.ignore(format!("{shown} watch-event={seconds}"));
                }
            }
            "no-fork" => o.fork = false,
            "pid-file" => o.pid_file = Some(p.value()?.into()),
            "output-pid" => o.output_pid = true,
            "trace-file" => o.trace_file = Some(p.value()?.into()),
            "trace-control" => {
                let text = p.value()?.to_string_lossy().into_owned();
                let (on, switch) = match (text.strip_prefix('+'), text.strip_prefix('-')) {
                    (Some(s), _) => (true, s),
                    (_, Some(s)) => (false, s),
                    // Neither: no switch, refused below as C does ("Illegal trace switch").
                    _ => (true, ""),
                };
                match switch {
                    "io" => o.trace_io = Some(on),
                    s if TRACE_SWITCHES.contains(&s) => {
                        o.ignore(format!("--trace-control={text}"));
                    }
                    _ => {
                        return Err(UsageError(format!(
                            "--trace-control: illegal trace switch {text:?} (+io or -io)"
                        )));
                    }
                }
            }
            "verbose" => o.verbose = o.verbose.saturating_add(1),
            "entry-nb" => o
                .quotas
                .push((QuotaKind::Nodes, number(&shown, &p.value()?)?)),
            "entry-size" => o
                .quotas
                .push((QuotaKind::NodeSize, number(&shown, &p.value()?)?)),
            "watch-nb" => o
                .quotas
                .push((QuotaKind::Watches, number(&shown, &p.value()?)?)),
            "transaction" => o
                .quotas
                .push((QuotaKind::Transactions, number(&shown, &p.value()?)?)),
            "perm-nb" => o
                .quotas
                .push((QuotaKind::NodePermissions, number(&shown, &p.value()?)?)),
            "path-max" => {
                // C clamps -M to XENSTORE_REL_PATH_MAX (`min()` in main()).
                let n = number(&shown, &p.value()?)?;
                let max = u32::try_from(REL_PATH_MAX).unwrap_or(u32::MAX);
                o.quotas.push((QuotaKind::PathMax, n.min(max)));
            }
            "quota" => o.quotas.push(quota_setting(&p.value()?)?),
            "quota-soft" => {
                // Every C version has a soft quota for memory only (`set_quota()`).
                let (what, n) = setting(&shown, &p.value()?)?;
                if what != "memory" {
                    return Err(UsageError(format!(
                        "{shown}: unknown soft quota {what:?} (only memory has one)"
                    )));
                }
                o.memory_soft = Some(n);
            }
            "help" => {
                // 4.18+ declares `-H` with an optional argument (`H::`), which it ignores.
                let _ = p.optional_value();
                return Ok(Command::Help);
            }
            "internal-db" => {
                // `-Ioff`, `--internal-db=off`, or `--internal-db off` as C's usage shows it:
                // the value goes with the option.
                if p.optional_value().is_none()
                    && let Some(mut raw) = p.try_raw_args()
                {
                    let _ = raw.next_if(|a| a == "on" || a == "off");
                }
                o.ignore(shown);
            }
            "keep-orphans" => o.keep_orphans = true,
            // Flags of C that have no meaning here: xs-host has no dom0 ring to set up without
            // the Xen transport (-D), no database file to recover (-R, -I), and no live-update
            // state to read (-U).
            "no-domain-init" | "no-recovery" | "live-update" => {
                o.ignore(shown);
            }
            _ => return Err(UsageError(format!("invalid option '--{name}'"))),
        }
    }
    Ok(Command::Run(Box::new(o)))
}

/// The read-only socket's path for the main socket `socket`, if there is one.
pub(crate) fn ro_path(socket: &Path, ro: &RoSocket) -> Option<PathBuf> {
    match ro {
        RoSocket::Disabled => None,
        RoSocket::At(p) => Some(p.clone()),
        RoSocket::Default => {
            let mut s = socket.as_os_str().to_owned();
            s.push("_ro");
            Some(PathBuf::from(s))
        }
    }
}

/// Xen's run directory for the store (`XEN_RUN_STORED`, from `hotplugpath.sh`).
pub(crate) const XEN_RUN_STORED: &str = "/var/run/xenstored";

/// Where the main socket goes without `--socket`.
#[derive(Clone, PartialEq, Eq, Debug)]
pub(crate) struct DefaultSocket {
    pub(crate) path: PathBuf,
    /// The directory is the user's own (mode 0700, checked), not a shared run directory.
    pub(crate) private_dir: bool,
}

/// The default main socket, where libxenstore looks for it (`xs_daemon_socket()` in
/// `tools/libs/store/xs.c`, and C xenstored listens there too): `$XENSTORED_PATH`, else
/// `$XENSTORED_RUNDIR/socket`, else, for root, `/var/run/xenstored/socket`. Other users, who
/// cannot write there, get `$XDG_RUNTIME_DIR/xs-host/socket`, else
/// `/tmp/xs-host-<uid>/socket`. `env` reads an environment variable.
pub(crate) fn default_socket(uid: u32, env: impl Fn(&str) -> Option<OsString>) -> DefaultSocket {
    let set = |name: &str| env(name).filter(|v| !v.is_empty());
    let shared = |path: PathBuf| DefaultSocket {
        path,
        private_dir: false,
    };
    if let Some(path) = set("XENSTORED_PATH") {
        return shared(PathBuf::from(path));
    }
    if let Some(dir) = set("XENSTORED_RUNDIR") {
        return shared(Path::new(&dir).join("socket"));
    }
    if uid == 0 {
        return shared(Path::new(XEN_RUN_STORED).join("socket"));
    }
    let path = match set("XDG_RUNTIME_DIR") {
        Some(dir) if Path::new(&dir).is_absolute() => {
            Path::new(&dir).join("xs-host").join("socket")
        }
        _ => PathBuf::from(format!("/tmp/xs-host-{uid}/socket")),
    };
    DefaultSocket {
        path,
        private_dir: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Options {
        match parse(args.iter().copied()) {
            Ok(Command::Run(o)) => *o,
            other => panic!("{args:?}: {other:?}"),
        }
    }

    /// Every option of C xenstored 4.17 to 4.22 (`options[]` and the `getopt_long` strings
    /// of core.c): its letter, long name, and a value if it takes one.
    const C_OPTIONS: &[(Option<char>, &str, Option<&str>)] = &[
        (Some('D'), "no-domain-init", None), // 4.17, 4.18
        (Some('E'), "entry-nb", Some("10")),
        (Some('F'), "pid-file", Some("/tmp/pid")),
        (None, "event", Some("7")),
        (Some('m'), "master-domid", Some("1")), // the letter: 4.22's usage only
        (Some('H'), "help", None),
        (Some('N'), "no-fork", None),
        (None, "priv-domid", Some("3")),
        (Some('P'), "output-pid", None), // 4.17, 4.18
        (Some('S'), "entry-size", Some("20")),
        (Some('T'), "trace-file", Some("/tmp/trace")),
        (None, "trace-control", Some("-io")), // 4.18+
        (Some('t'), "transaction", Some("4")),
        (Some('A'), "perm-nb", Some("5")),
        (Some('M'), "path-max", Some("100")),
        (Some('Q'), "quota", Some("memory=100")),
        (Some('q'), "quota-soft", Some("memory=50")),
        (Some('w'), "timeout", Some("watch-event=20")),
        (Some('R'), "no-recovery", None), // 4.17, 4.18
        (Some('I'), "internal-db", None), // 4.17; its value is optional
        (Some('K'), "keep-orphans", None),
        (Some('V'), "verbose", None), // 4.17, 4.18
        (Some('W'), "watch-nb", Some("6")),
        (Some('U'), "live-update", None),
    ];

    /// The long names of 4.17's and 4.22's `options[]`, as core.c lists them.
    const C_417: &[&str] = &[
        "no-domain-init",
        "entry-nb",
        "pid-file",
        "event",
        "master-domid",
        "help",
        "no-fork",
        "priv-domid",
        "output-pid",
        "entry-size",
        "trace-file",
        "transaction",
        "perm-nb",
        "path-max",
        "quota",
        "quota-soft",
        "timeout",
        "no-recovery",
        "internal-db",
        "keep-orphans",
        "verbose",
        "watch-nb",
        "live-update",
    ];
    const C_422: &[&str] = &[
        "entry-nb",
        "pid-file",
        "event",
        "master-domid",
        "help",
        "no-fork",
        "priv-domid",
        "entry-size",
        "trace-file",
        "trace-control",
        "transaction",
        "perm-nb",
        "path-max",
        "quota",
        "quota-soft",
        "timeout",
        "keep-orphans",
        "watch-nb",
        "live-update",
    ];

    #[test]
    fn the_table_covers_every_c_version() {
        for name in C_417.iter().chain(C_422) {
            assert!(
                C_OPTIONS.iter().any(|&(_, l, _)| l == *name),
                "{name} missing from the test table"
            );
            assert!(LONG_OPTIONS.contains(name), "{name} not accepted");
        }
        // 4.17's and 4.22's getopt strings: every letter is known, with or without a value
        // as C takes it.
        for letters in [
            "DE:F:HI::KNPS:t:A:M:Q:q:T:RVW:w:U",
            "E:F:H::KNS:t:A:M:Q:q:T:W:w:U",
        ] {
            let mut chars = letters.chars().peekable();
            while let Some(c) = chars.next() {
                let mut colons = 0;
                while chars.next_if_eq(&':').is_some() {
                    colons += 1;
                }
                let entry = C_OPTIONS
                    .iter()
                    .find(|&&(l, _, _)| l == Some(c))
                    .unwrap_or_else(|| panic!("-{c} missing from the test table"));
                assert_eq!(entry.2.is_some(), colons == 1, "-{c}");
                assert_eq!(long_for_short(c), Some(entry.1), "-{c}");
            }
        }
    }

    /// Each C option in each of getopt's forms parses, to the same result.
    #[test]
    fn every_c_option_in_every_form() {
        for &(letter, long, value) in C_OPTIONS {
            let mut forms: Vec<Vec<String>> = Vec::new();
            match value {
                Some(v) => {
                    forms.push(vec![format!("--{long}"), v.to_owned()]);
                    forms.push(vec![format!("--{long}={v}")]);
                    if let Some(c) = letter {
                        forms.push(vec![format!("-{c}"), v.to_owned()]);
                        forms.push(vec![format!("-{c}{v}")]);
                    }
                }
                None => {
                    forms.push(vec![format!("--{long}")]);
                    if let Some(c) = letter {
                        forms.push(vec![format!("-{c}")]);
                    }
                }
            }
            let results: Vec<_> = forms.iter().map(|f| parse(f.iter())).collect();
            for (form, result) in forms.iter().zip(&results) {
                match result {
                    Ok(Command::Help) => assert_eq!(long, "help"),
                    Ok(Command::Run(_)) => assert_ne!(long, "help"),
                    Err(e) => panic!("{form:?}: {e}"),
                }
                assert_eq!(result, &results[0], "{form:?} differs from {:?}", forms[0]);
            }
        }
    }

    #[test]
    fn defaults() {
        let o = run(&[]);
        assert_eq!(o, Options::default());
        assert!(!o.domain_nodes, "the toolstack's, as with C xenstored");
        assert!(!o.keep_orphans);
        assert!(o.fork);
        assert_eq!(o.socket_ro, RoSocket::Default);
        assert_eq!(o.domain_connections, DEFAULT_DOMAIN_CONNECTIONS);
    }

    #[test]
    fn every_option_applied() {
        let o = run(&[
            "-s",
            "/tmp/a",
            "--socket-ro",
            "/tmp/b",
            "--domain-sockets",
            "/tmp/d",
            "--domain-nodes",
            "-K",
            "--domain-connections=5",
            "--priv-domid",
            "7",
            "--priv-domid=9",
            "-N",
            "-F",
            "/tmp/pid",
            "-P",
            "-T",
            "/tmp/trace",
            "--trace-control",
            "-io",
            "-VV",
            "--verbose",
            "-E",
            "10",
            "-S",
            "20",
            "-W",
            "30",
            "-t",
            "40",
            "-A",
            "50",
            "-M",
            "60",
            "-Q",
            "memory=70",
            "--quota",
            "path-length=80",
            "--entry-nb=90",
            "-q",
            "memory=1000",
            "-m",
            "0",
            "--event",
            "12",
        ]);
        assert_eq!(o.socket, Some(PathBuf::from("/tmp/a")));
        assert_eq!(o.socket_ro, RoSocket::At(PathBuf::from("/tmp/b")));
        assert_eq!(o.domain_sockets, Some(PathBuf::from("/tmp/d")));
        assert!(o.domain_nodes);
        assert!(o.keep_orphans);
        assert_eq!(o.domain_connections, 5);
        assert_eq!(o.privileged, vec![DomId(7), DomId(9)]);
        assert!(!o.fork);
        assert_eq!(o.pid_file, Some(PathBuf::from("/tmp/pid")));
        assert!(o.output_pid);
        assert_eq!(o.trace_file, Some(PathBuf::from("/tmp/trace")));
        assert_eq!(o.trace_io, Some(false));
        assert_eq!(o.verbose, 3);
        assert_eq!(
            o.quotas,
            vec![
                (QuotaKind::Nodes, 10),
                (QuotaKind::NodeSize, 20),
                (QuotaKind::Watches, 30),
                (QuotaKind::Transactions, 40),
                (QuotaKind::NodePermissions, 50),
                (QuotaKind::PathMax, 60),
                (QuotaKind::Memory, 70),
                (QuotaKind::PathMax, 80),
                (QuotaKind::Nodes, 90),
            ]
        );
        assert_eq!(o.memory_soft, Some(1000));
        assert_eq!(o.master_domid, Some(DomId(0)));
        assert_eq!(o.event, Some(12));
        assert!(o.ignored.is_empty(), "{:?}", o.ignored);
        assert!(!run(&["--domain-nodes", "--no-domain-nodes"]).domain_nodes);
    }

    #[test]
    fn path_max_is_clamped_as_c_does() {
        assert_eq!(
            run(&["-M", "99999"]).quotas,
            vec![(QuotaKind::PathMax, 2048)]
        );
    }

    #[test]
    fn unsupported_options_are_noted_once_each() {
        let o = run(&[
            "-w",
            "watch-event=30",
            "--timeout=watch-event=30",
            "-w",
            "watch-event=0",
            "-D",
            "-R",
            "--no-recovery",
            "-Ioff",
            "--internal-db=on",
            "--internal-db",
            "off",
            "-I",
            "-U",
            "--live-update",
            "--trace-control=+wrl",
            "--trace-control",
            "+wrl",
            "--trace-control=-obj",
            "--trace-control=+io",
        ]);
        assert_eq!(
            o.ignored,
            [
                "-w/--timeout watch-event=30",
                "-D/--no-domain-init",
                "-R/--no-recovery",
                "-I/--internal-db",
                "-U/--live-update",
                "--trace-control=+wrl",
                "--trace-control=-obj",
            ]
        );
        assert_eq!(o.trace_io, Some(true));
        // Everything else stays as by default.
        assert_eq!(
            Options {
                ignored: Vec::new(),
                trace_io: None,
                ..o
            },
            Options::default()
        );
    }

    #[test]
    fn attached_values() {
        let o = run(&[
            "-s/tmp/x",
            "--socket=/tmp/y",
            "-Qoutstanding=5",
            "-E5",
            "-F=x",
            "-NVP",
        ]);
        assert_eq!(o.socket, Some(PathBuf::from("/tmp/y")));
        assert_eq!(
            o.quotas,
            vec![(QuotaKind::Outstanding, 5), (QuotaKind::Nodes, 5)]
        );
        // As getopt: everything after the letter is the value.
        assert_eq!(o.pid_file, Some(PathBuf::from("=x")));
        assert!(!o.fork && o.output_pid && o.verbose == 1);
        // A value may look like an option.
        assert_eq!(run(&["-F", "-N"]).pid_file, Some(PathBuf::from("-N")));
    }

    #[test]
    fn long_options_may_be_abbreviated() {
        let o = run(&[
            "--pid=/p",
            "--no-f",
            "--outp",
            "--quota",
            "nodes=1",
            "--quota-s=memory=2",
        ]);
        assert_eq!(o.pid_file, Some(PathBuf::from("/p")));
        assert!(!o.fork && o.output_pid);
        assert_eq!(o.quotas, vec![(QuotaKind::Nodes, 1)]);
        assert_eq!(o.memory_soft, Some(2));
        for ambiguous in ["--no-domain", "--trace", "--en", "--no", "--"] {
            let args = [ambiguous, "x"];
            if ambiguous == "--" {
                // `--` ends the options: what follows is an argument, refused.
                assert!(parse(args).is_err());
                continue;
            }
            let e = parse(args).expect_err(ambiguous);
            assert!(e.0.contains("ambiguous"), "{ambiguous}: {e}");
        }
    }

    #[test]
    fn ro_socket() {
        let o = run(&["--socket-ro", "none"]);
        assert_eq!(o.socket_ro, RoSocket::Disabled);
        assert_eq!(ro_path(Path::new("/s"), &o.socket_ro), None);
        assert_eq!(
            ro_path(Path::new("/run/x/socket"), &RoSocket::Default),
            Some(PathBuf::from("/run/x/socket_ro"))
        );
        assert_eq!(
            ro_path(Path::new("/s"), &RoSocket::At("/r".into())),
            Some(PathBuf::from("/r"))
        );
    }

    #[test]
    fn every_quota_name() {
        for kind in QuotaKind::ALL {
            assert_eq!(quota_by_name(kind.name()), Some(kind));
        }
        assert_eq!(quota_by_name("path-length"), Some(QuotaKind::PathMax));
        assert_eq!(
            quota_by_name("node-permissions"),
            Some(QuotaKind::NodePermissions)
        );
        assert_eq!(quota_by_name("bogus"), None);
    }

    #[test]
    fn help() {
        for h in [
            &["-h"][..],
            &["-H"],
            &["--help"],
            &["-Hx"],
            &["--he"],
            &["-N", "-H"],
        ] {
            assert_eq!(parse(h.iter().copied()), Ok(Command::Help), "{h:?}");
        }
    }

    #[test]
    fn usage_errors() {
        for args in [
            &["--bogus"][..],
            &["-x"],
            &["-X"],
            &["-r"],
            &["-e", "5"],
            &["-p", "3"],
            &["--memory-debug"],
            &["--preserve-local"],
            &["stray"],
            &["-s"],
            &["-F"],
            &["-E", "many"],
            &["-E", "-1"],
            &["-Q", "nodes"],
            &["-Q", "bogus=1"],
            &["-Q", "nodes=x"],
            &["-q", "nodes=5"],
            &["-q", "memory"],
            &["-w", "bogus=1"],
            &["-w", "watch-event"],
            &["-w", "watch-event=x"],
            &["--trace-control=io"],
            &["--trace-control=+bogus"],
            &["--trace-control="],
            &["--event", "x"],
            &["-m", "32752"],
            &["--master-domid", "x"],
            &["--priv-domid", "0"],
            &["--priv-domid", "32752"],
            &["--priv-domid", "x"],
            &["--no-fork=1"],
            &["-N=1"],
            &["-I", "maybe"],
        ] {
            assert!(parse(args.iter().copied()).is_err(), "{args:?}");
        }
    }

    #[test]
    fn paths_made_absolute() {
        let mut o = run(&[
            "-s",
            "s",
            "--socket-ro",
            "r",
            "--domain-sockets",
            "/abs",
            "-F",
            "p",
            "-T",
            "../t",
        ]);
        o.make_paths_absolute(Path::new("/cwd"));
        assert_eq!(o.socket, Some(PathBuf::from("/cwd/s")));
        assert_eq!(o.socket_ro, RoSocket::At(PathBuf::from("/cwd/r")));
        assert_eq!(o.domain_sockets, Some(PathBuf::from("/abs")));
        assert_eq!(o.pid_file, Some(PathBuf::from("/cwd/p")));
        assert_eq!(o.trace_file, Some(PathBuf::from("/cwd/../t")));
    }

    #[test]
    fn default_sockets() {
        fn with(uid: u32, vars: &[(&str, &str)]) -> DefaultSocket {
            default_socket(uid, |name| {
                vars.iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| OsString::from(v))
            })
        }
        let shared = |p: &str| DefaultSocket {
            path: PathBuf::from(p),
            private_dir: false,
        };
        let private = |p: &str| DefaultSocket {
            path: PathBuf::from(p),
            private_dir: true,
        };
        assert_eq!(
            with(0, &[("XDG_RUNTIME_DIR", "/run/user/0")]),
            shared("/var/run/xenstored/socket")
        );
        assert_eq!(
            with(0, &[("XENSTORED_RUNDIR", "/tmp/rd")]),
            shared("/tmp/rd/socket")
        );
        assert_eq!(
            with(
                0,
                &[
                    ("XENSTORED_RUNDIR", "/tmp/rd"),
                    ("XENSTORED_PATH", "/tmp/p")
                ]
            ),
            shared("/tmp/p")
        );
        assert_eq!(
            with(0, &[("XENSTORED_RUNDIR", ""), ("XENSTORED_PATH", "")]),
            shared("/var/run/xenstored/socket")
        );
        // Other users: the variables if set, else a directory of their own.
        assert_eq!(
            with(1000, &[("XENSTORED_PATH", "/tmp/p")]),
            shared("/tmp/p")
        );
        assert_eq!(
            with(1000, &[("XDG_RUNTIME_DIR", "/run/user/1000")]),
            private("/run/user/1000/xs-host/socket")
        );
        assert_eq!(with(1000, &[]), private("/tmp/xs-host-1000/socket"));
        assert_eq!(
            with(1000, &[("XDG_RUNTIME_DIR", "")]),
            private("/tmp/xs-host-1000/socket")
        );
        assert_eq!(
            with(1000, &[("XDG_RUNTIME_DIR", "relative")]),
            private("/tmp/xs-host-1000/socket")
        );
    }
}
