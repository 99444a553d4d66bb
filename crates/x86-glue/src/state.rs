//! `CONTROL save-state` in the stub domain: the whole state (the store, and every served
//! ring's connection: [`Dispatcher::save_state`]) serialized into a buffer on the heap, in
//! the stream a new image would take over ([`Dispatcher::restore`] is its other half).
//!
//! # The flow
//!
//! The request only sets a flag ([`StubHost`] answers `OK` at once): the rings' connections
//! are the dispatcher's, which the protocol's host does not reach, so the save runs at the
//! serving loop's level, at the end of the turn that received the request
//! ([`crate::boot::EventLoop::turn`] calls [`run_requested`]). The answer therefore says the
//! save was taken on, not that it succeeded; the outcome is a console line (the time after
//! `in` is that of the save into the buffer, the second below; then that of the check):
//!
//! ```text
//! xs: state: saved 5120 bytes, 61 records in 84 us; verified: 40 nodes, 3 connections, saved again to the same bytes in 95 us
//! ```
//!
//! 1. The stream's length is measured first by saving into a counter (the first save
//!    carries out what the dispatcher had pending and rebases open transactions; a save
//!    after it changes nothing, so the second writes exactly as much). A stream longer than
//!    [`STATE_MAX`], or one that would not leave [`HEAP_MARGIN`] of the heap free, is
//!    refused, with a line saying why.
//! 2. The buffer is allocated at once at that length (`try_reserve_exact`: an allocation
//!    failure is a refusal, never a panic; out of memory elsewhere is fatal in the image),
//!    and the state saved into it; the sink refuses to grow it.
//! 3. Verification, when the heap has room for a second store (twice the heap in use before
//!    the buffer, as a restored store's vectors may briefly hold twice their length while
//!    they grow; otherwise the line says it was skipped and why): the stream is restored
//!    into a scratch store (`xs_core::state::restore`, which checks every record), which
//!    is saved again, with its connections as restored, into a sink that compares byte for
//!    byte with the buffer instead of storing anything.
//! 4. The buffer is freed. Nothing takes it over yet, and keeping a copy of the store would
//!    halve the heap the guests may use; once a handover exists, it is what would be
//!    handed over.
//!
//! The save works on a [`StubState`] (a trait object: the code is in the image once): the
//! stub's dispatcher, or the image's self-test, which serves its rings by hand.
//!
//! # Not done
//!
//! The handover itself (a kexec of a new image with the buffer and the map area passed on,
//! the new image then calling [`Dispatcher::restore`]) is not implemented.

use alloc::vec::Vec;
use core::fmt;

use xs_core::Store;
use xs_core::protocol::{Access, Limits};
use xs_core::state::{
    self, Global, RestoredConnection, SaveError, SaveOptions, SaveStats, SavedConnection, Sink,
    StateError,
};
use xs_serve::{Dispatcher, Services};

use crate::host::StubHost;

/// Longest state stream saved (bytes).
pub const STATE_MAX: usize = 16 << 20;

/// Heap left free besides what a save and its verification take (bytes).
pub const HEAP_MARGIN: usize = 512 << 10;

/// A save that was done.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Saved {
    /// Bytes in the stream.
    pub bytes: usize,
    /// Records in the stream.
    pub records: u64,
    /// Time the save into the buffer took (ns), if the platform has a clock.
    pub save_ns: Option<u64>,
    /// What the verification found.
    pub verified: Verified,
}

/// The verification of a saved stream.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Verified {
    /// Restored and saved again to the same bytes.
    Same {
        /// Nodes of the restored store.
        nodes: usize,
        /// Connections restored.
        connections: usize,
        /// Time the restore and second save took (ns), if the platform has a clock.
        ns: Option<u64>,
    },
    /// Not verified: the heap has no room for a second store.
    Skipped {
        /// Heap needed for it (bytes).
        need: usize,
        /// Heap free (bytes).
        free: usize,
    },
}

