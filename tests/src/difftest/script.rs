//! A sequence of requests as data, and its script form: one step a line, readable and
//! parsed back for replay (`xs-difftest --replay FILE`).
//!
//! ```text
//! # xs-difftest seed 7 sequence 3
//! layout guests
//! c0 MKDIR - "/t"
//! c0 TRANSACTION_START - "" as T1
//! c2 WRITE T1 "/t/a\0hello"
//! c1 #99 - "x"
//! c0 BADLEN READ 5000
//! ```
//!
//! A line is the connection (`c<N>`, see [`Layout`]), the message type (its `xs_wire.h`
//! name, or `#<number>` for one without a name), the transaction (`-` for none, `T<n>` for
//! the transaction the step labelled `as T<n>` started, `#<number>` for a raw id), and the
//! payload as a quoted string (`\0`, `\n`, `\\`, `\"`, `\xNN` escapes, and `\{N*c}` for `N`
//! bytes `c`). `BADLEN TYPE N`
//! sends a header claiming `N` payload bytes and nothing more. `#` starts a comment.

use std::fmt::{self, Write as _};

/// Message type numbers and names (`xs_wire.h`, Xen 4.17, plus the later 23..26).
pub const TYPES: &[(u32, &str)] = &[
    (0, "CONTROL"),
    (1, "DIRECTORY"),
    (2, "READ"),
    (3, "GET_PERMS"),
    (4, "WATCH"),
    (5, "UNWATCH"),
    (6, "TRANSACTION_START"),
    (7, "TRANSACTION_END"),
    (8, "INTRODUCE"),
    (9, "RELEASE"),
    (10, "GET_DOMAIN_PATH"),
    (11, "WRITE"),
    (12, "MKDIR"),
    (13, "RM"),
    (14, "SET_PERMS"),
    (15, "WATCH_EVENT"),
    (16, "ERROR"),
    (17, "IS_DOMAIN_INTRODUCED"),
    (18, "RESUME"),
    (19, "SET_TARGET"),
    (21, "RESET_WATCHES"),
    (22, "DIRECTORY_PART"),
    (23, "GET_FEATURE"),
    (24, "SET_FEATURE"),
    (25, "GET_QUOTA"),
    (26, "SET_QUOTA"),
];

/// The name of message type `ty`, if it has one.
pub fn type_name(ty: u32) -> Option<&'static str> {
    TYPES.iter().find(|&&(t, _)| t == ty).map(|&(_, n)| n)
}

/// Message type `name` (or `#<number>`).
pub fn type_of(name: &str) -> Option<u32> {
    if let Some(n) = name.strip_prefix('#') {
        return n.parse().ok();
    }
    TYPES.iter().find(|&&(_, n)| n == name).map(|&(t, _)| t)
}

/// `ty` as a script shows it.
pub fn show_type(ty: u32) -> String {
    type_name(ty).map_or_else(|| format!("#{ty}"), str::to_owned)
}

/// Who the connections are.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Layout {
    /// `c0`, `c1`, `c2`: dom0 on the main socket. Every daemon can run it.
    Dom0,
    /// `c0`, `c1`: dom0; `c2`: domain 1; `c3`: domain 2 (introduced before the first
    /// step). Only daemons that can act as a guest run it (xs-host through its per-domain
    /// sockets, C xenstored through the ring page).
    Guests,
}

impl Layout {
    /// The domain of each connection.
    pub fn domains(self) -> &'static [u32] {
        match self {
            Layout::Dom0 => &[0, 0, 0],
            Layout::Guests => &[0, 0, 1, 2],
        }
    }

    /// The guest domains introduced before the first step.
    pub fn guests(self) -> &'static [u32] {
        match self {
            Layout::Dom0 => &[],
            Layout::Guests => &[1, 2],
        }
    }

    fn name(self) -> &'static str {
        match self {
            Layout::Dom0 => "dom0",
            Layout::Guests => "guests",
        }
    }
}

/// The transaction a request names.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Tx {
    /// None (`tx_id` 0).
    None,
    /// The transaction started by the step labelled `as T<n>` (if that start failed, or
    /// the step is gone, a number no daemon hands out).
    Label(u32),
    /// This number.
    Raw(u32),
}

