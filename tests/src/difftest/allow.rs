//! The allow-list: differences between the daemons that are known and accepted, each with
//! its reason.
//!
//! A rule names the daemon whose behaviour it describes (`Who::Daemon`): it explains a
//! difference between that daemon and any other, matched with `this` being that daemon's
//! observation. `Who::Any` rules explain a difference between any two. After a step a
//! rule explains, the two stores may hold different things: when the rule says so
//! (`diverges`), or when a request that changes something succeeded on one daemon only, or
//! one daemon answered and the other did not; then comparing that pair stops there for
//! the sequence (the statistics show how often).
//!
//! A rule is as narrow as its reason: it names the request type and the exact replies it
//! allows, so that anything else about the same step still counts as a difference.

use super::run::{Observed, Reply};
use super::script::{Action, Sequence, Step, Tx};
use crate::daemon::Kind;

/// Whose behaviour a rule describes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Who {
    /// This daemon's, against any other.
    Daemon(Kind),
    /// Any two daemons'.
    Any,
}

/// What a rule sees of a step that differs.
#[derive(Clone, Copy, Debug)]
pub struct Ctx<'a> {
    /// The sequence.
    pub seq: &'a Sequence,
    /// Index of the step.
    pub index: usize,
    /// The step.
    pub step: &'a Step,
    /// The domain of the step's connection.
    pub domid: u32,
    /// The daemon the rule is about, and what it observed.
    pub this_kind: Kind,
    /// What it observed.
    pub this: &'a Observed,
    /// Its observations of every step.
    pub this_trace: &'a [Observed],
    /// The other daemon.
    pub other_kind: Kind,
    /// What the other observed.
    pub other: &'a Observed,
    /// Its observations of every step.
    pub other_trace: &'a [Observed],
}

impl Ctx<'_> {
    fn ty(&self) -> u32 {
        self.step.ty()
    }

    /// Same events on every connection.
    fn same_events(&self) -> bool {
        self.this.events == self.other.events
    }

    fn this_err(&self) -> Option<&str> {
        err(&self.this.reply)
    }

    fn other_err(&self) -> Option<&str> {
        err(&self.other.reply)
    }
}

/// The errno of an error reply (also one carrying another `tx_id`, see
/// `oxs-error-tx-id-zero`).
fn err(r: &Reply) -> Option<&str> {
    match r {
        Reply::Error(e) => Some(e),
        Reply::OtherTx { reply, .. } => err(reply),
        _ => None,
    }
}

fn ok(r: &Reply) -> bool {
    matches!(r, Reply::Ok { .. })
}

/// A success, also one carrying another `tx_id` (see `oxs-error-tx-id-zero`).
fn ok_any_tx(r: &Reply) -> bool {
    match r {
        Reply::OtherTx { reply, .. } => ok(reply),
        r => ok(r),
    }
}

