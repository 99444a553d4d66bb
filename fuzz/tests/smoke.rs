//! The fuzz harnesses on stable, without coverage guidance: seeded pseudo-random inputs (from
//! `fastrand`) and every saved input under `fuzz/corpus/` and `fuzz/regressions/`, so that
//! the harnesses cannot rot and past crashes stay fixed. Real fuzzing: `cargo +nightly fuzz
//! run <target>`; on stable, a longer run with other inputs than CI's:
//! `XS_FUZZ_SMOKE_RUNS=2000000 XS_FUZZ_SMOKE_SEED=<n> cargo test --release --manifest-path
//! fuzz/Cargo.toml`.

use std::path::Path;

use fastrand::Rng;

/// A generator for one harness: `base`, mixed with `XS_FUZZ_SMOKE_SEED` when set (into the
/// high half, as `base` fills the low one: each seed gives other inputs), so that long runs
/// (`XS_FUZZ_SMOKE_RUNS`) can explore other inputs than CI's.
fn seeded(base: u64) -> Rng {
    let extra = std::env::var("XS_FUZZ_SMOKE_SEED")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    Rng::with_seed(base ^ extra.rotate_left(32))
}

/// Random bytes, fewer than `max` of them.
fn bytes(rng: &mut Rng, max: usize) -> Vec<u8> {
    let mut out = vec![0; rng.usize(..max)];
    rng.fill(&mut out);
    out
}

fn saved_inputs(target: &str) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for dir in ["corpus", "regressions"] {
        let d = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir).join(target);
        if let Ok(entries) = std::fs::read_dir(d) {
            for e in entries.flatten() {
                if let Ok(bytes) = std::fs::read(e.path()) {
                    out.push(bytes);
                }
            }
        }
    }
    out
}

