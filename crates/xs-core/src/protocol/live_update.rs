//! `CONTROL live-update`: its sub-commands as C xenstored takes them and Xen's
//! `xenstore-control live-update` sends them (`tools/xenstored/lu.c`, `control.c`;
//! `docs/misc/xenstore.txt`), parsed here once for every program that updates itself.
//!
//! The protocol, one `CONTROL` request per step, on one connection (the session's):
//!
//! 1. `-f <file>` names the new daemon binary (a daemon), or `-b <size>` then `-d <size>`
//!    chunks upload it (a stub domain's kernel); either begins the session (one at a time);
//! 2. `-c <cmdline>` (optional) gives its command line;
//! 3. `-s [-t <secs>] [-F] [-v <version>]` starts the update: the answer (`OK`, or an error
//!    text) comes once it happened or failed, and `BUSY` may ask the client to send `-s`
//!    again (Xen's client does, once a second, until its timeout);
//! 4. `-a` aborts the session.
//!
//! Every answer is a `CONTROL` reply whose text is `OK` or says what went wrong; only a
//! malformed request gets `EINVAL`. What each step does is the program's
//! ([`super::Host::live_update`]); a `-s` that must wait is held unanswered
//! ([`super::Host::hold_request`]), as C delays it.

use crate::wire::{Args, Header, MsgType, u32_arg};

/// The command name.
pub const COMMAND: &[u8] = b"live-update";

/// The migration stream version `-v` defaults to (and the only one written here).
pub const STATE_VERSION: u32 = 2;

