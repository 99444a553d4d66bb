//! The trace file: one readable line per request, reply, watch event, and connection opened
//! or closed (the format is documented in the crate's README).

use std::fmt::{self, Write as _};
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use xs_core::DomId;
use xs_core::wire::{Header, MsgType};

/// `2026-11-21T20:00:00.123456Z`: UTC with microseconds.
pub(crate) struct Timestamp(pub(crate) SystemTime);

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let since = self.0.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = since.as_secs();
        let days = secs / 86_400;
        let rem = secs % 86_400;
        let (y, m, d) = civil_from_days(days);
        write!(
            f,
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:06}Z",
            rem / 3600,
            rem / 60 % 60,
            rem % 60,
            since.subsec_micros()
        )
    }
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's `civil_from_days`,
/// for non-negative day counts).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// Bytes in double quotes, printable ASCII as is and everything else escaped: `\0`, `\\`,
/// `\"`, `\xNN`.
pub(crate) struct Quoted<'a>(pub(crate) &'a [u8]);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_char('"')?;
        let plain = |b: &u8| matches!(b, 0x20..=0x7e) && !matches!(b, b'\\' | b'"');
        let mut rest = self.0;
        while !rest.is_empty() {
            // A run of bytes printed as they are goes out in one write, not one per byte (each
            // write passes through the formatter to the trace file's buffer).
            let run = rest.iter().position(|b| !plain(b)).unwrap_or(rest.len());
            let (text, tail) = rest.split_at(run);
            f.write_str(core::str::from_utf8(text).map_err(|_| fmt::Error)?)?;
            let Some((&b, tail)) = tail.split_first() else {
                break;
            };
            match b {
                0 => f.write_str("\\0")?,
                b'\\' => f.write_str("\\\\")?,
                b'"' => f.write_str("\\\"")?,
                _ => write!(f, "\\x{b:02x}")?,
            }
            rest = tail;
        }
        f.write_char('"')
    }
}

/// The name of a message type, or `TYPE_<n>` for a number that is none.
pub(crate) struct TypeName(pub(crate) u32);

impl fmt::Display for TypeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match MsgType::try_from(self.0) {
            Ok(t) => f.write_str(t.name()),
            Err(n) => write!(f, "TYPE_{n}"),
        }
    }
}

/// The line (without the newline) of a message: `IN` for a request, `OUT` for a reply or a
/// watch event.
pub(crate) struct MessageLine<'a> {
    pub(crate) at: SystemTime,
    pub(crate) conn: u64,
    pub(crate) domid: DomId,
    pub(crate) incoming: bool,
    pub(crate) header: &'a Header,
    pub(crate) payload: &'a [u8],
}

impl fmt::Display for MessageLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} conn={} dom={} {} {} req={} tx={} {}",
            Timestamp(self.at),
            self.conn,
            self.domid,
            if self.incoming { "IN " } else { "OUT" },
            TypeName(self.header.msg_type),
            self.header.req_id,
            self.header.tx_id,
            Quoted(self.payload),
        )
    }
}

/// One line for a connection's life: `OPEN <socket kind>` or `CLOSE <reason>`.
pub(crate) fn conn_line(at: SystemTime, conn: u64, domid: DomId, what: &str) -> String {
    format!("{} conn={conn} dom={domid} {what}", Timestamp(at))
}

/// The open trace file.
#[derive(Debug)]
pub(crate) struct TraceFile {
    path: PathBuf,
    out: BufWriter<File>,
}

