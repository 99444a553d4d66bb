//! The stub domain's command line, read as C xenstored reads its options
//! (`tools/xenstored/core.c`), so that a host configured for C's stub domain configures ours
//! the same way.
//!
//! `init-xenstore-domain` passes `--event <port>` and then its `--param` text, which is where
//! an administrator puts C xenstored's options (`XENSTORE_DOMAIN_ARGS="--param=..."` in
//! `/etc/default/xencommons`). The quotas apply; options that mean something only to a daemon
//! with files and a process (`-T`, `-F`, `-N`, ...) are accepted and reported as having no
//! effect here; anything else (unknown options, bad values) is reported and changes nothing:
//! the command line comes from dom0's configuration, and a typo in it must not stop the
//! host's XenStore from starting.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use xs_core::path::REL_PATH_MAX;
use xs_core::{DomId, QuotaKind};

/// The parameters C xenstored's stub domain takes on its command line
/// (`tools/xenstored/core.c`, `tools/helpers/init-xenstore-domain.c`).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct BootArgs {
    /// `--event <port>`: the port the privileged domain allocated for the store (its kernel
    /// did, in `IOCTL_XENBUS_BACKEND_SETUP`); `None` when absent, in which case the port is
    /// read from the ring page's `evtchn_port` (dom0less / Hyperlaunch).
    pub event: Option<u32>,
    /// `--priv-domid <domid>`: the privileged domain whose ring is served from the start
    /// (default 0).
    pub priv_domid: DomId,
    /// `--master-domid <domid>`: this domain's id, when the loader says.
    pub master_domid: Option<DomId>,
    /// Quotas set by `-E`, `-S`, `-W`, `-t`, `-A`, `-M` and `-Q NAME=N`, each kind once, in
    /// the order first given (a later value for the same kind replaces the earlier one, as in
    /// C).
    pub quotas: Vec<(QuotaKind, u32)>,
    /// `-q memory=N`/`--quota-soft memory=N`: the soft memory quota (memory is the only
    /// quota with a soft level, in C too).
    pub memory_soft: Option<u32>,
    /// `-K`/`--keep-orphans`: a gone domain's nodes are given to [`BootArgs::priv_domid`]
    /// instead of removed.
    pub keep_orphans: bool,
    /// `--domain-nodes` (xs-host's option of the same name): create `/local/domain/<N>` and
    /// the nodes libxl makes in it on `INTRODUCE`. Off by default: C xenstored creates none
    /// (the toolstack does, before it introduces the domain); `--no-domain-nodes` turns it
    /// off again.
    pub domain_nodes: bool,
    /// `-V`/`--verbose` was given.
    pub verbose: bool,
    /// What was not applied, one line each: options without effect here, unknown words, bad
    /// values.
    pub notes: Vec<String>,
}

impl Default for BootArgs {
    fn default() -> Self {
        BootArgs {
            event: None,
            priv_domid: DomId::DOM0,
            master_domid: None,
            quotas: Vec::new(),
            memory_soft: None,
            keep_orphans: false,
            domain_nodes: false,
            verbose: false,
            notes: Vec::new(),
        }
    }
}

/// Whether an option takes a value.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Value {
    None,
    Required,
    /// Only attached (`-Ioff`, `--internal-db=off`), as `getopt`'s `::`.
    Optional,
}