/// Why no state was saved, or why the one saved does not verify.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Refused {
    /// The stream would be longer than [`STATE_MAX`].
    TooLarge {
        /// Its length.
        bytes: usize,
    },
    /// The heap has no room for the buffer.
    NoMemory {
        /// The buffer's length.
        bytes: usize,
        /// Heap free (bytes).
        free: usize,
    },
    /// Saving failed (the field that does not fit the stream, or the state changed between
    /// measuring and saving).
    Failed(&'static str),
    /// The saved stream did not restore.
    Unreadable(StateError),
    /// The restored state saved to other bytes: the first difference.
    Differs {
        /// Offset of the first difference (or of the end of the shorter stream).
        at: usize,
        /// Length of the stream saved again.
        again: usize,
        /// Length of the stream saved.
        bytes: usize,
    },
}

impl fmt::Display for Saved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "saved {} bytes, {} records", self.bytes, self.records)?;
        if let Some(ns) = self.save_ns {
            write!(f, " in {} us", ns / 1000)?;
        }
        match self.verified {
            Verified::Same {
                nodes,
                connections,
                ns,
            } => {
                write!(
                    f,
                    "; verified: {nodes} nodes, {connections} connections, saved again to \
                     the same bytes"
                )?;
                if let Some(ns) = ns {
                    write!(f, " in {} us", ns / 1000)?;
                }
                Ok(())
            }
            Verified::Skipped { need, free } => write!(
                f,
                "; not verified: a second store needs about {} KiB of heap, {} KiB free",
                need / 1024,
                free / 1024
            ),
        }
    }
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refused::TooLarge { bytes } => write!(
                f,
                "not saved: the stream would take {bytes} bytes, more than {STATE_MAX}"
            ),
            Refused::NoMemory { bytes, free } => write!(
                f,
                "not saved: no heap for a buffer of {bytes} bytes ({} KiB free, {} KiB kept \
                 free)",
                free / 1024,
                HEAP_MARGIN / 1024
            ),
            Refused::Failed(what) => write!(f, "not saved: {what}"),
            Refused::Unreadable(e) => write!(f, "saved, but it does not verify: {e}"),
            Refused::Differs { at, again, bytes } => write!(
                f,
                "saved, but it does not verify: saved again it differs at byte {at} \
                 ({again} bytes, first {bytes})"
            ),
        }
    }
}

/// Where the stub's saves go: one sink type for measuring, filling the buffer and comparing,
/// so that the stream writer (generic over its sink) is in the image once.
pub struct StateSink<'a>(Mode<'a>);

enum Mode<'a> {
    /// Counts the bytes.
    Count(usize),
    /// Appends to a buffer within the capacity it was given, never growing it.
    Fill(&'a mut Vec<u8>),
    /// Compares with a stream, storing nothing.
    Compare {
        expected: &'a [u8],
        at: usize,
        /// The first difference.
        differs: Option<usize>,
    },
}

impl fmt::Debug for StateSink<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            Mode::Count(_) => "StateSink::Count",
            Mode::Fill(_) => "StateSink::Fill",
            Mode::Compare { .. } => "StateSink::Compare",
        })
    }
}

impl Sink for StateSink<'_> {
    type Error = &'static str;

    fn write(&mut self, bytes: &[u8]) -> Result<(), &'static str> {
        match &mut self.0 {
            Mode::Count(n) => *n = n.saturating_add(bytes.len()),
            Mode::Fill(buf) => {
                let room = buf.capacity().saturating_sub(buf.len());
                if bytes.len() > room {
                    return Err("the state grew between measuring and saving it");
                }
                buf.extend_from_slice(bytes);
            }
            Mode::Compare {
                expected,
                at,
                differs,
            } => {
                if differs.is_none() {
                    let end = at.saturating_add(bytes.len());
                    match expected.get(*at..end.min(expected.len())) {
                        Some(e) if e == bytes => {}
                        Some(e) => {
                            let first = e.iter().zip(bytes).position(|(a, b)| a != b);
                            *differs = Some(at.saturating_add(first.unwrap_or(e.len())));
                        }
                        None => *differs = Some(expected.len()),
                    }
                }
                *at = at.saturating_add(bytes.len());
            }
        }
        Ok(())
    }
}

