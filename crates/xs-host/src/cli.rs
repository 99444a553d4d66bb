//! The command line, with the option letters of Xen's C xenstored where it has them
//! (`tools/xenstored/core.c`), so that scripts written for it keep working.

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};

use xs_core::{DomId, QuotaKind};

/// What `--help` prints.
pub(crate) const USAGE: &str = "\
Usage: xs-host [OPTIONS]

Serves XenStore on Unix sockets for Xen's client tools (xenstore-read, libxenstore, ...):
point them at it with XENSTORED_PATH=<socket>.

  -s, --socket PATH          main socket; clients connect with XENSTORED_PATH=PATH; they act as
                             dom0 (privileged)
      --socket-ro PATH       read-only socket (default: <socket>_ro; \"none\" disables it);
                             requests that change the store get EROFS
      --domain-sockets DIR   per-domain sockets: when domain N is introduced (INTRODUCE), DIR/N
                             is created; a client connecting to it acts as domain N
                             (unprivileged); it is removed, and its connections closed, when N
                             is released (RELEASE)
      --no-domain-nodes      do not create /local/domain/<N> and its default nodes on INTRODUCE
      --priv-domid N         another privileged domain besides dom0 (repeatable)
  -N, --no-fork              accepted for compatibility with Xen's xenstored (xs-host never
                             forks)
  -F, --pid-file FILE        write the pid there (removed on exit)
  -T, --trace-file FILE      log every request, reply and watch event, one readable line each
  -V, --verbose              more logging (repeatable)
  -E, --entry-nb N           quota: nodes per domain
  -S, --entry-size N         quota: node size
  -W, --watch-nb N           quota: watches per domain
  -t, --transaction N        quota: transactions per domain
  -A, --perm-nb N            quota: permissions per node
  -M, --path-max N           quota: path length
  -Q, --quota NAME=N         any quota by its name: nodes, watches, outstanding, memory,
                             transactions, transaction-nodes, node-permissions, path-max
                             (or path-length), node-size
  -H, -h, --help             print this help

Default socket: /run/xs-host/socket as root, else $XDG_RUNTIME_DIR/xs-host/socket, else
/tmp/xs-host-<uid>/socket. A quota of 0 means unlimited.
";

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
    /// `--socket`; `None` picks the default for the user.
    pub(crate) socket: Option<PathBuf>,
    pub(crate) socket_ro: RoSocket,
    pub(crate) domain_sockets: Option<PathBuf>,
    pub(crate) domain_nodes: bool,
    pub(crate) privileged: Vec<DomId>,
    pub(crate) pid_file: Option<PathBuf>,
    pub(crate) trace_file: Option<PathBuf>,
    pub(crate) verbose: u8,
    /// Quotas set on the command line, in order (later ones win).
    pub(crate) quotas: Vec<(QuotaKind, u32)>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            socket: None,
            socket_ro: RoSocket::Default,
            domain_sockets: None,
            domain_nodes: true,
            privileged: Vec::new(),
            pid_file: None,
            trace_file: None,
            verbose: 0,
            quotas: Vec::new(),
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

/// The quota named `name` on the command line (`-Q NAME=N`): the protocol's names, plus
/// `path-length`, which C xenstored uses for `path-max`.
pub(crate) fn quota_by_name(name: &str) -> Option<QuotaKind> {
    match name {
        "path-length" => Some(QuotaKind::PathMax),
        _ => QuotaKind::from_name(name.as_bytes()),
    }
}

fn number(option: &str, value: OsString) -> Result<u32, UsageError> {
    let text = value.to_string_lossy();
    text.parse::<u32>()
        .map_err(|_| UsageError(format!("{option}: not a number: {text:?}")))
}

fn quota_setting(value: OsString) -> Result<(QuotaKind, u32), UsageError> {
    let text = value.to_string_lossy().into_owned();
    let (name, n) = text
        .split_once('=')
        .ok_or_else(|| UsageError(format!("--quota: expected NAME=N, got {text:?}")))?;
    let kind = quota_by_name(name)
        .ok_or_else(|| UsageError(format!("--quota: unknown quota {name:?}")))?;
    let n = n
        .parse::<u32>()
        .map_err(|_| UsageError(format!("--quota {name}: not a number: {n:?}")))?;
    Ok((kind, n))
}

fn domid(value: OsString) -> Result<DomId, UsageError> {
    let text = value.to_string_lossy();
    match DomId::parse(text.as_bytes()) {
        Some(d) if d.is_real() && d != DomId::DOM0 => Ok(d),
        _ => Err(UsageError(format!(
            "--priv-domid: not a domain id (1..32751): {text:?}"
        ))),
    }
}