/// What an option does here.
#[derive(Clone, Copy)]
enum Action {
    Event,
    PrivDomid,
    MasterDomid,
    Quota(QuotaKind),
    PathMax,
    NamedQuota,
    SoftQuota,
    KeepOrphans,
    DomainNodes(bool),
    Verbose,
    /// Accepted, no effect in a stub domain; the text says why.
    NoEffect(&'static str),
}

struct Opt {
    long: &'static str,
    short: Option<u8>,
    value: Value,
    action: Action,
}

const fn opt(long: &'static str, short: Option<u8>, value: Value, action: Action) -> Opt {
    Opt {
        long,
        short,
        value,
        action,
    }
}

const NO_FILES: &str = "no effect in a stub domain (no files, no process)";

/// C xenstored's options, 4.17 to 4.22, and the stub domain's own (`--event`,
/// `--priv-domid`, `--master-domid`, and `--domid`, which 4.19+ `init-xenstore-domain`
/// passes). `-e`, `-p`, `-m` are accepted for the first three as before.
const OPTIONS: &[Opt] = &[
    opt("event", Some(b'e'), Value::Required, Action::Event),
    opt("priv-domid", Some(b'p'), Value::Required, Action::PrivDomid),
    opt(
        "master-domid",
        Some(b'm'),
        Value::Required,
        Action::MasterDomid,
    ),
    opt(
        "domid",
        None,
        Value::Required,
        Action::NoEffect("this domain's id comes from CPUID"),
    ),
    opt(
        "entry-nb",
        Some(b'E'),
        Value::Required,
        Action::Quota(QuotaKind::Nodes),
    ),
    opt(
        "entry-size",
        Some(b'S'),
        Value::Required,
        Action::Quota(QuotaKind::NodeSize),
    ),
    opt(
        "watch-nb",
        Some(b'W'),
        Value::Required,
        Action::Quota(QuotaKind::Watches),
    ),
    opt(
        "transaction",
        Some(b't'),
        Value::Required,
        Action::Quota(QuotaKind::Transactions),
    ),
    opt(
        "perm-nb",
        Some(b'A'),
        Value::Required,
        Action::Quota(QuotaKind::NodePermissions),
    ),
    opt("path-max", Some(b'M'), Value::Required, Action::PathMax),
    opt("quota", Some(b'Q'), Value::Required, Action::NamedQuota),
    opt("quota-soft", Some(b'q'), Value::Required, Action::SoftQuota),
    opt(
        "timeout",
        Some(b'w'),
        Value::Required,
        Action::NoEffect(
            "watch events do not expire here (a guest's queue is bounded instead: one \
             event per watch for a watcher that falls behind)",
        ),
    ),
    opt(
        "trace-file",
        Some(b'T'),
        Value::Required,
        Action::NoEffect(NO_FILES),
    ),
    opt(
        "trace-control",
        None,
        Value::Required,
        Action::NoEffect(NO_FILES),
    ),
    opt(
        "pid-file",
        Some(b'F'),
        Value::Required,
        Action::NoEffect(NO_FILES),
    ),
    opt("verbose", Some(b'V'), Value::None, Action::Verbose),
    opt(
        "no-domain-init",
        Some(b'D'),
        Value::None,
        Action::NoEffect(NO_FILES),
    ),
    opt(
        "no-fork",
        Some(b'N'),
        Value::None,
        Action::NoEffect(NO_FILES),
    ),
    opt(
        "output-pid",
        Some(b'P'),
        Value::None,
        Action::NoEffect(NO_FILES),
    ),
    opt(
        "no-recovery",
        Some(b'R'),
        Value::None,
        Action::NoEffect(NO_FILES),
    ),
    opt("keep-orphans", Some(b'K'), Value::None, Action::KeepOrphans),
    // xs-host's own.
    opt("domain-nodes", None, Value::None, Action::DomainNodes(true)),
    opt(
        "no-domain-nodes",
        None,
        Value::None,
        Action::DomainNodes(false),
    ),
    opt(
        "live-update",
        Some(b'U'),
        Value::None,
        Action::NoEffect(NO_FILES),
    ),
    opt(
        "internal-db",
        Some(b'I'),
        Value::Optional,
        Action::NoEffect(NO_FILES),
    ),
    opt(
        "help",
        Some(b'H'),
        Value::Optional,
        Action::NoEffect(NO_FILES),
    ),
];

/// `text` for a message: printable ASCII (other bytes escaped, `\xNN`), cut short, so a
/// note is at most a few hundred bytes whatever the command line holds.
fn shown(text: &[u8]) -> String {
    let cut = text.get(..48).unwrap_or(text);
    let mut s = format!("{}", cut.escape_ascii());
    if cut.len() < text.len() {
        s.push_str("...");
    }
    s
}

/// A long option as `getopt_long` resolves it: the exact name, else the one option the text
/// is a prefix of.
fn resolve_long(name: &[u8]) -> Option<&'static Opt> {
    if let Some(exact) = OPTIONS.iter().find(|o| o.long.as_bytes() == name) {
        return Some(exact);
    }
    let mut matches = OPTIONS
        .iter()
        .filter(|o| o.long.as_bytes().starts_with(name));
    match (matches.next(), matches.next()) {
        (Some(only), None) if !name.is_empty() => Some(only),
        _ => None,
    }
}