impl TraceFile {
    /// Opens (creates, appends to) `path`.
    pub(crate) fn open(path: &Path) -> io::Result<TraceFile> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(TraceFile {
            path: path.to_owned(),
            out: BufWriter::with_capacity(64 * 1024, file),
        })
    }

    /// Where it is.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Writes one line (buffered until [`TraceFile::flush`] or a full buffer).
    pub(crate) fn line(&mut self, line: &str) -> io::Result<()> {
        self.out.write_all(line.as_bytes())?;
        self.out.write_all(b"\n")
    }

    /// Writes the line of a message, formatted straight into the file's buffer (no
    /// allocation, no intermediate copy).
    pub(crate) fn message(&mut self, line: &MessageLine<'_>) -> io::Result<()> {
        writeln!(self.out, "{line}")
    }

    /// Writes a block of text as is.
    pub(crate) fn text(&mut self, text: &str) -> io::Result<()> {
        self.out.write_all(text.as_bytes())
    }

    /// Pushes buffered lines to the file.
    pub(crate) fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps() {
        let timestamp = |t: SystemTime| Timestamp(t).to_string();
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        // 2000-02-29 (a leap day in a century year) 12:34:56.789012
        let t = UNIX_EPOCH + Duration::new(951_827_696, 789_012_345);
        assert_eq!(timestamp(t), "2000-02-29T12:34:56.789012Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_795_291_200);
        assert_eq!(timestamp(t), "2026-11-21T20:00:00.000000Z");
        let t = UNIX_EPOCH + Duration::from_secs(4_102_444_799);
        assert_eq!(timestamp(t), "2099-12-31T23:59:59.000000Z");
    }

    #[test]
    fn quoting() {
        let s = Quoted(b"/a b\0\x01\xff\\\"~\n").to_string();
        assert_eq!(s, r#""/a b\0\x01\xff\\\"~\x0a""#);
    }

    fn message_line(
        at: SystemTime,
        conn: u64,
        domid: DomId,
        incoming: bool,
        header: &Header,
        payload: &[u8],
    ) -> String {
        MessageLine {
            at,
            conn,
            domid,
            incoming,
            header,
            payload,
        }
        .to_string()
    }

    #[test]
    fn request_and_reply_lines() {
        let t = UNIX_EPOCH + Duration::new(1_795_291_200, 123_456_000);
        let h = Header {
            msg_type: MsgType::Read as u32,
            req_id: 5,
            tx_id: 0,
            len: 21,
        };
        assert_eq!(
            message_line(t, 3, DomId(0), true, &h, b"/local/domain/0/name\0"),
            r#"2026-11-21T20:00:00.123456Z conn=3 dom=0 IN  READ req=5 tx=0 "/local/domain/0/name\0""#
        );
        let e = Header {
            msg_type: MsgType::Error as u32,
            req_id: 5,
            tx_id: 2,
            len: 7,
        };
        assert_eq!(
            message_line(t, 3, DomId(7), false, &e, b"ENOENT\0"),
            r#"2026-11-21T20:00:00.123456Z conn=3 dom=7 OUT ERROR req=5 tx=2 "ENOENT\0""#
        );
        let u = Header {
            msg_type: 99,
            req_id: 1,
            tx_id: 0,
            len: 0,
        };
        assert_eq!(
            message_line(t, 1, DomId(0), true, &u, b""),
            r#"2026-11-21T20:00:00.123456Z conn=1 dom=0 IN  TYPE_99 req=1 tx=0 """#
        );
        assert_eq!(
            conn_line(t, 4, DomId(1), "CLOSE eof"),
            "2026-11-21T20:00:00.123456Z conn=4 dom=1 CLOSE eof"
        );
    }

    #[test]
    fn message_lines_in_the_trace_file() {
        let dir = std::env::temp_dir().join(format!("xs-trace-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("trace");
        let _ = std::fs::remove_file(&path);
        let mut t = TraceFile::open(&path).unwrap();
        let at = UNIX_EPOCH + Duration::from_secs(1_795_291_200);
        let h = Header {
            msg_type: MsgType::Write as u32,
            req_id: 1,
            tx_id: 0,
            len: 6,
        };
        let line = |incoming, payload| MessageLine {
            at,
            conn: 1,
            domid: DomId(0),
            incoming,
            header: &h,
            payload,
        };
        t.message(&line(true, b"/a\0xyz")).unwrap();
        t.message(&line(false, b"OK\0")).unwrap();
        t.flush().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(
            text,
            "2026-11-21T20:00:00.000000Z conn=1 dom=0 IN  WRITE req=1 tx=0 \"/a\\0xyz\"\n\
             2026-11-21T20:00:00.000000Z conn=1 dom=0 OUT WRITE req=1 tx=0 \"OK\\0\"\n"
        );
    }
}