/// Parses the arguments after the program name.
pub(crate) fn parse<I>(args: I) -> Result<Command, UsageError>
where
    I: IntoIterator,
    I::Item: Into<OsString>,
{
    use lexopt::prelude::*;

    let mut o = Options::default();
    let mut p = lexopt::Parser::from_args(args);
    while let Some(arg) = p.next()? {
        match arg {
            Short('s') | Long("socket") => o.socket = Some(p.value()?.into()),
            Long("socket-ro") => {
                let v = p.value()?;
                o.socket_ro = if v == "none" {
                    RoSocket::Disabled
                } else {
                    RoSocket::At(v.into())
                };
            }
            Long("domain-sockets") => o.domain_sockets = Some(p.value()?.into()),
            Long("no-domain-nodes") => o.domain_nodes = false,
            Long("priv-domid") => {
                let d = domid(p.value()?)?;
                if !o.privileged.contains(&d) {
                    o.privileged.push(d);
                }
            }
            Short('N') | Long("no-fork") => {}
            Short('F') | Long("pid-file") => o.pid_file = Some(p.value()?.into()),
            Short('T') | Long("trace-file") => o.trace_file = Some(p.value()?.into()),
            Short('V') | Long("verbose") => o.verbose = o.verbose.saturating_add(1),
            Short('E') | Long("entry-nb") => {
                o.quotas
                    .push((QuotaKind::Nodes, number("--entry-nb", p.value()?)?));
            }
            Short('S') | Long("entry-size") => {
                o.quotas
                    .push((QuotaKind::NodeSize, number("--entry-size", p.value()?)?));
            }
            Short('W') | Long("watch-nb") => {
                o.quotas
                    .push((QuotaKind::Watches, number("--watch-nb", p.value()?)?));
            }
            Short('t') | Long("transaction") => {
                o.quotas.push((
                    QuotaKind::Transactions,
                    number("--transaction", p.value()?)?,
                ));
            }
            Short('A') | Long("perm-nb") => {
                o.quotas
                    .push((QuotaKind::NodePermissions, number("--perm-nb", p.value()?)?));
            }
            Short('M') | Long("path-max") => {
                o.quotas
                    .push((QuotaKind::PathMax, number("--path-max", p.value()?)?));
            }
            Short('Q') | Long("quota") => o.quotas.push(quota_setting(p.value()?)?),
            Short('H') | Short('h') | Long("help") => return Ok(Command::Help),
            _ => return Err(arg.unexpected().into()),
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

/// The default main socket for a user: `/run/xs-host/socket` for root, else under
/// `$XDG_RUNTIME_DIR`, else under `/tmp/xs-host-<uid>`.
pub(crate) fn default_socket(uid: u32, xdg_runtime_dir: Option<OsString>) -> PathBuf {
    if uid == 0 {
        return PathBuf::from("/run/xs-host/socket");
    }
    match xdg_runtime_dir {
        Some(dir) if !dir.is_empty() && Path::new(&dir).is_absolute() => {
            Path::new(&dir).join("xs-host").join("socket")
        }
        _ => PathBuf::from(format!("/tmp/xs-host-{uid}/socket")),
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

    #[test]
    fn defaults() {
        let o = run(&[]);
        assert_eq!(o, Options::default());
        assert!(o.domain_nodes);
        assert_eq!(o.socket_ro, RoSocket::Default);
    }

    #[test]
    fn every_option() {
        let o = run(&[
            "-s",
            "/tmp/a",
            "--socket-ro",
            "/tmp/b",
            "--domain-sockets",
            "/tmp/d",
            "--no-domain-nodes",
            "--priv-domid",
            "7",
            "--priv-domid=9",
            "-N",
            "--no-fork",
            "-F",
            "/tmp/pid",
            "-T",
            "/tmp/trace",
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
        ]);
        assert_eq!(o.socket, Some(PathBuf::from("/tmp/a")));
        assert_eq!(o.socket_ro, RoSocket::At(PathBuf::from("/tmp/b")));
        assert_eq!(o.domain_sockets, Some(PathBuf::from("/tmp/d")));
        assert!(!o.domain_nodes);
        assert_eq!(o.privileged, vec![DomId(7), DomId(9)]);
        assert_eq!(o.pid_file, Some(PathBuf::from("/tmp/pid")));
        assert_eq!(o.trace_file, Some(PathBuf::from("/tmp/trace")));
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
    }

    #[test]
    fn attached_values() {
        let o = run(&["-s/tmp/x", "--socket=/tmp/y", "-Qoutstanding=5"]);
        assert_eq!(o.socket, Some(PathBuf::from("/tmp/y")));
        assert_eq!(o.quotas, vec![(QuotaKind::Outstanding, 5)]);
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
        assert_eq!(quota_by_name("bogus"), None);
    }

    #[test]
    fn help() {
        for h in ["-h", "-H", "--help"] {
            assert_eq!(parse([h]), Ok(Command::Help));
        }
    }

    #[test]
    fn usage_errors() {
        for args in [
            &["--bogus"][..],
            &["-x"],
            &["stray"],
            &["-s"],
            &["-E", "many"],
            &["-E", "-1"],
            &["-Q", "nodes"],
            &["-Q", "bogus=1"],
            &["-Q", "nodes=x"],
            &["--priv-domid", "0"],
            &["--priv-domid", "32752"],
            &["--priv-domid", "x"],
            &["--no-fork=1"],
        ] {
            assert!(parse(args.iter().copied()).is_err(), "{args:?}");
        }
    }

    #[test]
    fn default_sockets() {
        assert_eq!(
            default_socket(0, Some("/run/user/0".into())),
            PathBuf::from("/run/xs-host/socket")
        );
        assert_eq!(
            default_socket(1000, Some("/run/user/1000".into())),
            PathBuf::from("/run/user/1000/xs-host/socket")
        );
        assert_eq!(
            default_socket(1000, None),
            PathBuf::from("/tmp/xs-host-1000/socket")
        );
        assert_eq!(
            default_socket(1000, Some("".into())),
            PathBuf::from("/tmp/xs-host-1000/socket")
        );
        assert_eq!(
            default_socket(1000, Some("relative".into())),
            PathBuf::from("/tmp/xs-host-1000/socket")
        );
    }
}
