//! [`BoundedLines`]: text lines kept for the program to print, at most a fixed number.
//!
//! The dispatcher and the platform services make log and error lines where they cannot print
//! them; the program takes and prints them now and then. A guest that keeps causing lines
//! between two takes cannot make them grow without bound: the lines beyond the limit are
//! counted, and the count is reported instead. The queue is a fixed-capacity
//! [`heapless::Deque`]: its bound is its type.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

/// At most `KEPT` lines, oldest first, and how many were dropped since the last take.
#[derive(Debug, Default)]
pub struct BoundedLines<const KEPT: usize> {
    lines: heapless::Deque<String, KEPT>,
    dropped: usize,
}

impl<const KEPT: usize> BoundedLines<KEPT> {
    /// Keeps `line`, or counts it as dropped when `KEPT` lines are waiting.
    pub fn push(&mut self, line: String) {
        if self.lines.push_back(line).is_err() {
            self.dropped = self.dropped.saturating_add(1);
        }
    }

    /// Takes the lines kept, oldest first; if any were dropped, a last line
    /// `({count} {dropped})` says how many (`dropped` names them, e.g. "log lines dropped").
    pub fn take(&mut self, dropped: &str) -> Vec<String> {
        let mut out = Vec::with_capacity(self.lines.len().saturating_add(1));
        while let Some(line) = self.lines.pop_front() {
            out.push(line);
        }
        if self.dropped > 0 {
            out.push(format!("({} {dropped})", self.dropped));
            self.dropped = 0;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn keeps_at_most_kept_and_counts_the_rest() {
        let mut lines = BoundedLines::<2>::default();
        assert!(lines.take("lost").is_empty());
        for line in ["a", "b", "c", "d"] {
            lines.push(line.to_string());
        }
        assert_eq!(lines.take("lost"), ["a", "b", "(2 lost)"]);
        // The count starts again; room is made by taking.
        lines.push("e".to_string());
        assert_eq!(lines.take("lost"), ["e"]);
    }
}
