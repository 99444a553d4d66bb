//! Seeded random sequences.
//!
//! Every sequence starts from the same state (the runner cleans up between sequences) with a
//! short prologue: dom0 creates the sandbox `/t` and, with guests, gives them homes and
//! some access to `/t`. Then steps over a small name space (`/t` and up to three levels of
//! `a`, `b`, `c` below it, relative paths, a few nodes outside the sandbox, and invalid
//! paths), so that requests keep meeting each other's nodes, watches and transactions.
//! Everything a request names is picked from small sets for the same reason: tokens,
//! domids, permissions, transaction labels. Malformed requests (payloads without their
//! NUL, extra arguments, unknown types, a header claiming too many bytes) are mixed in.
//!
//! The generator keeps no model of the store: it only remembers which transactions and
//! watches it asked for, to name them again more often than not.

use super::rng::Rng;
use super::script::{Action, Layout, Sequence, Step, Tx};
use crate::wire::strings as nul_joined;

/// Domains named by INTRODUCE, RELEASE and the like that no connection plays, so that
/// releasing one never cuts a guest's connection.
const SPARE_DOMIDS: &[u32] = &[5, 6];

/// Generates sequence `index` of the run seeded `seed`, of about `len` steps after the
/// prologue.
pub fn sequence(seed: u64, index: u64, layout: Layout, len: usize) -> Sequence {
    let mut g = Gen {
        rng: Rng::for_sequence(seed, index),
        layout,
        steps: Vec::new(),
        next_label: 1,
        open: Vec::new(),
        watches: Vec::new(),
    };
    g.prologue();
    for _ in 0..len {
        g.step();
    }
    Sequence {
        seed,
        index,
        layout,
        steps: g.steps,
    }
}

struct Gen {
    rng: Rng,
    layout: Layout,
    steps: Vec<Step>,
    next_label: u32,
    /// Transactions started and not ended: (connection, label).
    open: Vec<(usize, u32)>,
    /// Watches set: (connection, path, token).
    watches: Vec<(usize, Vec<u8>, Vec<u8>)>,
}

impl Gen {
    fn push(&mut self, conn: usize, ty: u32, tx: Tx, payload: Vec<u8>) {
        self.steps.push(Step {
            conn,
            action: Action::Request { ty, tx, payload },
            label: None,
        });
    }

    fn prologue(&mut self) {
        self.push(0, 12, Tx::None, nul_joined(&[b"/t"]));
        if self.layout == Layout::Guests {
            for &d in self.layout.guests() {
                let home = format!("/local/domain/{d}");
                self.push(0, 12, Tx::None, nul_joined(&[home.as_bytes()]));
                let owner = format!("n{d}");
                self.push(
                    0,
                    14,
                    Tx::None,
                    nul_joined(&[home.as_bytes(), owner.as_bytes()]),
                );
            }
            // What the guests may do in the sandbox: mostly both read and write, sometimes
            // less, so that refusals and the errors about missing nodes show too.
            let perms: &[&[u8]] = match self.rng.below(4) {
                0 => &[b"n0", b"r1", b"w2"],
                1 => &[b"r0"],
                _ => &[b"n0", b"b1", b"b2"],
            };
            let mut parts: Vec<&[u8]> = vec![b"/t"];
            parts.extend_from_slice(perms);
            self.push(0, 14, Tx::None, nul_joined(&parts));
        }
    }

    fn conns(&self) -> usize {
        self.layout.domains().len()
    }