/// What a step sends.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Action {
    /// A whole message.
    Request {
        /// Message type.
        ty: u32,
        /// Its transaction.
        tx: Tx,
        /// Payload bytes.
        payload: Vec<u8>,
    },
    /// A header of type `ty` claiming `len` bytes (more than the protocol's 4096), and no
    /// payload: the connection is expected to be dropped.
    BadLength {
        /// Message type.
        ty: u32,
        /// The claimed length.
        len: u32,
    },
}

/// One request on one connection.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Step {
    /// Index of the connection ([`Layout::domains`]).
    pub conn: usize,
    /// What it sends.
    pub action: Action,
    /// For `TRANSACTION_START`: the label later steps name the transaction by.
    pub label: Option<u32>,
}

impl Step {
    /// The request's type.
    pub fn ty(&self) -> u32 {
        match self.action {
            Action::Request { ty, .. } | Action::BadLength { ty, .. } => ty,
        }
    }

    /// The payload's NUL-separated parts (an unterminated tail included).
    pub fn args(&self) -> Vec<&[u8]> {
        match &self.action {
            Action::Request { payload, .. } => {
                let p = payload.strip_suffix(&[0]).unwrap_or(payload);
                p.split(|&b| b == 0).collect()
            }
            Action::BadLength { .. } => Vec::new(),
        }
    }

    /// The first argument (usually the path).
    pub fn path(&self) -> &[u8] {
        self.args().first().copied().unwrap_or_default()
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.action {
            Action::Request { ty, tx, payload } => {
                let tx = match tx {
                    Tx::None => "-".to_owned(),
                    Tx::Label(n) => format!("T{n}"),
                    Tx::Raw(n) => format!("#{n}"),
                };
                write!(
                    f,
                    "c{} {} {tx} {}",
                    self.conn,
                    show_type(*ty),
                    quote(payload)
                )?;
            }
            Action::BadLength { ty, len } => {
                write!(f, "c{} BADLEN {} {len}", self.conn, show_type(*ty))?;
            }
        }
        if let Some(l) = self.label {
            write!(f, " as T{l}")?;
        }
        Ok(())
    }
}

/// A generated (or replayed) sequence.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Sequence {
    /// The run's seed.
    pub seed: u64,
    /// Which sequence of the run (the generator's state depends on `seed` and this only).
    pub index: u64,
    /// Who the connections are.
    pub layout: Layout,
    /// The steps, in order.
    pub steps: Vec<Step>,
}

impl Sequence {
    /// The script (parsed back by [`Sequence::parse`]).
    pub fn script(&self) -> String {
        let mut s = format!(
            "# xs-difftest seed {} sequence {}\nlayout {}\n",
            self.seed,
            self.index,
            self.layout.name()
        );
        for step in &self.steps {
            let _ = writeln!(s, "{step}");
        }
        s
    }

    /// Parses a script.
    pub fn parse(text: &str) -> Result<Sequence, String> {
        let mut seq = Sequence {
            seed: 0,
            index: 0,
            layout: Layout::Dom0,
            steps: Vec::new(),
        };
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            let err = |what: &str| format!("line {}: {what}: {line}", n + 1);
            if let Some(c) = line.strip_prefix("# xs-difftest seed ") {
                let mut w = c.split_whitespace();
                seq.seed = w.next().and_then(|s| s.parse().ok()).unwrap_or(0);
                seq.index = w.nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
                continue;
            }
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(l) = line.strip_prefix("layout ") {
                seq.layout = match l.trim() {
                    "dom0" => Layout::Dom0,
                    "guests" => Layout::Guests,
                    _ => return Err(err("unknown layout")),
                };
                continue;
            }
            seq.steps.push(parse_step(line).map_err(|e| err(&e))?);
        }
        for s in &seq.steps {
            if s.conn >= seq.layout.domains().len() {
                return Err(format!("connection c{} not in layout", s.conn));
            }
        }
        Ok(seq)
    }
}