/// Random inputs per harness (scaled per harness by its cost); `XS_FUZZ_SMOKE_RUNS` for a
/// longer run.
fn runs() -> usize {
    std::env::var("XS_FUZZ_SMOKE_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

#[test]
fn wire() {
    let mut rng = seeded(0x5eed_0001);
    for input in saved_inputs("wire") {
        xs_fuzz::wire(&input);
    }
    for _ in 0..runs() {
        xs_fuzz::wire(&bytes(&mut rng, 64));
    }
    // Plausible ones: path-like bytes.
    let alphabet = b"ab/@-_0\0";
    for _ in 0..runs() {
        let len = rng.usize(..24);
        let s: Vec<u8> = (0..len)
            .map(|_| alphabet[rng.usize(..alphabet.len())])
            .collect();
        xs_fuzz::wire(&s);
    }
}

#[test]
fn connection() {
    let mut rng = seeded(0x5eed_0002);
    for input in saved_inputs("connection") {
        xs_fuzz::connection(&input);
    }
    for _ in 0..runs() / 10 {
        // Mostly well-formed requests with random fields, cut into random chunks.
        let mut data = Vec::new();
        for _ in 0..rng.u32(..12) {
            let mut msg = Vec::new();
            let t = rng.u32(..28);
            let payload = match rng.u32(..4) {
                0 => bytes(&mut rng, 40),
                1 => b"/a/b\0".to_vec(),
                2 => b"/a\0tok\0".to_vec(),
                _ => b"data/z\0v".to_vec(),
            };
            xs_core::wire::push_message(&mut msg, t, rng.u32(..), rng.u32(..3), &payload);
            if rng.u32(..20) == 0 {
                msg[12..16].copy_from_slice(&5000u32.to_le_bytes());
            }
            let mut pos = 0;
            while pos < msg.len() {
                let n = rng.usize(1..=40);
                let end = (pos + n).min(msg.len());
                data.push(rng.u8(..3) | (rng.u8(..) & 0xfc));
                data.push((end - pos) as u8);
                data.extend_from_slice(&msg[pos..end]);
                pos = end;
            }
        }
        xs_fuzz::connection(&data);
    }
}

#[test]
fn store_ops() {
    let mut rng = seeded(0x5eed_0003);
    for input in saved_inputs("store_ops") {
        xs_fuzz::store_ops(&xs_fuzz::decode_ops(&input));
    }
    for _ in 0..runs() / 4 {
        xs_fuzz::store_ops(&xs_fuzz::decode_ops(&bytes(&mut rng, 600)));
    }
}

#[test]
fn smoke_inputs_are_not_empty() {
    let mut rng = Rng::with_seed(0x5eed_0003);
    let mut total = 0;
    for _ in 0..100 {
        total += xs_fuzz::decode_ops(&bytes(&mut rng, 600)).len();
    }
    // A seeded run must really exercise the store (hundreds of operations).
    assert!(total > 500, "only {total} operations generated");
}

#[test]
fn ring() {
    let mut rng = seeded(0x5eed_0004);
    for input in saved_inputs("ring") {
        xs_fuzz::ring(&input);
    }
    let mut total = xs_fuzz::RingStats::default();
    for _ in 0..runs() / 4 {
        let steps = xs_fuzz::decode_ring_steps(&bytes(&mut rng, 400));
        total += xs_fuzz::ring_stats(&steps);
    }
    // Mostly well-formed traffic with now and then one hostile step, so that runs get far
    // before the ring breaks.
    for _ in 0..runs() / 4 {
        let mut steps = Vec::new();
        for _ in 0..rng.u32(..40) {
            let step = match rng.u32(..16) {
                0 => xs_fuzz::RingStep::SetField {
                    field: rng.u8(..),
                    value: match rng.u32(..3) {
                        0 => rng.u32(..),
                        1 => 1,
                        _ => rng.u32(..2048),
                    },
                },
                1 => xs_fuzz::RingStep::NudgeField {
                    field: rng.u8(..),
                    delta: rng.i16(-32..32),
                },
                2 => xs_fuzz::RingStep::Scribble {
                    replies: rng.u32(..4) == 0,
                    offset: rng.u16(..),
                    bytes: bytes(&mut rng, 64),
                },
                3 => xs_fuzz::RingStep::Reconnect,
                4 => xs_fuzz::RingStep::Resync,
                5 => xs_fuzz::RingStep::Write(bytes(&mut rng, 40)),
                6 | 7 => xs_fuzz::RingStep::Read(rng.u16(..)),
                8..=11 => xs_fuzz::RingStep::Request {
                    msg_type: rng.u8(..14),
                    req_id: rng.u32(..),
                    tx_id: rng.u8(..8),
                    path: rng.u8(..),
                    value_len: rng.u16(..5000),
                },
                _ => xs_fuzz::RingStep::Pump,
            };
            steps.push(step);
        }
        total += xs_fuzz::ring_stats(&steps);
    }
    // The seeded runs reach every interesting state.
    let t = total;
    eprintln!("ring smoke: {t:?}");
    assert!(
        t.consumed > 100
            && t.produced > 100
            && t.index_faults > 10
            && t.proto_faults > 10
            && t.reconnects > 100,
        "{t:?}"
    );
}

#[test]
fn dispatcher() {
    use xs_fuzz::DispatchStep as S;
    let mut rng = seeded(0x5eed_0005);
    for input in saved_inputs("dispatcher") {
        xs_fuzz::dispatcher(&input);
    }
    let mut total = xs_fuzz::DispatchStats::default();
    for _ in 0..runs() / 20 {
        total += xs_fuzz::dispatcher_stats(&xs_fuzz::decode_dispatch_steps(&bytes(&mut rng, 300)));
    }
    // Mostly the toolstack's and the guests' ordinary life, with now and then a hostile or
    // failing step, so that runs reach introduced, working, broken and dead guests.
    for _ in 0..runs() / 20 {
        let mut steps = Vec::new();
        for _ in 0..rng.u32(..60) {
            let (guest, who) = (rng.u8(..), rng.u8(..));
            steps.push(match rng.u32(..24) {
                0..=2 => S::Introduce {
                    guest,
                    port: rng.u8(1..8),
                },
                3 | 4 => S::HostIntroduce {
                    guest,
                    port: rng.u8(..8),
                },
                5 => S::Release { guest },
                6 => S::HostRelease { guest },
                7 | 8 => S::State {
                    guest,
                    state: rng.u8(..),
                },
                9 => S::Recreate { guest },
                10 => S::Fail {
                    guest,
                    bind: rng.bool(),
                },
                11..=15 => S::Request {
                    who,
                    msg_type: rng.u8(..),
                    path: rng.u8(..),
                    tx_id: rng.u8(..),
                },
                16 => S::Write {
                    who,
                    bytes: bytes(&mut rng, 40),
                },
                17 => S::SetField {
                    who,
                    field: rng.u8(..),
                    value: if rng.bool() {
                        rng.u32(..)
                    } else {
                        rng.u32(..2048)
                    },
                },
                18 => S::Reconnect { who },
                19 | 20 => S::Read {
                    who,
                    len: rng.u16(..),
                },
                21 => S::Event { port: rng.u8(..) },
                22 => S::RunPending,
                _ => S::Local {
                    op: rng.u8(..),
                    path: rng.u8(..),
                },
            });
        }
        total += xs_fuzz::dispatcher_stats(&steps);
    }
    let t = total;
    eprintln!("dispatcher smoke: {t:?}");
    assert!(
        t.introduced > 100 && t.released > 10 && t.died > 10 && t.broken > 10,
        "{t:?}"
    );
}

#[test]
fn boot_args() {
    let mut rng = seeded(0x5eed_0006);
    for input in saved_inputs("boot_args") {
        xs_fuzz::boot_args(&input);
    }
    for _ in 0..runs() {
        xs_fuzz::boot_args(&bytes(&mut rng, 96));
    }
    // Plausible ones: options, values and separators of C xenstored's command line.
    let words: [&[u8]; 16] = [
        b"-E",
        b"-S",
        b"-W",
        b"-Q",
        b"-M",
        b"-V",
        b"-T",
        b"--event",
        b"--priv-domid",
        b"--quota=",
        b"nodes=",
        b"1",
        b"99999999999",
        b"=",
        b" ",
        b"\0",
    ];
    for _ in 0..runs() {
        let mut line = Vec::new();
        for _ in 0..rng.usize(..12) {
            line.extend_from_slice(words[rng.usize(..words.len())]);
            if rng.bool() {
                line.push(b' ');
            }
        }
        xs_fuzz::boot_args(&line);
    }
}

#[test]
fn state_stream() {
    let mut rng = seeded(0x5eed_0007);
    for input in saved_inputs("state") {
        xs_fuzz::state_stream(&input);
    }
    // Restored as written, then cut short at every length (each must be rejected).
    let sample = xs_fuzz::sample_state_stream();
    xs_fuzz::state_stream(&[]);
    for cut in 0..sample.len() {
        assert!(
            xs_core_restore_fails(&sample[..cut]),
            "a stream cut at {cut} bytes was accepted"
        );
    }
    // Every single move of one of the sample's records (repeated, swapped, dropped, moved
    // first), then every pair of the first kinds: each restores consistently or is refused.
    for what in 0..4u8 {
        for i in 0..=u8::MAX {
            xs_fuzz::state_stream(&[what, i]);
        }
    }
    for a in 0..64u8 {
        for b in 0..64u8 {
            xs_fuzz::state_stream(&[a % 4, a / 4, b % 4, b / 4]);
        }
    }
    for _ in 0..runs() / 4 {
        // A few bytes written over the sample at a random place (and read as moves of its
        // records), or random bytes alone.
        let mut input = bytes(&mut rng, 24);
        if rng.bool() {
            let mut head = b"xenstore\0\0\0\x02\0\0\0\0".to_vec();
            head.append(&mut input);
            input = head;
        }
        xs_fuzz::state_stream(&input);
    }
}

fn xs_core_restore_fails(stream: &[u8]) -> bool {
    use xs_core::protocol::{Access, Limits};
    xs_core::state::restore(xs_core::StoreConfig::new([5, 6]), stream, |_, _| {
        (Access::default(), Limits::default())
    })
    .is_err()
}
