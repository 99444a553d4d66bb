//! [`StubHost`]: what the protocol asks of the program (xs-core's [`Host`]) in a stub
//! domain, which has a console and nothing else: `CONTROL memreport` goes to the log, with
//! the heap's use (which only the image's allocator knows); `CONTROL save-state` is taken
//! on for the serving loop, which saves the state at the end of its turn
//! ([`crate::state`]).

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use xs_core::protocol::Host;
use xs_core::{Store, XsResult};

/// The image's heap: bytes in use (allocations, without the allocator's own overhead) and
/// the heap's size.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct HeapUse {
    /// Bytes allocated.
    pub in_use: usize,
    /// The heap's size.
    pub size: usize,
}

/// The stub domain's [`Host`].
#[derive(Debug)]
pub struct StubHost {
    heap: fn() -> HeapUse,
    /// The last `CONTROL memreport` not yet logged: one at a time (a newer one replaces it),
    /// so that requests cannot grow it between two turns of the loop.
    report: Option<String>,
    /// A `CONTROL save-state` is waiting for the loop (several before it runs make one).
    save: bool,
    /// The note on the last `CONTROL save-state`'s file argument not yet logged (one at a
    /// time, as the report).
    save_note: Option<String>,
}

impl StubHost {
    /// A host reporting the heap through `heap`.
    pub fn new(heap: fn() -> HeapUse) -> StubHost {
        StubHost {
            heap,
            report: None,
            save: false,
            save_note: None,
        }
    }

    /// The heap's use now.
    pub fn heap(&self) -> HeapUse {
        (self.heap)()
    }

    /// Whether a `CONTROL save-state` asked for the state to be saved since the last call.
    pub fn take_save_request(&mut self) -> bool {
        core::mem::take(&mut self.save)
    }

    /// The lines to log since the last call.
    pub fn take_lines(&mut self) -> Vec<String> {
        let mut lines: Vec<String> = self
            .report
            .take()
            .map(|r| r.lines().map(String::from).collect())
            .unwrap_or_default();
        lines.extend(self.save_note.take());
        lines
    }
}

impl Host for StubHost {
    /// Logged in either case: a stub domain has no files (C xenstored in Mini-OS has none
    /// either), so a file argument is named in the log and otherwise ignored.
    fn memreport(&mut self, report: &str, file: Option<&[u8]>) -> XsResult<()> {
        let heap = (self.heap)();
        let mut text = String::from(report);
        text.push_str(&format!(
            "heap: {} KiB in use of {} KiB\n",
            heap.in_use / 1024,
            heap.size / 1024
        ));
        if let Some(file) = file {
            text.push_str(&format!(
                "(to the console: no file `{}` in a stub domain)\n",
                String::from_utf8_lossy(file)
            ));
        }
        self.report = Some(text);
        Ok(())
    }

    /// Taken on, answered `OK`: the serving loop saves the state at the end of its turn and
    /// logs the outcome ([`crate::state`]). A stub domain has no files: a file argument is
    /// named in the log and otherwise ignored, as for `memreport`.
    fn save_state(&mut self, _store: &mut Store, file: &[u8]) -> XsResult<()> {
        self.save = true;
        if !file.is_empty() {
            self.save_note = Some(format!(
                "save-state: kept in memory (no file `{}` in a stub domain)",
                String::from_utf8_lossy(file)
            ));
        }
        Ok(())
    }

    fn control_commands(&self) -> Vec<(&'static str, &'static str)> {
        vec![("save-state", "[<file>]")]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heap() -> HeapUse {
        HeapUse {
            in_use: 3 << 20,
            size: 6 << 20,
        }
    }

    #[test]
    fn memreport_is_logged_with_the_heap_once() {
        let mut host = StubHost::new(heap);
        assert!(host.take_lines().is_empty());
        host.memreport("xs memory report\nnodes: 4\n", None)
            .unwrap();
        host.memreport("xs memory report\nnodes: 5\n", Some(b"/tmp/r"))
            .unwrap();
        assert_eq!(
            host.take_lines(),
            [
                "xs memory report",
                "nodes: 5",
                "heap: 3072 KiB in use of 6144 KiB",
                "(to the console: no file `/tmp/r` in a stub domain)",
            ]
        );
        assert!(host.take_lines().is_empty());
    }

    #[test]
    fn save_state_is_taken_on_for_the_loop() {
        let mut host = StubHost::new(heap);
        let mut store = Store::new(xs_core::StoreConfig::new([1, 2])).unwrap();
        assert!(!host.take_save_request());
        host.save_state(&mut store, b"").unwrap();
        host.save_state(&mut store, b"").unwrap();
        assert!(host.take_save_request(), "asked");
        assert!(!host.take_save_request(), "once for both");
        assert!(host.take_lines().is_empty());
        host.save_state(&mut store, b"/var/lib/xs.state").unwrap();
        assert!(host.take_save_request());
        assert_eq!(
            host.take_lines(),
            ["save-state: kept in memory (no file `/var/lib/xs.state` in a stub domain)"]
        );
        assert_eq!(host.control_commands(), [("save-state", "[<file>]")]);
    }
}
