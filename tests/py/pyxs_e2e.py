#!/usr/bin/python3
"""End-to-end checks of a XenStore daemon through pyxs (Debian python3-pyxs).

Usage: pyxs_e2e.py SOCKET [--domain-sockets DIR]

SOCKET is the daemon's main (dom0) socket. With --domain-sockets (xs-host only; C
xenstored has no per-domain sockets), a guest is introduced and its permissions are
checked through DIR/<domid>.

Prints one line per check group and "pyxs e2e: all checks passed" at the end; any failure
raises (exit status 1 with a traceback). Facts the caller compares between daemons are
printed as "FACT name=value".
"""

import copy
import errno
import os
import queue
import sys
import time

from pyxs import Client, PyXSError
from pyxs._internal import Op
from pyxs.exceptions import InvalidPermission


def expect_errno(code, fn, *args):
    try:
        fn(*args)
    except PyXSError as e:
        assert e.args[0] == code, "%s%r: got %r, expected %s" % (
            fn.__name__, args, e.args, errno.errorcode[code])
        return
    raise AssertionError("%s%r succeeded, expected %s" % (
        fn.__name__, args, errno.errorcode[code]))


def next_event(monitor, timeout=10):
    try:
        return tuple(monitor.events.get(timeout=timeout))
    except queue.Empty:
        raise AssertionError("no watch event within %ss" % timeout)


def no_event(monitor, c, sentinel):
    """Asserts that no event is queued for monitor: writes `sentinel` (watched) and
    checks that its event is the next one (the daemon delivers events in order)."""
    c.write(sentinel, b"s")
    ev = next_event(monitor)
    assert ev[0] == sentinel, "unexpected event %r before the sentinel" % (ev,)


def basics(c):
    c.write(b"/py/basic/a", b"hello world")
    assert c.read(b"/py/basic/a") == b"hello world"
    assert c.read(b"/py/basic") == b""  # created on the way
    c.mkdir(b"/py/basic/dir/sub")
    assert c.read(b"/py/basic/dir/sub") == b""
    c.mkdir(b"/py/basic/a")  # existing: value kept
    assert c.read(b"/py/basic/a") == b"hello world"
    assert sorted(c.list(b"/py/basic")) == [b"a", b"dir"]
    assert c.exists(b"/py/basic/dir")
    assert not c.exists(b"/py/basic/nope")
    assert c.read(b"/py/basic/nope", b"dflt") == b"dflt"
    expect_errno(errno.ENOENT, c.read, b"/py/basic/nope")
    c.delete(b"/py/basic/nope")  # missing node, parent exists: fine
    expect_errno(errno.ENOENT, c.delete, b"/py/nope/nope")
    walked = sorted(p for p, _v, _ch in c.walk(b"/py/basic"))
    assert walked == [b"/py/basic", b"/py/basic/a", b"/py/basic/dir",
                      b"/py/basic/dir/sub"], walked
    c.delete(b"/py/basic")
    assert not c.exists(b"/py/basic")
    assert c.get_domain_path(0) == b"/local/domain/0"
    assert c.get_domain_path(7) == b"/local/domain/7"
    print("basics: ok")