/// What the save needs of the program: its whole state written to a sink, its store (for
/// the configuration a restore is given), its [`StubHost`] (the request flag, the heap) and
/// a clock. Implemented for the stub's dispatcher; a trait object, so that the save is in
/// the image once whatever serves the rings (the image's self-test serves them by hand).
pub trait StubState {
    /// Writes the whole state ([`Dispatcher::save_state`] with no connections of the
    /// program's: the stub has no sockets).
    fn save_state(
        &mut self,
        sink: &mut StateSink<'_>,
    ) -> Result<SaveStats, SaveError<&'static str>>;

    /// The store.
    fn store(&self) -> &Store;

    /// The host the protocol calls.
    fn stub_host(&mut self) -> &mut StubHost;

    /// Monotonic time in nanoseconds, if there is a clock.
    fn now_ns(&mut self) -> Option<u64>;
}

impl<S: Services> StubState for Dispatcher<S, StubHost> {
    fn save_state(
        &mut self,
        sink: &mut StateSink<'_>,
    ) -> Result<SaveStats, SaveError<&'static str>> {
        Dispatcher::save_state(self, Global::default(), &[], SaveOptions::default(), sink)
    }

    fn store(&self) -> &Store {
        Dispatcher::store(self)
    }

    fn stub_host(&mut self) -> &mut StubHost {
        self.host_mut()
    }

    fn now_ns(&mut self) -> Option<u64> {
        self.services_mut().now_ns()
    }
}

fn save_error(e: SaveError<&'static str>) -> Refused {
    match e {
        SaveError::TooLarge(what) | SaveError::Sink(what) => Refused::Failed(what),
    }
}

/// The time since `start` (both from [`StubState::now_ns`]).
fn since(stub: &mut dyn StubState, start: Option<u64>) -> Option<u64> {
    let now = stub.now_ns()?;
    Some(now.saturating_sub(start?))
}

/// Saves the whole state into a heap buffer, verifies it (see the module docs), and returns
/// the buffer with what was done.
pub fn save_to_buffer(stub: &mut dyn StubState) -> Result<(Vec<u8>, Saved), Refused> {
    let before = stub.stub_host().heap();
    let mut counter = StateSink(Mode::Count(0));
    stub.save_state(&mut counter).map_err(save_error)?;
    let StateSink(Mode::Count(bytes)) = counter else {
        return Err(Refused::Failed("the counter changed kind"));
    };
    if bytes > STATE_MAX {
        return Err(Refused::TooLarge { bytes });
    }
    let free = before.size.saturating_sub(before.in_use);
    if bytes.saturating_add(HEAP_MARGIN) > free {
        return Err(Refused::NoMemory { bytes, free });
    }
    let mut buf = Vec::new();
    if buf.try_reserve_exact(bytes).is_err() {
        return Err(Refused::NoMemory { bytes, free });
    }
    let start = stub.now_ns();
    let stats = stub
        .save_state(&mut StateSink(Mode::Fill(&mut buf)))
        .map_err(save_error)?;
    let save_ns = since(stub, start);
    let verified = verify(stub, &buf, before.in_use)?;
    let saved = Saved {
        bytes: buf.len(),
        records: stats.records,
        save_ns,
        verified,
    };
    Ok((buf, saved))
}