    fn name(&mut self) -> &'static [u8] {
        const NAMES: [&[u8]; 3] = [b"a", b"b", b"c"];
        let i = self.rng.below(3) as usize;
        NAMES[i]
    }

    /// A node path in the sandbox: `/t` and up to three levels below.
    fn sandbox_path(&mut self) -> Vec<u8> {
        let mut p = b"/t".to_vec();
        let depth = *self.rng.pick(&[0, 1, 1, 1, 2, 2, 2, 3]);
        for _ in 0..depth {
            p.push(b'/');
            p.extend_from_slice(self.name());
        }
        p
    }

    fn path(&mut self) -> Vec<u8> {
        match self.rng.below(100) {
            0..=79 => self.sandbox_path(),
            80..=84 => {
                // Relative: the connection's home (`/local/domain/<domid>/t/...`).
                let mut p = b"t".to_vec();
                if self.rng.chance(1, 2) {
                    p.push(b'/');
                    p.extend_from_slice(self.name());
                }
                p
            }
            85..=89 => self
                .rng
                .pick(&[
                    &b"/"[..],
                    b"/local",
                    b"/local/domain",
                    b"/local/domain/1",
                    b"/local/domain/2",
                    b"/local/domain/5",
                    b"/local/domain/0",
                ])
                .to_vec(),
            _ => self.bad_path(),
        }
    }

    fn bad_path(&mut self) -> Vec<u8> {
        match self.rng.below(13) {
            0 => Vec::new(),
            12 => {
                // Over 2048 (every quota's and C 4.17's limit) but within 3072.
                let mut p = b"/t/".to_vec();
                p.extend(std::iter::repeat_n(b'z', 2100));
                p
            }
            1 => b"/t/".to_vec(),
            2 => b"//t".to_vec(),
            3 => b"/t//a".to_vec(),
            4 => b"/t/a b".to_vec(),
            5 => b"/t/@x".to_vec(),
            6 => b"/t/\xff".to_vec(),
            7 => b"@introduceDomain".to_vec(),
            8 => b"@other".to_vec(),
            9 => {
                // Longer than any daemon's limit on absolute paths.
                let mut p = b"/t/".to_vec();
                p.extend(std::iter::repeat_n(b'x', 3100));
                p
            }
            10 => {
                let mut p = b"/t/".to_vec();
                p.extend(std::iter::repeat_n(b'y', 1100));
                p
            }
            _ => b"/t/a.b_c-d".to_vec(),
        }
    }

    fn value(&mut self) -> Vec<u8> {
        match self.rng.below(20) {
            0 => Vec::new(),
            1 => b"with\0nul".to_vec(),
            2 => vec![0xff, 0x80, b'\n'],
            3 if self.rng.chance(1, 2) => vec![b'v'; 2100],
            4 => vec![b'w'; 2048 - 5],
            _ => self.rng.pick(&[&b"1"[..], b"x", b"hello", b"42"]).to_vec(),
        }
    }

    fn domid_text(&mut self) -> Vec<u8> {
        match self.rng.below(10) {
            0 => b"".to_vec(),
            1 => b"x".to_vec(),
            2 => b"65536".to_vec(),
            3 => b"0".to_vec(),
            4 | 5 => b"1".to_vec(),
            6 => b"2".to_vec(),
            _ => self.rng.pick(SPARE_DOMIDS).to_string().into_bytes(),
        }
    }

    fn perms(&mut self) -> Vec<Vec<u8>> {
        let n = *self.rng.pick(&[1, 1, 2, 2, 3, 4, 6]);
        (0..n)
            .map(|_| {
                if self.rng.chance(1, 25) {
                    return self
                        .rng
                        .pick(&[&b""[..], b"x1", b"r", b"n99999", b"b-1"])
                        .to_vec();
                }
                let t = *self.rng.pick(b"nrwb");
                let d = *self.rng.pick(&[0, 0, 1, 1, 2, 5, 7, 100]);
                format!("{}{d}", char::from(t)).into_bytes()
            })
            .collect()
    }

    fn token(&mut self) -> Vec<u8> {
        self.rng.pick(&[&b"k1"[..], b"k2", b"k1", b""]).to_vec()
    }

    /// A transaction for a request on `conn`: usually none, else mostly one of its own.
    fn tx(&mut self, conn: usize) -> Tx {
        if self.rng.chance(3, 5) {
            return Tx::None;
        }
        let own: Vec<u32> = self
            .open
            .iter()
            .filter(|&&(c, _)| c == conn)
            .map(|&(_, l)| l)
            .collect();
        match self.rng.below(10) {
            0 if self.next_label > 1 => {
                Tx::Label(1 + self.rng.below(u64::from(self.next_label - 1)) as u32)
            }
            1 => Tx::Raw(0x7fff_0000 + self.rng.below(3) as u32),
            _ if !own.is_empty() => Tx::Label(*self.rng.pick(&own)),
            _ => Tx::None,
        }
    }

    fn step(&mut self) {
        let conn = self.rng.below(self.conns() as u64) as usize;
        let privileged = self.layout.domains()[conn] == 0;
        let w = self.rng.below(1000);
        let tx = self.tx(conn);
        match w {
            0..=139 => {
                let p = self.path();
                self.push(conn, 2, tx, nul_joined(&[&p]));
            }
            140..=299 => {
                let p = self.path();
                let mut payload = nul_joined(&[&p]);
                payload.extend(self.value());
                // Within the protocol's 4096 bytes (longer messages are a transport
                // matter, BADLEN's).
                payload.truncate(4096);
                self.push(conn, 11, tx, payload);
            }
            300..=349 => {
                let p = self.path();
                self.push(conn, 12, tx, nul_joined(&[&p]));
            }
            350..=429 => {
                let p = self.path();
                self.push(conn, 13, tx, nul_joined(&[&p]));
            }
            430..=499 => {
                let p = self.path();
                self.push(conn, 1, tx, nul_joined(&[&p]));
            }
            500..=529 => {
                let p = self.path();
                let off = self
                    .rng
                    .pick(&[&b"0"[..], b"0", b"2", b"3", b"100", b"x"])
                    .to_vec();
                self.push(conn, 22, tx, nul_joined(&[&p, &off]));
            }
            530..=579 => {
                let p = self.path();
                self.push(conn, 3, tx, nul_joined(&[&p]));
            }
            580..=659 => {
                let p = self.path();
                let perms = self.perms();
                let mut parts: Vec<&[u8]> = vec![&p];
                parts.extend(perms.iter().map(Vec::as_slice));
                self.push(conn, 14, tx, nul_joined(&parts));
            }
            660..=719 => {
                let p = if self.rng.chance(1, 8) {
                    self.rng
                        .pick(&[&b"@introduceDomain"[..], b"@releaseDomain"])
                        .to_vec()
                } else {
                    self.path()
                };
                let t = self.token();
                self.watches.push((conn, p.clone(), t.clone()));
                self.push(conn, 4, tx, nul_joined(&[&p, &t]));
            }
            720..=759 => {
                let own: Vec<_> = self
                    .watches
                    .iter()
                    .filter(|w| w.0 == conn)
                    .cloned()
                    .collect();
                let (p, t) = if !own.is_empty() && self.rng.chance(3, 4) {
                    let (_, p, t) = self.rng.pick(&own).clone();
                    (p, t)
                } else {
                    (self.path(), self.token())
                };
                self.push(conn, 5, tx, nul_joined(&[&p, &t]));
            }
            760..=809 => {
                let label = self.next_label;
                self.next_label += 1;
                self.open.push((conn, label));
                let payload = if self.rng.chance(1, 20) {
                    b"x\0".to_vec()
                } else {
                    b"\0".to_vec()
                };
                self.steps.push(Step {
                    conn,
                    action: Action::Request { ty: 6, tx, payload },
                    label: Some(label),
                });
            }
            810..=869 => {
                let own: Vec<u32> = self
                    .open
                    .iter()
                    .filter(|&&(c, _)| c == conn)
                    .map(|&(_, l)| l)
                    .collect();
                let tx = if !own.is_empty() && self.rng.chance(7, 8) {
                    let l = *self.rng.pick(&own);
                    self.open.retain(|&(_, x)| x != l);
                    Tx::Label(l)
                } else {
                    tx
                };
                let how = self
                    .rng
                    .pick(&[&b"T"[..], b"T", b"T", b"F", b"", b"X"])
                    .to_vec();
                self.push(conn, 7, tx, nul_joined(&[&how]));
            }
            870..=884 => {
                let d = self.domid_text();
                self.push(conn, 10, tx, nul_joined(&[&d]));
            }
            885..=899 => {
                let d = self.domid_text();
                self.push(conn, 17, tx, nul_joined(&[&d]));
            }
            900..=904 => {
                // INTRODUCE and RELEASE of domains no connection plays.
                let d = self.rng.pick(SPARE_DOMIDS).to_string().into_bytes();
                if self.rng.chance(1, 2) {
                    let mfn = self.rng.pick(&[&b"4096"[..], b"4096", b"0", b"x"]).to_vec();
                    let port = self.rng.pick(&[&b"7"[..], b"7", b"0"]).to_vec();
                    self.push(conn, 8, tx, nul_joined(&[&d, &mfn, &port]));
                } else {
                    self.push(conn, 9, tx, nul_joined(&[&d]));
                }
            }
            905..=909 => {
                let a = self.rng.pick(SPARE_DOMIDS).to_string().into_bytes();
                let b = self.domid_text();
                if self.rng.chance(1, 2) {
                    self.push(conn, 19, tx, nul_joined(&[&a, &b]));
                } else {
                    self.push(conn, 18, tx, nul_joined(&[&a]));
                }
            }
            990..=994 => {
                self.watches.retain(|w| w.0 != conn);
                self.push(conn, 21, tx, b"\0".to_vec());
            }
            910..=934 => {
                // A bit more DIRECTORY and READ, where the previous steps' effects show.
                let p = self.sandbox_path();
                let t = *self.rng.pick(&[1, 2]);
                self.push(conn, t, tx, nul_joined(&[&p]));
            }
            935..=989 => self.malformed(conn, tx),
            _ => {
                if privileged && self.rng.chance(1, 2) {
                    let ty = *self.rng.pick(&[2, 11, 99]);
                    let len = *self.rng.pick(&[4097, 5000, 0x7fff_ffff]);
                    self.steps.push(Step {
                        conn,
                        action: Action::BadLength { ty, len },
                        label: None,
                    });
                } else {
                    self.malformed(conn, tx);
                }
            }
        }
    }

    /// A request that is wrong in its type or its payload's shape.
    fn malformed(&mut self, conn: usize, tx: Tx) {
        let p = self.sandbox_path();
        match self.rng.below(8) {
            0 => {
                // Types without a meaning to the daemon: WATCH_EVENT and ERROR (only daemons
                // send them), the gap at 20 (XS_RESTRICT, removed), past the end.
                let ty = *self.rng.pick(&[15, 16, 20, 27, 100, 0xffff, 0xffff_ffff]);
                self.push(conn, ty, tx, nul_joined(&[&p]));
            }
            1 => {
                // Types Xen added after 4.17 (GET_FEATURE, GET_QUOTA read; the setters are
                // sent empty so that no daemon changes its settings).
                let ty: u32 = *self.rng.pick(&[23, 24, 25, 26]);
                let payload = if ty.is_multiple_of(2) {
                    Vec::new()
                } else {
                    nul_joined(&[b"1"])
                };
                self.push(conn, ty, tx, payload);
            }
            2 => {
                // The argument without its NUL.
                let ty = *self.rng.pick(&[1, 2, 3, 11, 12, 13, 22]);
                self.push(conn, ty, tx, p);
            }
            3 => {
                // An extra argument.
                let ty = *self.rng.pick(&[1, 2, 3, 12, 13, 10, 17]);
                self.push(conn, ty, tx, nul_joined(&[&p, b"extra"]));
            }
            4 => {
                // An empty payload.
                let ty = *self.rng.pick(&[1, 2, 3, 4, 5, 6, 7, 11, 12, 13, 14, 22]);
                self.push(conn, ty, tx, Vec::new());
            }
            5 => {
                // WATCH and UNWATCH with one argument, or three.
                let ty = *self.rng.pick(&[4, 5]);
                let payload = if self.rng.chance(1, 2) {
                    nul_joined(&[&p])
                } else {
                    nul_joined(&[&p, b"k1", b"k3"])
                };
                self.push(conn, ty, tx, payload);
            }
            6 => {
                // SET_PERMS without any permission.
                self.push(conn, 14, tx, nul_joined(&[&p]));
            }
            _ => {
                // CONTROL is left out (its output is each daemon's own); a bare one only.
                self.push(conn, 0, tx, Vec::new());
            }
        }
    }
}