/// A `CONTROL live-update` sub-command.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum LiveUpdate<'a> {
    /// `-f <file>`: the new binary, by its path.
    Binary(&'a [u8]),
    /// `-b <size>`: a binary of `size` bytes is uploaded next.
    Upload(u32),
    /// `-d <size> <bytes>`: a chunk of the uploaded binary.
    Chunk(&'a [u8]),
    /// `-c <cmdline>`: the new binary's command line (words separated by blanks).
    Cmdline(&'a [u8]),
    /// `-s [-t <secs>] [-F] [-v <version>]`: start.
    Start {
        /// `-F`: update even with transactions open, once `timeout` is over (or at once
        /// if all of them are at least `timeout` seconds old).
        force: bool,
        /// `-t`: seconds to wait for transactions to end.
        timeout: u32,
        /// `-v`: the stream version to write.
        version: u32,
    },
    /// `-a`: abort the session.
    Abort,
}

impl<'a> LiveUpdate<'a> {
    /// Parses the parameters after `live-update` in a `CONTROL` payload (`params`: the
    /// payload past `live-update\0`), as C's `do_control_lu` does; `None` for what C answers
    /// `EINVAL`.
    pub fn parse(params: &'a [u8]) -> Option<LiveUpdate<'a>> {
        // `-d <size>\0<bytes>\0`: the chunk may hold NULs, so it is taken by its size.
        if let Some(rest) = params.strip_prefix(b"-d\0") {
            let nul = rest.iter().position(|&b| b == 0)?;
            let size = u32_arg(rest.get(..nul)?).ok()? as usize;
            let data = rest.get(nul.saturating_add(1)..)?;
            return match data.split_at_checked(size)? {
                (chunk, [0]) => Some(LiveUpdate::Chunk(chunk)),
                _ => None,
            };
        }
        let args = Args(params);
        let mut strings = args.strings();
        let first = strings.next()?;
        let rest: alloc::vec::Vec<&[u8]> = strings.collect();
        match (first, rest.as_slice()) {
            (b"-a", []) => Some(LiveUpdate::Abort),
            (b"-c", [cmdline]) => Some(LiveUpdate::Cmdline(cmdline)),
            (b"-f", [file]) => Some(LiveUpdate::Binary(file)),
            (b"-b", [size]) => Some(LiveUpdate::Upload(u32_arg(size).ok()?)),
            (b"-s", flags) => {
                let (mut force, mut timeout, mut version) = (false, 0, STATE_VERSION);
                let mut it = flags.iter();
                while let Some(&flag) = it.next() {
                    match flag {
                        b"-F" => force = true,
                        b"-t" => timeout = u32_arg(it.next()?).ok()?,
                        b"-v" => version = u32_arg(it.next()?).ok()?,
                        _ => return None,
                    }
                }
                Some(LiveUpdate::Start {
                    force,
                    timeout,
                    version,
                })
            }
            _ => None,
        }
    }

    /// The sub-command of a request, if it is a well-formed `CONTROL live-update`.
    pub fn of_request(header: &Header, payload: &'a [u8]) -> Option<LiveUpdate<'a>> {
        if header.kind() != Some(MsgType::Control) {
            return None;
        }
        let params = payload.strip_prefix(COMMAND)?.strip_prefix(b"\0")?;
        LiveUpdate::parse(params)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn as_xenstore_control_sends_them() {
        assert_eq!(
            LiveUpdate::parse(b"-f\0/usr/sbin/xs-host\0"),
            Some(LiveUpdate::Binary(b"/usr/sbin/xs-host"))
        );
        assert_eq!(
            LiveUpdate::parse(b"-c\0-N -V\0"),
            Some(LiveUpdate::Cmdline(b"-N -V"))
        );
        assert_eq!(
            LiveUpdate::parse(b"-s\0-t\x0060\0"),
            Some(LiveUpdate::Start {
                force: false,
                timeout: 60,
                version: 2
            })
        );
        assert_eq!(
            LiveUpdate::parse(b"-s\0-t\x005\0-F\0-v\x001\0"),
            Some(LiveUpdate::Start {
                force: true,
                timeout: 5,
                version: 1
            })
        );
        assert_eq!(
            LiveUpdate::parse(b"-s\0"),
            Some(LiveUpdate::Start {
                force: false,
                timeout: 0,
                version: 2
            })
        );
        assert_eq!(LiveUpdate::parse(b"-a\0"), Some(LiveUpdate::Abort));
        assert_eq!(
            LiveUpdate::parse(b"-b\x004096\0"),
            Some(LiveUpdate::Upload(4096))
        );
        assert_eq!(
            LiveUpdate::parse(b"-d\x003\0a\0b\0"),
            Some(LiveUpdate::Chunk(b"a\0b"))
        );
    }

    #[test]
    fn malformed() {
        for bad in [
            &b""[..],
            b"-a\0x\0",
            b"-c\0",
            b"-f\0a\0b\0",
            b"-s\0-t\0",
            b"-s\0-t\0x\0",
            b"-s\0-X\0",
            b"-b\0big\0",
            b"-d\x004\0a\0b\0",
            b"-d\x003\0a\0bc",
            b"-d\0",
            b"-q\0",
        ] {
            assert_eq!(LiveUpdate::parse(bad), None, "{bad:?}");
        }
        let header = Header {
            msg_type: MsgType::Control as u32,
            req_id: 1,
            tx_id: 0,
            len: 0,
        };
        assert_eq!(
            LiveUpdate::of_request(&header, b"live-update\0-a\0"),
            Some(LiveUpdate::Abort)
        );
        assert_eq!(LiveUpdate::of_request(&header, b"print\0-a\0"), None);
        let read = Header {
            msg_type: MsgType::Read as u32,
            ..header
        };
        assert_eq!(LiveUpdate::of_request(&read, b"live-update\0-a\0"), None);
    }

    /// A host that holds `-s` until told to go, and answers it then.
    #[derive(Default)]
    struct Updater {
        go: bool,
        started: alloc::vec::Vec<(crate::ConnId, bool)>,
    }

    impl crate::protocol::Host for Updater {
        fn hold_request(
            &mut self,
            _store: &crate::Store,
            _conn: crate::ConnId,
            header: &Header,
            payload: &[u8],
        ) -> bool {
            matches!(
                LiveUpdate::of_request(header, payload),
                Some(LiveUpdate::Start { .. })
            ) && !self.go
        }

        fn transaction_started(&mut self, conn: crate::ConnId, first: bool) {
            self.started.push((conn, first));
        }

        fn live_update(
            &mut self,
            _store: &mut crate::Store,
            _conn: crate::ConnId,
            command: LiveUpdate<'_>,
        ) -> crate::XsResult<alloc::vec::Vec<u8>> {
            Ok(match command {
                LiveUpdate::Binary(b"/bad") => b"File not accessible.".to_vec(),
                _ => b"OK".to_vec(),
            })
        }
    }

    #[test]
    fn held_until_the_host_lets_go() {
        use crate::protocol::{Access, Connection, Limits};
        use crate::wire::push_message;
        let mut store = crate::Store::new(crate::StoreConfig::new([1, 2])).unwrap();
        let id = store.connect(crate::DomId::DOM0).unwrap();
        let mut conn = Connection::new(id, Access::default(), Limits::default());
        let mut host = Updater::default();
        let mut input = alloc::vec::Vec::new();
        push_message(
            &mut input,
            MsgType::Control as u32,
            1,
            0,
            b"live-update\0-f\0/bad\0",
        );
        push_message(
            &mut input,
            MsgType::Control as u32,
            2,
            0,
            b"live-update\0-s\0-t\x001\0",
        );
        push_message(&mut input, MsgType::TransactionStart as u32, 3, 0, b"\0");
        let used = conn.receive(&mut store, &mut host, &input).unwrap();
        // The `-f` answered, `-s` held whole, nothing taken after it.
        let second = 2 * crate::wire::HEADER_LEN
            + b"live-update\0-f\0/bad\0".len()
            + b"live-update\0-s\0-t\x001\0".len();
        assert_eq!(used, second);
        assert!(conn.holds_request());
        assert!(conn.output().ends_with(b"File not accessible.\0"));
        host.go = true;
        let rest = input.get(used..).unwrap();
        assert_eq!(
            conn.receive(&mut store, &mut host, rest).unwrap(),
            rest.len()
        );
        assert!(!conn.holds_request());
        let out = conn.output();
        assert!(out.windows(3).any(|w| w == b"OK\0"));
        assert_eq!(host.started, alloc::vec![(id, true)]);
    }
}
