#!/usr/bin/python3
"""A pyxs client held across live updates (tests/tests/live_update.rs).

Usage: pyxs_live_update.py SOCKET

Watches /pylu (token "py") and opens a transaction writing /pylu-tx/value on a second
connection, prints "READY", then waits for a line "GO N" on stdin: the test has meanwhile
live-updated the daemon several times and written /pylu/k0 .. /pylu/k<N-1>. Every one of
those writes must have fired exactly once and nothing more, and the transaction must commit
after the updates. Prints "pyxs live update: ok" at the end; any failure raises (exit 1).
"""

import queue
import sys

from pyxs import Client


def main():
    sock = sys.argv[1]
    with Client(unix_socket_path=sock) as c, Client(unix_socket_path=sock) as t:
        with c.monitor() as m:
            m.watch(b"/pylu", b"py")
            ev = tuple(m.events.get(timeout=10))
            assert ev == (b"/pylu", b"py"), "initial event %r" % (ev,)
            t.transaction()
            t.write(b"/pylu-tx/value", b"inside")
            print("READY", flush=True)
            words = sys.stdin.readline().split()
            assert words and words[0] == "GO", "expected GO N, got %r" % (words,)
            n = int(words[1])
            seen = {}
            for _ in range(n):
                try:
                    path, token = m.events.get(timeout=10)
                except queue.Empty:
                    raise AssertionError("only %d of %d events: %r" % (len(seen), n, seen))
                assert token == b"py", "token %r" % (token,)
                seen[path] = seen.get(path, 0) + 1
            assert len(seen) == n, "events: %r" % (seen,)
            assert all(v == 1 for v in seen.values()), "duplicated: %r" % (seen,)
            try:
                extra = m.events.get(timeout=0.3)
                raise AssertionError("an event more: %r" % (extra,))
            except queue.Empty:
                pass
            assert t.commit(), "the transaction failed after the live updates"
            assert c.read(b"/pylu-tx/value") == b"inside"
    print("pyxs live update: ok (%d events)" % n, flush=True)


if __name__ == "__main__":
    main()