def transactions(c1, c2):
    counter = b"/py/tx/counter"
    c1.write(counter, b"0")

    # Read-modify-write with interference: the other client writes the node this
    # transaction read, so the commit fails with EAGAIN (commit() returns False); the
    # retry succeeds.
    attempts = 0
    while True:
        attempts += 1
        assert attempts <= 10, "transaction never committed"
        c1.transaction()
        v = int(c1.read(counter))
        if attempts == 1:
            c2.write(counter, b"100")
        c1.write(counter, str(v + 1).encode())
        if c1.commit():
            break
    assert attempts == 2, "expected exactly one EAGAIN, got %d attempts" % attempts
    assert c2.read(counter) == b"101", c2.read(counter)

    # The same conflict seen at the protocol level: TRANSACTION_END T -> EAGAIN.
    c1.transaction()
    c1.read(counter)
    c2.write(counter, b"200")
    c1.write(counter, b"201")
    try:
        c1.ack(Op.TRANSACTION_END, b"T\x00")
        raise AssertionError("commit after a conflicting write succeeded")
    except PyXSError as e:
        assert e.args[0] == errno.EAGAIN, e.args
    finally:
        c1.tx_id = 0
    assert c1.read(counter) == b"200"

    # Isolation: uncommitted writes are invisible to others; abort discards them.
    c1.transaction()
    c1.write(b"/py/tx/new/node", b"x")
    assert c1.read(b"/py/tx/new/node") == b"x"
    assert not c2.exists(b"/py/tx/new")
    c1.rollback()
    assert not c2.exists(b"/py/tx/new")
    c1.transaction()
    c1.write(b"/py/tx/new/node", b"y")
    c1.delete(counter)
    assert c1.commit()
    assert c2.read(b"/py/tx/new/node") == b"y"
    assert not c2.exists(counter)

    # Two transactions on one connection (pyxs: copies share the router), creating
    # disjoint nodes under a shared parent. Retry on EAGAIN; report whether both
    # committed at the first try.
    c2.write(b"/py/tx/shared", b"")
    t1, t2 = c1, copy.copy(c1)
    t1.transaction()
    t2.transaction()
    assert t1.tx_id != t2.tx_id
    t1.write(b"/py/tx/shared/vif1/state", b"1")
    t2.write(b"/py/tx/shared/vif2/state", b"2")
    ok1 = t1.commit()
    ok2 = t2.commit()
    first_try = ok1 and ok2
    # A transaction that got EAGAIN is retried alone, as a toolstack would.
    for t, ok, name in ((t1, ok1, b"vif1"), (t2, ok2, b"vif2")):
        for _ in range(10):
            if ok:
                break
            t.transaction()
            t.write(b"/py/tx/shared/" + name + b"/state", b"retried")
            ok = t.commit()
        assert ok, "transaction for %r never committed" % name
    assert sorted(c2.list(b"/py/tx/shared")) == [b"vif1", b"vif2"]
    print("FACT disjoint_first_try=%s" % first_try)

    # Ending a transaction that does not exist.
    c1.tx_id = 987654
    try:
        expect_errno(errno.ENOENT, c1.read, counter)
    finally:
        c1.tx_id = 0
    print("transactions: ok (%d attempts for the conflicting one)" % attempts)


def watches(c1, c2):
    c1.write(b"/py/w/a", b"0")
    # Sentinels exist beforehand: writing them changes no child list, so it does not
    # conflict with the transaction below in C xenstored (which treats any change to a
    # child list the transaction touched as a conflict).
    c1.write(b"/py/w/sentinel1", b"")
    c1.write(b"/py/w/sentinel2", b"")
    with c2.monitor() as m:
        m.watch(b"/py/w", b"tok")
        assert next_event(m) == (b"/py/w", b"tok")  # the initial event
        c1.write(b"/py/w/a", b"1")
        assert next_event(m) == (b"/py/w/a", b"tok")
        c1.write(b"/py/w/a/deep/er", b"2")
        assert next_event(m) == (b"/py/w/a/deep/er", b"tok")
        # Transactions: nothing until commit; an aborted one never fires.
        c1.transaction()
        c1.write(b"/py/w/b", b"tx")
        c1.rollback()
        no_event(m, c1, b"/py/w/sentinel1")
        c1.transaction()
        c1.write(b"/py/w/c", b"tx")
        no_event(m, c2, b"/py/w/sentinel2")
        assert c1.commit()
        assert next_event(m) == (b"/py/w/c", b"tok")
        # Permission changes fire too.
        c1.set_perms(b"/py/w/c", [b"n0", b"r3"])
        assert next_event(m) == (b"/py/w/c", b"tok")
        # A second watch on the same path with another token.
        m.watch(b"/py/w/c", b"tok2")
        assert next_event(m) == (b"/py/w/c", b"tok2")
        c1.write(b"/py/w/c", b"again")
        evs = sorted([next_event(m), next_event(m)])
        assert evs == [(b"/py/w/c", b"tok"), (b"/py/w/c", b"tok2")], evs
        m.unwatch(b"/py/w/c", b"tok2")
        # Removal fires for the removed node.
        c1.delete(b"/py/w/a")
        assert next_event(m) == (b"/py/w/a", b"tok")
        # Special watch: @introduceDomain.
        m.watch(b"@introduceDomain", b"intro")
        assert next_event(m) == (b"@introduceDomain", b"intro")
        m.unwatch(b"/py/w", b"tok")
        # Unwatched: a write fires nothing (checked with a sentinel watch).
        m.watch(b"/py/sentinel", b"s")
        assert next_event(m) == (b"/py/sentinel", b"s")
        c1.write(b"/py/w/after", b"x")
        c1.write(b"/py/sentinel", b"x")
        assert next_event(m) == (b"/py/sentinel", b"s")
    expect_errno(errno.ENOENT, c2.ack, Op.UNWATCH, b"/py/none\x00", b"t\x00")
    print("watches: ok")