/// One accepted difference.
#[derive(Debug)]
pub struct Rule {
    /// Short name, in statistics and reports.
    pub id: &'static str,
    /// Whose behaviour it describes.
    pub who: Who,
    /// Why the difference is accepted.
    pub reason: &'static str,
    /// Whether the two stores always differ afterwards (see the module doc for when they
    /// differ anyway).
    pub diverges: bool,
    /// Whether it explains the step (`this` is the daemon named in `who`).
    pub matches: fn(&Ctx<'_>) -> bool,
}

/// Whether the step names a transaction.
fn in_tx(step: &Step) -> bool {
    matches!(
        step.action,
        Action::Request { tx, .. } if tx != Tx::None
    )
}

/// Whether the payload's last argument lacks its NUL.
fn unterminated(step: &Step) -> bool {
    matches!(&step.action, Action::Request { payload, .. } if payload.last().is_some_and(|&b| b != 0))
}

/// Whether an argument of the step that is a number (domid, offset, mfn, port) is not
/// one xs-host takes.
fn bad_number(step: &Step) -> bool {
    let args = step.args();
    let arg = |i: usize| args.get(i).copied().unwrap_or_default();
    match step.ty() {
        8 => not_domid(arg(0)) || not_decimal(arg(1)) || not_decimal(arg(2)),
        9 | 10 | 17 | 18 => not_domid(arg(0)),
        19 => not_domid(arg(0)) || not_domid(arg(1)),
        22 => not_decimal(arg(1)),
        _ => false,
    }
}

/// Whether the step runs in a transaction (by label) that started before another request
/// successfully changed the store on both daemons.
fn changed_since_tx_start(c: &Ctx<'_>) -> bool {
    let Action::Request {
        tx: Tx::Label(l), ..
    } = c.step.action
    else {
        return false;
    };
    let Some(start) = c.seq.steps[..c.index]
        .iter()
        .position(|s| s.label == Some(l))
    else {
        return false;
    };
    (start + 1..c.index).any(|k| {
        let s = &c.seq.steps[k];
        let outside = !matches!(s.action, Action::Request { tx: Tx::Label(x), .. } if x == l);
        let changes = matches!(s.ty(), 7 | 9 | 11..=14);
        outside && changes && ok(&c.this_trace[k].reply) && ok(&c.other_trace[k].reply)
    })
}

/// GET_PERMS where this daemon's list is the other's without some entries naming a
/// domain a RELEASE step of the sequence released.
fn released_domain_perms(c: &Ctx<'_>) -> bool {
    let (Reply::Ok { payload: a, .. }, Reply::Ok { payload: b, .. }) =
        (&c.this.reply, &c.other.reply)
    else {
        return false;
    };
    if c.ty() != 3 {
        return false;
    }
    let released: Vec<&[u8]> = c.seq.steps[..c.index]
        .iter()
        .zip(c.this_trace)
        .filter(|(s, o)| s.ty() == 9 && ok(&o.reply))
        .map(|(s, _)| s.path())
        .collect();
    let split = |p: &[u8]| -> Vec<Vec<u8>> {
        p.split(|&x| x == 0)
            .filter(|e| !e.is_empty())
            .map(<[u8]>::to_vec)
            .collect()
    };
    let (a, b) = (split(a), split(b));
    let mut rest = b.iter().filter(|e| !a.contains(e));
    a.iter().all(|e| b.contains(e)) && rest.all(|e| e.len() > 1 && released.contains(&&e[1..]))
}

/// Whether `text` is not a plain decimal a domid or an offset could be.
fn not_decimal(text: &[u8]) -> bool {
    text.is_empty() || !text.iter().all(u8::is_ascii_digit) || text.len() > 10
}

/// Whether `text` is no domid (a plain decimal up to 65535).
fn not_domid(text: &[u8]) -> bool {
    not_decimal(text)
        || std::str::from_utf8(text)
            .ok()
            .and_then(|t| t.parse::<u16>().ok())
            .is_none()
}

/// Whether a SET_PERMS entry is malformed (`n`, `r`, `w` or `b` and a domid).
fn bad_perm(p: &[u8]) -> bool {
    match p.split_first() {
        Some((t, d)) => !matches!(t, b'n' | b'r' | b'w' | b'b') || not_domid(d),
        None => true,
    }
}

/// Types Xen added after 4.17.
fn after_417(t: u32) -> bool {
    (23..=26).contains(&t)
}

/// The allow-list.
pub static RULES: &[Rule] = &[
    Rule {
        id: "event-order",
        who: Who::Any,
        reason: "The events one request fires reach a connection in an order each daemon \
                 picks: a recursive RM walks children in each store's own order (C: \
                 creation order; xs-host: sorted; oxenstored: its map's), a commit fires \
                 in the order its daemon recorded the changes. The protocol promises no \
                 order among them; the same events must arrive.",
        diverges: false,
        matches: |c| {
            c.this.reply == c.other.reply
                && c.this.events.iter().zip(&c.other.events).all(|(x, y)| {
                    let (mut x, mut y) = (x.clone(), y.clone());
                    x.sort();
                    y.sort();
                    x == y
                })
        },
    },
    Rule {
        id: "tx-ids-per-connection",
        who: Who::Any,
        reason: "A request naming another connection's transaction: C xenstored numbers \
                 transactions per connection (so the id may name one of this connection's \
                 own), xs-host and oxenstored per daemon (ENOENT/EIO). The protocol only \
                 says an id is valid on the connection that started it.",
        diverges: false,
        matches: |c| {
            let Action::Request {
                tx: Tx::Label(l), ..
            } = c.step.action
            else {
                return false;
            };
            c.seq.steps[..c.index]
                .iter()
                .any(|s| s.label == Some(l) && s.conn != c.step.conn)
        },
    },
    Rule {
        id: "xs-types-after-4.17",
        who: Who::Daemon(Kind::XsHost),
        reason: "GET_FEATURE, SET_FEATURE, GET_QUOTA and SET_QUOTA (types 23-26) came \
                 with Xen 4.19/4.20; the 4.17 references answer ENOSYS (C) or EINVAL \
                 (oxenstored) to them. The tester sends the setters empty, so no daemon \
                 changes a setting.",
        diverges: false,
        matches: |c| after_417(c.ty()) && c.same_events(),
    },
    Rule {
        id: "children-order",
        who: Who::Any,
        reason: "DIRECTORY_PART at an offset other than 0 cuts the children's list at a \
                 byte offset, so what it returns depends on each store's order (C: \
                 creation order; xs-host: sorted). Whole lists are compared sorted.",
        diverges: false,
        matches: |c| {
            c.ty() == 22
                && ok(&c.this.reply)
                && ok(&c.other.reply)
                && c.step.args().get(1) != Some(&&b"0"[..])
        },
    },
    Rule {
        id: "oxs-no-directory-part",
        who: Who::Daemon(Kind::OXenstored),
        reason: "oxenstored 4.17 does not implement DIRECTORY_PART (ENOSYS); C xenstored \
                 has it since 4.9, xs-host follows C.",
        diverges: false,
        matches: |c| c.ty() == 22 && c.this_err() == Some("ENOSYS") && c.same_events(),
    },
    Rule {
        id: "oxs-unknown-tx-eio",
        who: Who::Daemon(Kind::OXenstored),
        reason: "oxenstored answers EIO to a request naming a transaction id it does not \
                 know; C xenstored (and xs-host) ENOENT.",
        diverges: false,
        matches: |c| {
            in_tx(c.step) && c.this_err() == Some("EIO") && c.other_err() == Some("ENOENT")
        },
    },
    Rule {
        id: "oxs-drops-malformed",
        who: Who::Daemon(Kind::OXenstored),
        reason: "oxenstored 4.17 takes some malformed requests (an empty payload, WATCH or \
                 UNWATCH without their two arguments) for a broken connection: it never \
                 answers and closes it. C xenstored and xs-host answer (EINVAL, or as for \
                 an empty argument) and go on.",
        diverges: true,
        matches: |c| {
            let empty =
                matches!(&c.step.action, Action::Request { payload, .. } if payload.is_empty());
            matches!(c.this.reply, Reply::Timeout | Reply::Closed)
                && matches!(c.other.reply, Reply::Ok { .. } | Reply::Error(_))
                && (empty || (matches!(c.ty(), 3..=5) && c.step.args().len() < 2))
        },
    },
    Rule {
        id: "oxs-special-path-as-node",
        who: Who::Daemon(Kind::OXenstored),
        reason: "oxenstored takes a path starting with `@` for a node's in requests other \
                 than WATCH/UNWATCH (ENOENT); C xenstored and xs-host refuse it (EINVAL).",
        diverges: false,
        matches: |c| {
            c.step.path().first() == Some(&b'@')
                && !matches!(c.ty(), 4 | 5)
                && (c.this_err() == Some("ENOENT") || ok(&c.this.reply))
                && c.other_err() == Some("EINVAL")
        },
    },
    Rule {
        id: "oxs-release-unknown-domain",
        who: Who::Daemon(Kind::OXenstored),
        reason: "RELEASE of a domain that was not introduced: oxenstored answers EINVAL \
                 and still removes the nodes the domain owns (under the shim every domain \
                 exists); C xenstored and xs-host answer ENOENT and change nothing.",
        diverges: true,
        matches: |c| {
            c.ty() == 9 && c.this_err() == Some("EINVAL") && c.other_err() == Some("ENOENT")
        },
    },
    Rule {
        id: "oxs-unknown-domain-einval",
        who: Who::Daemon(Kind::OXenstored),
        reason: "RESUME of a domain that was not introduced: oxenstored EINVAL, C \
                 xenstored and xs-host ENOENT.",
        diverges: false,
        matches: |c| {
            c.ty() == 18 && c.this_err() == Some("EINVAL") && c.other_err() == Some("ENOENT")
        },
    },
    Rule {
        id: "oxs-introduce-port-0",
        who: Who::Daemon(Kind::OXenstored),
        reason: "INTRODUCE with event channel 0: oxenstored takes it, C xenstored and \
                 xs-host refuse it (EINVAL).",
        diverges: true,
        matches: |c| {
            c.ty() == 8
                && ok(&c.this.reply)
                && c.other_err() == Some("EINVAL")
                && c.step.args().get(2) == Some(&&b"0"[..])
        },
    },
    Rule {
        id: "oxs-error-tx-id-zero",
        who: Who::Daemon(Kind::OXenstored),
        reason: "oxenstored's replies to WATCH and UNWATCH, and its errors to some \
                 malformed requests, carry tx_id 0 instead of the request's; same reply \
                 otherwise. (WATCH and UNWATCH ignore the transaction.)",
        diverges: false,
        matches: |c| match &c.this.reply {
            Reply::OtherTx { tx_id: 0, reply } => **reply == c.other.reply,
            _ => false,
        },
    },
    Rule {
        id: "oxs-tx-checked-first",
        who: Who::Daemon(Kind::OXenstored),
        reason: "A request of an unknown type naming a transaction: oxenstored looks the \
                 transaction up first (EIO for an unknown one), C xenstored and xs-host \
                 refuse the type first (ENOSYS).",
        diverges: false,
        matches: |c| {
            in_tx(c.step) && c.this_err() == Some("EIO") && c.other_err() == Some("ENOSYS")
        },
    },
    Rule {
        id: "oxs-no-local-domain",
        who: Who::Daemon(Kind::OXenstored),
        reason: "oxenstored starts with /local (C xenstored and xs-host with no node but \
                 / and /tool/xenstored) and lists its special nodes as children of /; so \
                 requests on / and /local differ until both stores have the same there.",
        diverges: false,
        matches: |c| {
            let p = c.step.path();
            p == b"/" || p.starts_with(b"/local") || p.starts_with(b"t")
        },
    },
    Rule {
        id: "oxs-path-limits",
        who: Who::Daemon(Kind::OXenstored),
        reason: "oxenstored holds every path to its quota-path-max (1024 in Debian's \
                 oxenstored.conf, EINVAL), dom0's too, but lets WATCH take paths longer \
                 than C xenstored 4.17 takes (2048 for dom0) and than \
                 XENSTORE_ABS_PATH_MAX (3072, where xs-host stops), answering them with \
                 tx_id 0 when the request named a transaction.",
        diverges: false,
        matches: |c| {
            let len = c.step.path().len();
            (len > 1024 && c.this_err() == Some("EINVAL") && c.other_err() != Some("EINVAL"))
                || (c.ty() == 4
                    && len > 2048
                    && ok_any_tx(&c.this.reply)
                    && c.other_err() == Some("EINVAL"))
        },
    },
    Rule {
        id: "oxs-no-event-dedup",
        who: Who::Daemon(Kind::OXenstored),
        reason: "C xenstored drops a watch event identical (path and token) to one still \
                 pending for the connection, and xs-host follows it (issue 17, item 4); \
                 oxenstored sends every one: two watches with one token that a change \
                 fires both give it two identical events.",
        diverges: false,
        matches: |c| {
            c.this.reply == c.other.reply
                && c.this.events != c.other.events
                && c.this.events.iter().zip(&c.other.events).all(|(x, y)| {
                    let (mut x, mut y) = (x.clone(), y.clone());
                    x.sort();
                    x.dedup();
                    y.sort();
                    y.dedup();
                    x == y
                })
        },
    },
    Rule {
        id: "oxs-introduce-bad-mfn",
        who: Who::Daemon(Kind::OXenstored),
        reason: "INTRODUCE with an mfn that is no number: oxenstored EIO; C xenstored \
                 takes atoi's 0 (or refuses the port), xs-host refuses it (EINVAL).",
        diverges: false,
        matches: |c| c.ty() == 8 && c.this_err() == Some("EIO") && bad_number(c.step),
    },
    Rule {
        id: "oxs-rm-fires-watches-below",
        who: Who::Daemon(Kind::OXenstored),
        reason: "RM of a node fires, in oxenstored, every watch set below it, on paths \
                 where no node was; C xenstored and xs-host fire only the watches of nodes \
                 that were removed (and of the node's ancestors).",
        diverges: false,
        matches: |c| {
            let below = [c.step.path(), b"/"].concat();
            c.ty() == 13
                && c.this.reply == c.other.reply
                && c.this.events.iter().zip(&c.other.events).all(|(t, o)| {
                    o.iter().all(|e| t.contains(e))
                        && t.iter()
                            .filter(|e| !o.contains(e))
                            .all(|e| e.starts_with(&below))
                })
        },
    },
    Rule {
        id: "oxs-atoi-perms",
        who: Who::Daemon(Kind::OXenstored),
        reason: "oxenstored takes malformed SET_PERMS entries (`b-1`, `n99999`) as some \
                 domid, where C xenstored and xs-host refuse the request.",
        diverges: false,
        matches: |c| {
            c.ty() == 14
                && ok(&c.this.reply)
                && c.other_err().is_some()
                && c.step.args().iter().skip(1).any(|p| bad_perm(p))
        },
    },
    Rule {
        id: "oxs-dom0-node-size",
        who: Who::Daemon(Kind::OXenstored),
        reason: "oxenstored applies its node-size quota (quota-maxsize 2048 in Debian's \
                 oxenstored.conf) to dom0 too, before anything else: E2BIG; C xenstored \
                 and xs-host exempt privileged domains from quotas (and refuse a write to \
                 a special path such as @introduceDomain with EINVAL, which oxenstored \
                 checks after the size).",
        diverges: false,
        matches: |c| {
            c.domid == 0
                && c.ty() == 11
                && c.this_err() == Some("E2BIG")
                && (ok(&c.other.reply) || c.other_err() == Some("EINVAL"))
                && c.step.args().concat().len() > 2048
        },
    },
    Rule {
        id: "c417-unterminated-arg",
        who: Who::Daemon(Kind::CXenstored),
        reason: "C xenstored 4.17 takes a single argument that lacks its terminating NUL \
                 (or an empty payload) as it finds it, answering for whatever path that \
                 makes; xs-host and oxenstored refuse such a request with EINVAL, as later \
                 C does (`onearg`).",
        diverges: false,
        matches: |c| {
            (unterminated(c.step) || c.step.args() == [b""]) && c.other_err() == Some("EINVAL")
        },
    },
    Rule {
        id: "xs-path-max-privileged",
        who: Who::Daemon(Kind::XsHost),
        reason: "xs-host exempts privileged callers from every quota, path length \
                 included (crates/xs-core/src/quota.rs), so dom0's paths may be as long as \
                 the protocol's XENSTORE_ABS_PATH_MAX (3072); Xen 4.17's C xenstored and \
                 oxenstored hold dom0 to 2048 (C: the path-max quota; oxenstored: \
                 quota-path-max 1024 for the part after a domain's home) and answer EINVAL.",
        diverges: false,
        matches: |c| {
            let len = c.step.path().len();
            c.domid == 0
                && len > 1024
                && len <= 3072
                && c.this_err() != Some("EINVAL")
                && c.other_err() == Some("EINVAL")
        },
    },
    Rule {
        id: "xs-strict-numbers",
        who: Who::Daemon(Kind::XsHost),
        reason: "xs-host refuses a domid, offset, mfn or port that is no plain decimal (a \
                 domid: or is over 65535) with EINVAL (crates/xs-core/src/domid.rs); the references parse it as C's \
                 atoi does (\"x\" is 0) and answer for that number. xenstore.txt: \
                 parsing errors \"generally go undetected\".",
        diverges: false,
        matches: |c| c.this_err() == Some("EINVAL") && bad_number(c.step),
    },
    Rule {
        id: "oxs-badlen-waits",
        who: Who::Daemon(Kind::OXenstored),
        reason: "Sent a header claiming more than 4096 payload bytes, oxenstored waits for \
                 them (no reply); C xenstored and xs-host drop the connection at once. \
                 Either way the client's connection is lost to it.",
        diverges: false,
        matches: |c| {
            matches!(c.step.action, Action::BadLength { .. })
                && c.this.reply == Reply::Timeout
                && c.other.reply == Reply::Closed
        },
    },
    Rule {
        id: "c417-atoi-numbers",
        who: Who::Daemon(Kind::CXenstored),
        reason: "C xenstored 4.17 parses domids and offsets with atoi (\"x\" is 0) and \
                 answers for that number; xs-host and oxenstored refuse the request \
                 (EINVAL).",
        diverges: false,
        matches: |c| bad_number(c.step) && c.other_err() == Some("EINVAL"),
    },
    Rule {
        id: "c417-extra-args",
        who: Who::Daemon(Kind::CXenstored),
        reason: "C xenstored 4.17 does not check that a one-argument request has one \
                 argument: it acts on the first and ignores the rest (or answers ENOMEM, \
                 for MKDIR); xs-host and oxenstored refuse the request (EINVAL).",
        diverges: false,
        matches: |c| {
            matches!(c.ty(), 1..=3 | 12 | 13 | 10 | 17)
                && c.step.args().len() > 1
                && c.other_err() == Some("EINVAL")
        },
    },
    Rule {
        id: "xs-released-domain-perms",
        who: Who::Daemon(Kind::XsHost),
        reason: "Permission entries naming a domain that was released: xs-host knows the \
                 domain is gone and drops them (as C does on Xen, where the hypervisor \
                 says the domain no longer exists); under the anchors' shim every domid \
                 exists for C xenstored and oxenstored, so they keep them.",
        diverges: true,
        matches: |c| released_domain_perms(c),
    },
    Rule {
        id: "c417-special-perms",
        who: Who::Daemon(Kind::CXenstored),
        reason: "C xenstored 4.17 answers EINVAL to GET_PERMS of a special path, and \
                 EINVAL, ENOENT or EACCES to SET_PERMS of one (when it does not die, see \
                 c417-crash-special-set-perms); xs-host answers as for a node (the special \
                 node's permissions, EACCES, or ENOENT for an unknown one), as later C \
                 does.",
        diverges: false,
        matches: |c| {
            c.step.path().first() == Some(&b'@')
                && ((c.ty() == 3 && c.this_err() == Some("EINVAL"))
                    || (c.ty() == 14
                        && matches!(c.this_err(), Some("EINVAL" | "ENOENT" | "EACCES"))))
        },
    },
    Rule {
        id: "c417-crash-special-set-perms",
        who: Who::Daemon(Kind::CXenstored),
        reason: "C xenstored 4.17 dies on some SET_PERMS of a special path or of the root \
                 (minimal: `c0 SET_PERMS - \"@other\\0n1\\0\"`; `c0 SET_PERMS - \
                 \"/\\0b0\\0b2\\0w1\\0b2\\0\"`), a bug of the reference; xs-host answers \
                 (ENOENT for the unknown special node).",
        diverges: true,
        matches: |c| {
            c.ty() == 14
                && c.this.reply == Reply::Died
                && matches!(c.step.path(), [b'@', ..] | b"/")
        },
    },
    Rule {
        id: "c417-crash-empty-payload",
        who: Who::Daemon(Kind::CXenstored),
        reason: "C xenstored 4.17 dies, or drops the connection, on some requests with an \
                 empty payload (GET_PERMS, MKDIR in a transaction; minimal: `c0 GET_PERMS \
                 - \"\"` after other requests), a bug of the reference; xs-host answers \
                 EINVAL.",
        diverges: true,
        matches: |c| {
            matches!(c.this.reply, Reply::Died | Reply::Closed)
                && matches!(&c.step.action, Action::Request { payload, .. } if payload.is_empty())
        },
    },
    Rule {
        id: "unwatch-invalid-path",
        who: Who::Any,
        reason: "UNWATCH of a path no WATCH accepts (empty, too long, malformed): C \
                 xenstored 4.17 just finds no such watch (ENOENT); xs-host checks the path \
                 first (EINVAL); oxenstored does either, depending on the path. Nothing \
                 changes either way.",
        diverges: false,
        matches: |c| {
            let errs = [c.this_err(), c.other_err()];
            c.ty() == 5 && errs.contains(&Some("ENOENT")) && errs.contains(&Some("EINVAL"))
        },
    },
    Rule {
        id: "c417-txn-reads-live",
        who: Who::Daemon(Kind::CXenstored),
        reason: "C xenstored 4.17's transactions are no snapshots: a node the transaction \
                 had not touched yet is read from the live store, changes made since the \
                 transaction started included (and the commit fails only if it changed \
                 again after that first access). xs-host and oxenstored read every node as \
                 it was when the transaction started. Matched only when another request \
                 changed the store after the transaction started.",
        diverges: false,
        matches: |c| changed_since_tx_start(c),
    },
    Rule {
        id: "xs-node-size-accounting",
        who: Who::Daemon(Kind::XsHost),
        reason: "The node-size quota (2048) of an unprivileged caller: xs-host counts the \
                 bytes the caller controls, a node's value and its children's names \
                 (store/node.rs `quota_size`), and checks the parent only if the caller owns \
                 it; C xenstored 4.17 counts its whole database record (a 24-byte header \
                 and 8 bytes per permission on top, an artefact of its TDB layout) and \
                 checks the parent a creation adds a name to whoever owns it. So C refuses \
                 (ENOSPC) some writes xs-host takes: values of 2017..2047 bytes, a child \
                 under another domain's node already near the limit. Deliberate: a guest's \
                 limit does not depend on how many permission entries dom0 gave its nodes, \
                 and the bytes another domain's node holds are bounded by that domain's \
                 quotas and the caller's node quota.",
        diverges: false,
        matches: |c| {
            c.domid != 0
                && matches!(c.ty(), 11 | 12)
                && ok(&c.this.reply)
                && c.other_err() == Some("ENOSPC")
        },
    },
    Rule {
        id: "xs-strict-perms",
        who: Who::Daemon(Kind::XsHost),
        reason: "SET_PERMS with a malformed entry (`b-1`, `n99999`, `x1`, an empty one): \
                 xs-host refuses it (EINVAL) before anything else; C xenstored 4.17 and \
                 oxenstored parse entries with atoi and take them, or refuse the request \
                 for another reason first (ENOENT, EACCES, EPERM, ENOSPC).",
        diverges: false,
        matches: |c| {
            c.ty() == 14
                && c.this_err() == Some("EINVAL")
                && c.step.args().iter().skip(1).any(|p| bad_perm(p))
        },
    },
    Rule {
        id: "xs-at-in-node-path",
        who: Who::Daemon(Kind::XsHost),
        reason: "xs-host accepts `@` only as the first byte of a special watch path \
                 (crates/xs-core/src/path.rs); the references accept it anywhere in a node \
                 path. xenstore.txt: `@` \"should be avoided except to specify special \
                 watches\".",
        diverges: false,
        matches: |c| {
            let p = c.step.path();
            p.len() > 1 && p[1..].contains(&b'@') && c.this_err() == Some("EINVAL")
        },
    },
    Rule {
        id: "xs-commits-where-c-conflicts",
        who: Who::Daemon(Kind::XsHost),
        reason: "xs-host's transactions conflict only on what they relied on \
                 (crates/xs-core/src/store/txn/mod.rs): a blind write, a child created or \
                 removed under a node whose value changed, a listing whose children's \
                 values changed commit. C xenstored fails the commit with EAGAIN on any \
                 change to a node the transaction touched; oxenstored merges some of \
                 those. A serial order exists for what xs-host commits (the \
                 serializability property test).",
        diverges: true,
        matches: |c| c.ty() == 7 && ok(&c.this.reply) && c.other_err() == Some("EAGAIN"),
    },
    Rule {
        id: "oxs-commits-where-xs-conflicts",
        who: Who::Daemon(Kind::OXenstored),
        reason: "oxenstored checks a commit against the lowest common paths of what the \
                 transaction read and wrote, and does not count a path it found missing \
                 (a removal that was a no-op), a listed directory whose children changed \
                 and changed back, or the permissions nodes it created inherited. C \
                 xenstored fails these commits (it rewrites or re-reads the parents), as \
                 xs-host does: the transaction relied on that absence, that listing's \
                 generation, those permissions (xs-host commits a transaction that asked \
                 for no change whatever happened since).",
        diverges: true,
        matches: |c| {
            c.ty() == 7
                && ok(&c.this.reply)
                && c.other_err() == Some("EAGAIN")
                && matches!(c.other_kind, Kind::XsHost | Kind::CXenstored)
        },
    },
    Rule {
        id: "oxs-c417-keep-bad-domids-apart",
        who: Who::Daemon(Kind::OXenstored),
        reason: "Both reference daemons take a SET_PERMS entry whose domid is no domid \
                 (`b-1`), and keep different things: C xenstored 4.17 the text's atoi \
                 (GET_PERMS gives `b-1` back), oxenstored its own integer parse \
                 (`b9223372036854775807`). xs-host refuses the request (see \
                 `oxs-atoi-perms`, `xs-strict-perms`).",
        diverges: true,
        matches: |c| {
            c.ty() == 3
                && c.other_kind == Kind::CXenstored
                && ok(&c.this.reply)
                && ok(&c.other.reply)
                && c.seq.steps[..c.index]
                    .iter()
                    .any(|s| s.ty() == 14 && s.args().iter().skip(1).any(|p| bad_perm(p)))
        },
    },
    Rule {
        id: "oxs-perms-checked-first",
        who: Who::Daemon(Kind::OXenstored),
        reason: "SET_PERMS naming domains that are no numbers a daemon takes, on a path \
                 that does not exist: oxenstored refuses the permissions first (EINVAL), C \
                 xenstored the path (ENOENT).",
        diverges: false,
        matches: |c| {
            c.ty() == 14 && c.this_err() == Some("EINVAL") && c.other_err() == Some("ENOENT")
        },
    },
];