impl BootArgs {
    /// Parses a command line (see the module documentation). Never fails: what cannot be
    /// used is left out and noted in [`BootArgs::notes`].
    ///
    /// # Examples
    ///
    /// What `init-xenstore-domain` passes (`--event` is the port dom0's kernel allocated,
    /// the rest its `--param`):
    ///
    /// ```
    /// use x86_glue::BootArgs;
    /// use xs_core::{DomId, QuotaKind};
    ///
    /// let args = BootArgs::parse(b"--event 3 --priv-domid=1 -E 5000 -Qwatches=200 -T /x");
    /// assert_eq!(args.event, Some(3));
    /// assert_eq!(args.priv_domid, DomId(1));
    /// assert_eq!(args.quotas, [(QuotaKind::Nodes, 5000), (QuotaKind::Watches, 200)]);
    /// assert_eq!(args.notes.len(), 1); // -T: no files in a stub domain
    /// assert_eq!(BootArgs::parse(b"--event x").event, None);
    /// ```
    pub fn parse(cmdline: &[u8]) -> BootArgs {
        let mut args = BootArgs::default();
        let mut words = cmdline
            .split(|b| b.is_ascii_whitespace() || *b == 0)
            .filter(|w| !w.is_empty());
        while let Some(word) = words.next() {
            if let Some(long) = word.strip_prefix(b"--") {
                let (name, inline) = match long.iter().position(|&b| b == b'=') {
                    Some(i) => (long.get(..i).unwrap_or_default(), long.get(i + 1..)),
                    None => (long, None),
                };
                let Some(o) = resolve_long(name) else {
                    args.note(format!("unknown option --{}: ignored", shown(name)));
                    continue;
                };
                let value = match (o.value, inline) {
                    (Value::Required, None) => words.next(),
                    (_, v) => v,
                };
                args.apply(o, value, &format!("--{}", o.long));
            } else if let Some(letters) = word.strip_prefix(b"-").filter(|l| !l.is_empty()) {
                // Grouped letters as getopt takes them: flags, then at most one option with
                // a value, which is the rest of the word or the next word.
                let mut at = 0;
                while let Some(&c) = letters.get(at) {
                    at += 1;
                    let Some(o) = OPTIONS.iter().find(|o| o.short == Some(c)) else {
                        args.note(format!("unknown option -{}: ignored", shown(&[c])));
                        continue;
                    };
                    let rest = letters.get(at..).filter(|r| !r.is_empty());
                    let value = match o.value {
                        Value::None => None,
                        Value::Optional => rest,
                        Value::Required => rest.or_else(|| words.next()),
                    };
                    args.apply(o, value, &format!("-{}", char::from(c)));
                    if o.value != Value::None {
                        break;
                    }
                }
            } else {
                args.note(format!("stray word \"{}\": ignored", shown(word)));
            }
        }
        args
    }

    fn note(&mut self, line: String) {
        // A hostile command line gets a bounded number of lines (it is at most 512 bytes
        // from init-xenstore-domain, but not every loader is that one).
        if self.notes.len() < 16 {
            self.notes.push(line);
        }
    }

    /// Sets quota `kind`: a repeated option replaces the value, so the list stays as short
    /// as the kinds of quota, whatever the command line.
    fn set_quota(&mut self, kind: QuotaKind, value: u32) {
        match self.quotas.iter_mut().find(|(k, _)| *k == kind) {
            Some(q) => q.1 = value,
            None => self.quotas.push((kind, value)),
        }
    }

