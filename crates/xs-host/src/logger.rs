//! A small `log` backend: one line per record on stderr, `xs-host: LEVEL: message`.

use std::io::Write;

use log::{Level, LevelFilter, Log, Metadata, Record};

struct StderrLogger;

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = match record.level() {
            Level::Error => "error",
            Level::Warn => "warning",
            Level::Info => "info",
            Level::Debug => "debug",
            Level::Trace => "trace",
        };
        // One write per line, so that lines of concurrent writers do not interleave.
        let line = format!("xs-host: {level}: {}\n", record.args());
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

static LOGGER: StderrLogger = StderrLogger;

/// The level for `verbose` repetitions of `-V`: info by default.
pub(crate) fn level_for(verbose: u8) -> LevelFilter {
    match verbose {
        0 => LevelFilter::Info,
        1 => LevelFilter::Debug,
        _ => LevelFilter::Trace,
    }
}

/// Installs the logger (once; later calls only change the level).
pub(crate) fn init(verbose: u8) {
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level_for(verbose));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels() {
        assert_eq!(level_for(0), LevelFilter::Info);
        assert_eq!(level_for(1), LevelFilter::Debug);
        assert_eq!(level_for(2), LevelFilter::Trace);
        assert_eq!(level_for(9), LevelFilter::Trace);
    }
}
