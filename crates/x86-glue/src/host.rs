//! [`StubHost`]: what the protocol asks of the program (xs-core's [`Host`]) in a stub
//! domain, which has a console and nothing else: `CONTROL memreport` goes to the log, with
//! the heap's use (which only the image's allocator knows).

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use xs_core::XsResult;
use xs_core::protocol::Host;

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
}

impl StubHost {
    /// A host reporting the heap through `heap`.
    pub fn new(heap: fn() -> HeapUse) -> StubHost {
        StubHost { heap, report: None }
    }

    /// The lines to log since the last call.
    pub fn take_lines(&mut self) -> Vec<String> {
        self.report
            .take()
            .map(|r| r.lines().map(String::from).collect())
            .unwrap_or_default()
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
}