def permissions(c):
    p = b"/py/perm/node"
    c.write(p, b"v")
    assert c.get_perms(p) == [b"n0"]
    c.set_perms(p, [b"n0", b"r5", b"w6", b"b7"])
    assert c.get_perms(p) == [b"n0", b"r5", b"w6", b"b7"]
    c.set_perms(p, [b"b3"])  # owner 3, everyone else read+write
    assert c.get_perms(p) == [b"b3"]
    # A child created later inherits its parent's permissions.
    c.set_perms(b"/py/perm", [b"n0", b"r9"])
    c.write(b"/py/perm/child", b"c")
    assert c.get_perms(b"/py/perm/child") == [b"n0", b"r9"]
    expect_errno(errno.ENOENT, c.get_perms, b"/py/perm/nope")
    expect_errno(errno.ENOENT, c.set_perms, b"/py/perm/nope", [b"n0"])
    # Malformed permissions reach the daemon when sent raw: EINVAL.
    expect_errno(errno.EINVAL, c.ack, Op.SET_PERMS, p + b"\x00", b"x5\x00")
    try:
        c.set_perms(p, [b"x5"])
        raise AssertionError("pyxs accepted a bad permission")
    except InvalidPermission:
        pass
    print("permissions: ok")


def guest(c, domain_dir):
    domid = 5
    d = b"%d" % domid
    assert not c.is_domain_introduced(domid)
    with c.monitor() as m:
        m.watch(b"@introduceDomain", b"intro")
        assert next_event(m) == (b"@introduceDomain", b"intro")
        c.introduce_domain(domid, 0x1234, 3)
        assert next_event(m) == (b"@introduceDomain", b"intro")
    assert c.is_domain_introduced(domid)
    sock = os.path.join(domain_dir, str(domid))
    assert os.path.exists(sock), sock

    c.write(b"/py/g/private", b"secret")
    c.set_perms(b"/py/g/private", [b"n0"])
    c.write(b"/py/g/shared", b"s")
    c.set_perms(b"/py/g/shared", [b"n0", b"r" + d])
    c.write(b"/py/g/rw", b"")
    c.set_perms(b"/py/g/rw", [b"n0", b"b" + d])
    with Client(unix_socket_path=sock) as g:
        expect_errno(errno.EACCES, g.read, b"/py/g/private")
        expect_errno(errno.EACCES, g.write, b"/py/g/private", b"x")
        expect_errno(errno.EACCES, g.get_perms, b"/py/g/private")
        assert g.read(b"/py/g/shared") == b"s"
        assert g.get_perms(b"/py/g/shared") == [b"n0", b"r" + d]
        expect_errno(errno.EACCES, g.write, b"/py/g/shared", b"x")
        expect_errno(errno.EACCES, g.delete, b"/py/g/shared")
        expect_errno(errno.EACCES, g.set_perms, b"/py/g/shared", [b"b" + d])
        g.write(b"/py/g/rw/child", b"from guest")
        # The creator owns what it creates.
        assert c.get_perms(b"/py/g/rw/child")[0] == b"n" + d
        # Relative paths are relative to the guest's home.
        assert g.get_domain_path(domid) == b"/local/domain/" + d
        # The toolstack makes the guest's data directory, its own (the daemon does not,
        # as C xenstored does not).
        c.write(b"/local/domain/" + d + b"/data", b"")
        c.set_perms(b"/local/domain/" + d + b"/data", [b"n" + d])
        g.write(b"data/x", b"rel")
        assert c.read(b"/local/domain/" + d + b"/data/x") == b"rel"
        # Privileged operations are refused.
        expect_errno(errno.EACCES, g.introduce_domain, 6, 1, 1)
        expect_errno(errno.EACCES, g.ack, Op.RELEASE, b"6\x00")
        # A guest transaction.
        g.transaction()
        assert g.read(b"/py/g/shared") == b"s"
        g.write(b"/py/g/rw/child", b"tx")
        assert g.commit()
        assert c.read(b"/py/g/rw/child") == b"tx"
    c.ack(Op.RELEASE, d + b"\x00")  # pyxs's release_domain insists on /proc/xen
    assert not c.is_domain_introduced(domid)
    for _ in range(100):
        if not os.path.exists(sock):
            break
        time.sleep(0.01)
    assert not os.path.exists(sock), "%s still exists after RELEASE" % sock
    print("guest: ok")


def main():
    args = sys.argv[1:]
    if not args:
        sys.exit(__doc__)
    sock = args[0]
    domain_dir = None
    if args[1:3] and args[1] == "--domain-sockets":
        domain_dir = args[2]
    with Client(unix_socket_path=sock) as c1, Client(unix_socket_path=sock) as c2:
        basics(c1)
        transactions(c1, c2)
        watches(c1, c2)
        permissions(c1)
        if domain_dir:
            guest(c1, domain_dir)
        else:
            print("guest: skipped (no --domain-sockets)")
    print("pyxs e2e: all checks passed")


if __name__ == "__main__":
    main()