/// Restores `stream` into a scratch store and saves that again, comparing (see the module
/// docs); skipped without room for a second store of about `in_use` bytes.
fn verify(stub: &mut dyn StubState, stream: &[u8], in_use: usize) -> Result<Verified, Refused> {
    let heap = stub.stub_host().heap();
    let free = heap.size.saturating_sub(heap.in_use);
    let need = in_use.saturating_mul(2).saturating_add(HEAP_MARGIN);
    if need > free {
        return Ok(Verified::Skipped { need, free });
    }
    let start = stub.now_ns();
    let config = stub.store().config().clone();
    let restored = state::restore(config, stream, |_, _| {
        (Access::default(), Limits::default())
    })
    .map_err(Refused::Unreadable)?;
    let mut scratch = restored.store;
    let conns: Vec<SavedConnection<'_>> = restored
        .connections
        .iter()
        .map(RestoredConnection::as_saved)
        .collect();
    let mut compare = StateSink(Mode::Compare {
        expected: stream,
        at: 0,
        differs: None,
    });
    let global = restored.global.unwrap_or_default();
    state::save(
        &mut scratch,
        global,
        &conns,
        SaveOptions::default(),
        &mut compare,
    )
    .map_err(save_error)?;
    if let StateSink(Mode::Compare { at, differs, .. }) = compare {
        let differs = match differs {
            Some(first) => Some(first),
            None if at != stream.len() => Some(at.min(stream.len())),
            None => None,
        };
        if let Some(first) = differs {
            return Err(Refused::Differs {
                at: first,
                again: at,
                bytes: stream.len(),
            });
        }
    }
    let (nodes, connections) = (scratch.node_count(), conns.len());
    // The scratch store is freed before the time is taken, as part of the verification.
    drop(conns);
    drop(restored.connections);
    drop(scratch);
    Ok(Verified::Same {
        nodes,
        connections,
        ns: since(stub, start),
    })
}

/// If a `CONTROL save-state` asked for it ([`StubHost::take_save_request`]), saves the
/// state, verifies it and frees it, writing the outcome to `log` as one line starting
/// `xs: state: `; returns the outcome.
pub fn run_requested(
    stub: &mut dyn StubState,
    log: &mut dyn fmt::Write,
) -> Option<Result<Saved, Refused>> {
    if !stub.stub_host().take_save_request() {
        return None;
    }
    // The buffer is freed here: the guests keep the whole heap.
    let outcome = save_to_buffer(stub).map(|(_buf, saved)| saved);
    let _ = match &outcome {
        Ok(saved) => writeln!(log, "xs: state: {saved}"),
        Err(refused) => writeln!(log, "xs: state: {refused}"),
    };
    Some(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compare(expected: &[u8], writes: &[&[u8]]) -> (Option<usize>, usize) {
        let mut c = StateSink(Mode::Compare {
            expected,
            at: 0,
            differs: None,
        });
        for w in writes {
            c.write(w).unwrap();
        }
        match c.0 {
            Mode::Compare { at, differs, .. } => (differs, at),
            _ => unreachable!(),
        }
    }

    #[test]
    fn the_comparing_sink_finds_the_first_difference() {
        assert_eq!(compare(b"abcdef", &[b"abc", b"def"]), (None, 6));
        assert_eq!(compare(b"abcdef", &[b"abc", b"dXf"]), (Some(4), 6));
        assert_eq!(compare(b"abcdef", &[b"abcdefg"]), (Some(6), 7));
        assert_eq!(compare(b"abc", &[b"ab", b"cd"]), (Some(3), 4));
        assert_eq!(compare(b"abcdef", &[b"abc"]), (None, 3));
    }

    #[test]
    fn the_fixed_sink_never_grows() {
        let mut buf = Vec::with_capacity(4);
        let cap = buf.capacity();
        let mut sink = StateSink(Mode::Fill(&mut buf));
        assert!(sink.write(b"ab").is_ok());
        assert!(sink.write(&[0; 64]).is_err());
        assert_eq!(buf.capacity(), cap);
        assert_eq!(buf, b"ab");
    }
}