fn parse_step(line: &str) -> Result<Step, String> {
    let (conn, rest) = line.split_once(' ').ok_or("no type")?;
    let conn = conn
        .strip_prefix('c')
        .and_then(|c| c.parse().ok())
        .ok_or("bad connection")?;
    let (ty, rest) = rest.split_once(' ').ok_or("no transaction")?;
    if ty == "BADLEN" {
        let (ty, len) = rest.split_once(' ').ok_or("BADLEN TYPE LEN")?;
        return Ok(Step {
            conn,
            action: Action::BadLength {
                ty: type_of(ty).ok_or("bad type")?,
                len: len.trim().parse().map_err(|_| "bad length")?,
            },
            label: None,
        });
    }
    let ty = type_of(ty).ok_or("bad type")?;
    let (tx, rest) = rest.split_once(' ').ok_or("no payload")?;
    let tx = match tx {
        "-" => Tx::None,
        t if t.starts_with('T') => Tx::Label(t[1..].parse().map_err(|_| "bad label")?),
        t if t.starts_with('#') => Tx::Raw(t[1..].parse().map_err(|_| "bad id")?),
        _ => return Err("bad transaction".into()),
    };
    let (payload, rest) = unquote(rest)?;
    let label = match rest.trim() {
        "" => None,
        r => Some(
            r.strip_prefix("as T")
                .and_then(|l| l.parse().ok())
                .ok_or("trailing text")?,
        ),
    };
    Ok(Step {
        conn,
        action: Action::Request { ty, tx, payload },
        label,
    })
}

/// `bytes` as a quoted string with escapes; a run of more than 8 of one printable byte `c`
/// is written `\{N*c}`.
pub fn quote(bytes: &[u8]) -> String {
    let mut s = String::from("\"");
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let run = bytes[i..].iter().take_while(|&&x| x == b).count();
        i += 1;
        if run > 8 && b.is_ascii_alphanumeric() {
            let _ = write!(s, "\\{{{run}*{}}}", char::from(b));
            i += run - 1;
            continue;
        }
        match b {
            0 => s.push_str("\\0"),
            b'\n' => s.push_str("\\n"),
            b'\\' => s.push_str("\\\\"),
            b'"' => s.push_str("\\\""),
            0x20..=0x7e => s.push(char::from(b)),
            _ => {
                let _ = write!(s, "\\x{b:02x}");
            }
        }
    }
    s.push('"');
    s
}

/// The quoted string at the start of `text`, and what follows it.
fn unquote(text: &str) -> Result<(Vec<u8>, &str), String> {
    let body = text.strip_prefix('"').ok_or("payload not quoted")?;
    let b = body.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' => return Ok((out, &body[i + 1..])),
            b'\\' => {
                let e = *b.get(i + 1).ok_or("dangling escape")?;
                i += 2;
                match e {
                    b'0' => out.push(0),
                    b'{' => {
                        let end = body[i..].find('}').ok_or("unterminated \\{")? + i;
                        let (n, c) = body[i..end].split_once('*').ok_or("\\{N*c}")?;
                        let n: usize = n.parse().map_err(|_| "bad count in \\{N*c}")?;
                        let &[c] = c.as_bytes() else {
                            return Err("one byte in \\{N*c}".into());
                        };
                        out.extend(std::iter::repeat_n(c, n));
                        i = end + 1;
                    }
                    b'n' => out.push(b'\n'),
                    b'\\' | b'"' => out.push(e),
                    b'x' => {
                        let h = body.get(i..i + 2).ok_or("short \\x escape")?;
                        out.push(u8::from_str_radix(h, 16).map_err(|_| "bad \\x escape")?);
                        i += 2;
                    }
                    _ => return Err(format!("unknown escape \\{}", char::from(e))),
                }
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    Err("unterminated payload".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_round_trips() {
        let seq = Sequence {
            seed: 7,
            index: 3,
            layout: Layout::Guests,
            steps: vec![
                Step {
                    conn: 0,
                    action: Action::Request {
                        ty: 6,
                        tx: Tx::None,
                        payload: b"\0".to_vec(),
                    },
                    label: Some(1),
                },
                Step {
                    conn: 2,
                    action: Action::Request {
                        ty: 11,
                        tx: Tx::Label(1),
                        payload: [&b"/t/a\0v \"q\" \\ \n\xff"[..], &[b'x'; 3000]].concat(),
                    },
                    label: None,
                },
                Step {
                    conn: 1,
                    action: Action::Request {
                        ty: 99,
                        tx: Tx::Raw(12345),
                        payload: Vec::new(),
                    },
                    label: None,
                },
                Step {
                    conn: 0,
                    action: Action::BadLength { ty: 2, len: 5000 },
                    label: None,
                },
            ],
        };
        let text = seq.script();
        assert_eq!(Sequence::parse(&text), Ok(seq), "{text}");
    }
}