    /// Carries out option `o` (as `shown` on the command line) with `value`.
    fn apply(&mut self, o: &Opt, value: Option<&[u8]>, shown_as: &str) {
        let number = |v: Option<&[u8]>| v.and_then(xs_core::domid::parse_decimal);
        let count = |v| number(v).and_then(|n| u32::try_from(n).ok());
        let domid = |v| {
            number(v)
                .and_then(|n| u16::try_from(n).ok())
                .map(DomId)
                .filter(|d| d.is_real())
        };
        if o.value == Value::Required && value.is_none() {
            self.note(format!("{shown_as} needs a value: ignored"));
            return;
        }
        let bad = |v: Option<&[u8]>| {
            format!(
                "{shown_as} {}: not a valid value, default kept",
                shown(v.unwrap_or_default())
            )
        };
        match o.action {
            Action::Event => match count(value) {
                Some(p) if p != 0 => self.event = Some(p),
                _ => self.note(bad(value)),
            },
            Action::PrivDomid => match domid(value) {
                Some(d) => self.priv_domid = d,
                None => self.note(bad(value)),
            },
            Action::MasterDomid => match domid(value) {
                Some(d) => self.master_domid = Some(d),
                None => self.note(bad(value)),
            },
            Action::Quota(kind) => match count(value) {
                Some(n) => self.set_quota(kind, n),
                None => self.note(bad(value)),
            },
            Action::PathMax => match count(value) {
                // C clamps -M to XENSTORE_REL_PATH_MAX (`min()` in main()).
                Some(n) => {
                    let max = u32::try_from(REL_PATH_MAX).unwrap_or(u32::MAX);
                    self.set_quota(QuotaKind::PathMax, n.min(max));
                }
                None => self.note(bad(value)),
            },
            Action::NamedQuota => {
                let setting = value.and_then(|v| {
                    let eq = v.iter().position(|&b| b == b'=')?;
                    let kind = QuotaKind::from_name(v.get(..eq)?)?;
                    let n = xs_core::domid::parse_decimal(v.get(eq + 1..)?)?;
                    Some((kind, u32::try_from(n).ok()?))
                });
                match setting {
                    Some((kind, n)) => self.set_quota(kind, n),
                    None => self.note(format!(
                        "{shown_as} {}: not NAME=N with a known quota, ignored",
                        shown(value.unwrap_or_default())
                    )),
                }
            }
            Action::SoftQuota => {
                let n = value
                    .and_then(|v| v.strip_prefix(b"memory="))
                    .and_then(xs_core::domid::parse_decimal)
                    .and_then(|n| u32::try_from(n).ok());
                match n {
                    Some(n) => self.memory_soft = Some(n),
                    None => self.note(format!(
                        "{shown_as} {}: not memory=N (memory is the only soft quota), ignored",
                        shown(value.unwrap_or_default())
                    )),
                }
            }
            Action::KeepOrphans => self.keep_orphans = true,
            Action::DomainNodes(on) => self.domain_nodes = on,
            Action::Verbose => self.verbose = true,
            Action::NoEffect(why) => self.note(format!("{shown_as}: {why}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stub_domains_own_options() {
        let a = BootArgs::parse(b"--event 7 --priv-domid=2 -m 1 other\0");
        assert_eq!(a.event, Some(7));
        assert_eq!(a.priv_domid, DomId(2));
        assert_eq!(a.master_domid, Some(DomId(1)));
        assert_eq!(a.notes, ["stray word \"other\": ignored"]);
        assert_eq!(BootArgs::parse(b""), BootArgs::default());
        // Malformed or out-of-range values leave the defaults, and say so.
        let bad = BootArgs::parse(b"--event x --priv-domid 70000 --event=0 -p 32752");
        assert_eq!((bad.event, bad.priv_domid), (None, DomId::DOM0));
        assert_eq!(bad.notes.len(), 4);
        // A trailing option without its value.
        assert_eq!(BootArgs::parse(b"--event").event, None);
    }

    #[test]
    fn every_quota_option_in_every_form() {
        let a = BootArgs::parse(
            b"--event 9 -E 1 -S2 --watch-nb=3 --transaction 4 -A5 --path-max 99999 \
              -Q memory=6 --quota=path-length=7 --entry 8",
        );
        assert_eq!(a.event, Some(9));
        assert_eq!(
            a.quotas,
            [
                (QuotaKind::Nodes, 1),
                (QuotaKind::NodeSize, 2),
                (QuotaKind::Watches, 3),
                (QuotaKind::Transactions, 4),
                (QuotaKind::NodePermissions, 5),
                // `-M 99999` clamped, then replaced by `path-length=7`.
                (QuotaKind::PathMax, 7),
                (QuotaKind::Memory, 6),
            ]
        );
        // C clamps -M to XENSTORE_REL_PATH_MAX.
        assert_eq!(
            BootArgs::parse(b"-M 99999").quotas,
            [(QuotaKind::PathMax, 2048)]
        );
        // `--entry` is ambiguous (entry-nb, entry-size): not guessed, and its value is a
        // stray word then.
        assert_eq!(
            a.notes,
            [
                "unknown option --entry: ignored",
                "stray word \"8\": ignored"
            ]
        );
    }

    #[test]
    fn domain_nodes_are_off_unless_asked() {
        assert!(!BootArgs::parse(b"--event 5").domain_nodes);
        let a = BootArgs::parse(b"--domain-nodes --event 5");
        assert!(a.domain_nodes && a.notes.is_empty(), "{:?}", a.notes);
        assert!(!BootArgs::parse(b"--domain-nodes --no-domain-nodes").domain_nodes);
    }

    #[test]
    fn soft_quota_and_keep_orphans() {
        let a = BootArgs::parse(b"-q memory=4096 -K --quota-soft=memory=8192 -w watch-event=5");
        assert_eq!(a.memory_soft, Some(8192));
        assert!(a.keep_orphans);
        assert_eq!(a.notes.len(), 1, "{:?}", a.notes);
        assert!(a.notes[0].contains("do not expire"), "{:?}", a.notes);
        for bad in [&b"-q nodes=1"[..], b"-q memory", b"-q memory=x", b"-q"] {
            let a = BootArgs::parse(bad);
            assert_eq!(a.memory_soft, None, "{bad:?}");
            assert_eq!(a.notes.len(), 1, "{bad:?}: {:?}", a.notes);
        }
    }

    #[test]
    fn flags_group_and_options_without_effect_are_noted() {
        let a = BootArgs::parse(b"--event 1 -VN -T/tmp/t -Ioff -R --pid-file /p");
        assert!(a.verbose);
        assert_eq!(a.event, Some(1));
        assert_eq!(a.notes.len(), 5, "{:?}", a.notes);
        assert!(a.notes.iter().all(|n| n.contains("no effect")));
        // The value of -T was taken whole (attached), not read as more letters.
        assert!(a.quotas.is_empty());
    }

    #[test]
    fn hostile_input_changes_nothing_and_is_bounded() {
        let defaults = BootArgs::default();
        for line in [
            &b"-E"[..],
            b"-E x",
            b"-E 99999999999",
            b"-Q",
            b"-Q nodes",
            b"-Q bogus=1",
            b"-Q nodes=x",
            b"--event 0",
            b"--event -1",
            b"--priv-domid 32752",
            b"--master-domid=x",
            b"word",
            b"-",
            b"--",
            b"--=",
            b"-\xff\xfe",
            b"--\xff=1",
        ] {
            let a = BootArgs::parse(line);
            assert_eq!(
                (a.event, a.priv_domid, a.master_domid, &a.quotas, a.verbose),
                (None, defaults.priv_domid, None, &defaults.quotas, false),
                "{line:?}"
            );
            assert_eq!((a.memory_soft, a.keep_orphans), (None, false), "{line:?}");
            assert!(!a.notes.is_empty(), "{line:?} was not reported");
        }
        let flood = b"-x ".repeat(1000);
        assert_eq!(BootArgs::parse(&flood).notes.len(), 16);
        // Repeated quotas: one entry per kind, the last value.
        let repeated = b"-E 1 -W 2 ".repeat(1000);
        assert_eq!(
            BootArgs::parse(&repeated).quotas,
            [(QuotaKind::Nodes, 1), (QuotaKind::Watches, 2)]
        );
        assert_eq!(
            BootArgs::parse(b"-E 1 -Qnodes=7").quotas,
            [(QuotaKind::Nodes, 7)]
        );
        let long = [b'a'; 600];
        let a = BootArgs::parse(&long);
        assert!(a.notes[0].len() < 100, "{}", a.notes[0]);
    }
}
