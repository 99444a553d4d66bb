#!/bin/bash
# The Xen-in-QEMU rig's scenarios, run in dom0 by /init (dom0-init.sh) with the XenStore
# daemon under test installed as /usr/sbin/xenstored. See README.md here.
#
# Output contract (the host, xtask/src/xen_rig/report.rs, reads it from the serial log):
#   XEN-RIG-PLAN <scenario> ...              every scenario this run will report, first
#   XEN-RIG <scenario> PASS
#   XEN-RIG <scenario> FAIL <why>
#   XEN-RIG-BENCH <name> <value> <unit>      a measurement (`bench` line on the host)
#   XEN-RIG-INFO <text>, XEN-RIG-LOG <file>: <line>   context, and logs of what failed
#   XEN-RIG-END passed=<n> failed=<m>        last; a boot without it did not finish
# Every command that talks to the store or to Xen runs under `timeout`, so a daemon that
# does not answer makes scenarios fail, never the boot hang.
set -u
export PATH=/usr/sbin:/usr/bin:/sbin:/bin:/usr/lib/xen-4.17/bin
# DAEMON, TEST_XENSTORE_ITERATIONS, RTT_OPS, GUEST_MEM, CYCLES, ONLY (written by the host).
. /etc/xen-rig/config

SOCKET=/run/xenstored/socket            # XEN_RUN_STORED/socket: libxenstore's default
RING=/dev/xen/xenbus                    # dom0's kernel forwards it over dom0's ring
PIDFILE=/var/run/xen/xenstored.pid      # where launch-xenstore has the daemon write it
GUEST_DIR=/var/lib/xen-rig              # the guests' kernel, initrd and disk image
# With the stub domain there is no socket and no process: dom0 reaches the store only through
# its kernel's ring, and the pid file holds the stub domain's id (init-xenstore-domain).
STUB=0
[ "$DAEMON" = xs-stubdom ] && STUB=1
STORE=$SOCKET                           # where xen-rig-probe talks to the store
[ $STUB = 1 ] && STORE=$RING
CONSOLE_DIR=/var/log/xen/console
LOGS=/tmp/xen-rig
GUEST_TIMEOUT=180                       # s for one guest to write feature-poweroff
GUEST8_TIMEOUT=480                      # s for eight concurrent ones
mkdir -p "$LOGS"

# The groups of scenarios, in the order they run; ONLY (from the host's --only) may pick
# some of clients, test-xenstore, rtt, g1, g2, vbd, pv8, cycles, hostile, lu (and pvh, only when named). The daemon's start, dom0's set-up
# and the final check always run.
selected() { [ -z "${ONLY:-}" ] || [[ " $ONLY " == *" $1 "* ]]; }
# A group that runs only when named (a diagnosis, not part of the default run).
named() { [[ " ${ONLY:-} " == *" $1 "* ]]; }
PLAN=(launch-xenstore xenstore-ready xen-init-dom0 xenconsoled xl-info xl-list)
DOM0_PLAN=()
if [ $STUB = 0 ]; then
    selected clients && DOM0_PLAN+=(xenstore-socket)
    selected test-xenstore && DOM0_PLAN+=(test-xenstore-socket)
    selected rtt && DOM0_PLAN+=(rtt-socket)
fi
[ $STUB = 1 ] && DOM0_PLAN+=(stub-param stub-memory stub-save-state)
selected clients && DOM0_PLAN+=(xenstore-ring)
selected test-xenstore && DOM0_PLAN+=(test-xenstore-ring)
selected rtt && DOM0_PLAN+=(rtt-ring)
GUEST_PLAN=()
for g in g1 g2; do
    selected $g && GUEST_PLAN+=("$g-create" "$g-feature-poweroff" "$g-console" "$g-shutdown" "$g-gone")
done
selected vbd && GUEST_PLAN+=(vbd-create vbd-feature-poweroff vbd-console vbd-backend-connected
    vbd-frontend-connected vbd-guest-xvda vbd-shutdown vbd-gone vbd-data)
selected pv8 && GUEST_PLAN+=(pv8-create pv8-feature-poweroff pv8-console pv8-destroy)
selected cycles && GUEST_PLAN+=(cycles-introduce cycles-release cycles-no-leak)
selected hostile && GUEST_PLAN+=(hostile-ring hostile-introduce)
# Live update (group `lu`): xs-host's; C xenstored 4.17's needs its binary uploaded (-b).
selected lu && [ "$DAEMON" = xs-host ] && GUEST_PLAN+=(live-update-rings)
named pvh && GUEST_PLAN+=(pvh-linux)
PLAN+=("${DOM0_PLAN[@]}" "${GUEST_PLAN[@]}" xenstored-alive)
echo "XEN-RIG-PLAN ${PLAN[*]}"

passed=0
failed=0
STORE_UP=0      # a XenStore answers (socket or ring)
XL_UP=0         # xl reaches it (guest scenarios need that)

uptime_s() { cut -d' ' -f1 /proc/uptime; }
now_us() { local t=$EPOCHREALTIME; echo "${t/./}"; }
ms_since() { # START_US [END_US]: milliseconds with one decimal
    local d=$((${2:-$(now_us)} - $1))
    echo "$((d / 1000)).$(((d % 1000) / 100))"
}
pass() { echo "XEN-RIG $1 PASS"; passed=$((passed + 1)); }
fail() {
    local name=$1
    shift
    echo "XEN-RIG $name FAIL $*"
    failed=$((failed + 1))
    # The first failure with a stub domain that no longer answers: what it was doing then.
    if [ "$STUB" = 1 ] && [ -z "${postmortem_done:-}" ] && ! stub_answers; then
        stub_postmortem
    fi
}
not_run() { # WHY NAME...
    local why=$1 name
    shift
    for name in "$@"; do fail "$name" "not run: $why"; done
}
info() { echo "XEN-RIG-INFO $*"; }
bench() { echo "XEN-RIG-BENCH $1 $2 $3"; }
show_log() { # FILE [LINES]: the end of a log, for a failure's context
    [ -s "$1" ] && tail -n "${2:-12}" "$1" | sed "s|^|XEN-RIG-LOG ${1##*/}: |"
}
last_line() { [ -s "$1" ] && tail -n 1 "$1" | tr -d '\r'; }
# The first line of a log that says error (libxl's first is the cause, the rest follow from
# it), else its last line.
first_error() { grep -m1 -i error "$1" 2>/dev/null || last_line "$1"; }
t() { timeout -s KILL "$@"; } # SECS COMMAND...
# Runs NAME's function (the rest of the arguments); it leaves the reason in $why on failure.
scenario() {
    local name=$1
    shift
    why=""
    echo "=== [$(uptime_s)s] $name"
    "$@"
    if [ -z "$why" ]; then pass "$name"; else fail "$name" "$why"; fi
}
# Waits up to SECS for COMMAND to succeed, polling every 0.2 s.
wait_until() { # SECS COMMAND...
    local deadline=$(($(now_us) + $1 * 1000000))
    shift
    while ! "$@"; do
        [ "$(now_us)" -lt "$deadline" ] || return 1
        sleep 0.2
    done
}
xs_read() { t 10 xenstore-read "$@" 2>/dev/null; }
xs_absent() { ! t 10 xenstore-exists "$1" >/dev/null 2>&1; }
xs_equals() { [ "$(xs_read "$1")" = "$2" ]; } # PATH VALUE
# The daemon's pid; with the stub domain, its domid (init-xenstore-domain writes "domid:N").
daemon_pid() { sed 's/^domid://' "$PIDFILE" 2>/dev/null; }
# /local/domain with no guests: dom0's, and the stub domain's own (init-xenstore-domain
# writes it), as `xenstore-list | tr '\n' ' '` prints it.
only_dom0_nodes() {
    if [ $STUB = 1 ]; then echo "0 $(daemon_pid) "; else echo "0 "; fi
}
# What the daemon logged: its syslog lines (dom0-init.sh runs syslogd); the stub domain's
# console lines, which Xen keeps in its console ring (`(dN) ...`).
daemon_messages() {
    if [ $STUB = 1 ]; then
        t 30 xl dmesg 2>/dev/null | grep "(d$(daemon_pid))"
    else
        grep xenstored /var/log/messages 2>/dev/null
    fi
}
# The daemon's log lines that mention PATTERN, as info.
daemon_log() { # PATTERN
    daemon_messages | grep -e "$1" | tail -n 5 | sed 's/^/XEN-RIG-INFO log: /'
}
# The daemon's CPU time so far in microseconds, all its threads (the scheduler's count in
# /proc/<pid>/task/*/schedstat, in ns): what the store itself spent on a workload, whatever
# else the emulated machine did meanwhile. The stub domain's: its vCPU time from `xl list`
# (0.1 s resolution).
daemon_cpu_us() {
    if [ $STUB = 1 ]; then
        t 30 xl list "$(daemon_pid)" 2>/dev/null | awk 'NR == 2 { printf "%d\n", $6 * 1000000 }'
        return
    fi
    cat /proc/"$(daemon_pid)"/task/*/schedstat 2>/dev/null |
        awk '{ ns += $1 } END { printf "%d\n", ns / 1000 }'
}

# --- the daemon, started the way Xen's own scripts start it ---------------------------------

launch_xenstore() {
    rm -f "$PIDFILE"
    local start rc pid=""
    start=$(now_us)
    # Xen's script, unchanged (/etc/default/xencommons names /usr/sbin/xenstored). It must
    # return: the daemon forks, writes the pid file and the script waits for that file.
    t 45 /etc/xen/scripts/launch-xenstore >"$LOGS/launch-xenstore.log" 2>&1 </dev/null
    rc=$?
    info "launch-xenstore exited $rc after $(ms_since "$start") ms"
    [ -s "$PIDFILE" ] && pid=$(daemon_pid)
    if [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] && [ $STUB = 0 ]; then
        info "xenstored pid $pid: $(tr '\0' ' ' <"/proc/$pid/cmdline")"
    elif [ -n "$pid" ]; then
        info "stub domain $pid: $(t 10 xl list "$pid" 2>&1 | tail -n 1 | tr -s ' ')"
    fi
    if [ "$rc" = 137 ]; then
        why="launch-xenstore did not return within 45 s (does the daemon fork and write $PIDFILE?)"
    elif [ "$rc" != 0 ]; then
        why="launch-xenstore exited $rc: $(last_line "$LOGS/launch-xenstore.log")"
    elif [ -z "$pid" ]; then
        why="no pid in $PIDFILE"
    elif [ $STUB = 0 ] && ! kill -0 "$pid" 2>/dev/null; then
        why="the daemon (pid $pid) is not running"
    fi
    [ -z "$why" ] || show_log "$LOGS/launch-xenstore.log"
}

# As Debian's init script and Xen's old xencommons wait: `xenstore-read -s /`, 30 tries (with
# a stub domain, without -s: libxenstore falls back from the socket to /dev/xen/xenbus).
READY_ARGS=-s
[ $STUB = 1 ] && READY_ARGS=
xenstore_ready() {
    local start i=0
    start=$(now_us)
    while [ $i -lt 30 ]; do
        if t 5 xenstore-read $READY_ARGS / >/dev/null 2>"$LOGS/ready.log"; then
            info "xenstore-read $READY_ARGS / answered after $(ms_since "$start") ms"
            STORE_UP=1
            return
        fi
        i=$((i + 1))
        sleep 1
    done
    why="xenstore-read $READY_ARGS / did not answer within 30 s: $(last_line "$LOGS/ready.log")"
    # The rest can still be tried if dom0's ring is served.
    if XENSTORED_PATH=$RING t 10 xenstore-read / >/dev/null 2>&1; then
        STORE_UP=1
        info "the socket is not answering but $RING is"
    fi
}

xen_init_dom0() {
    t 30 xen-init-dom0 >"$LOGS/xen-init-dom0.log" 2>&1
    local rc=$?
    if [ $rc != 0 ]; then
        why="exit $rc: $(last_line "$LOGS/xen-init-dom0.log")"
    elif ! xs_equals /local/domain/0/name Domain-0; then
        why="/local/domain/0/name is '$(xs_read /local/domain/0/name)', not Domain-0"
    elif ! xs_equals /local/domain/0/domid 0; then
        why="/local/domain/0/domid is '$(xs_read /local/domain/0/domid)', not 0"
    fi
}

xenconsoled_start() {
    t 30 xenconsoled --pid-file=/var/run/xen/xenconsoled.pid --log=guest \
        --log-dir="$CONSOLE_DIR" >"$LOGS/xenconsoled.log" 2>&1
    local rc=$?
    sleep 0.5
    if [ $rc != 0 ]; then
        why="exit $rc: $(last_line "$LOGS/xenconsoled.log")"
    elif ! kill -0 "$(cat /var/run/xen/xenconsoled.pid 2>/dev/null)" 2>/dev/null; then
        why="xenconsoled is not running"
    fi
}

xl_info() {
    t 60 xl info >"$LOGS/xl-info.log" 2>&1
    local rc=$?
    grep -E '^(xen_version|xen_caps|virt_caps|nr_cpus|total_memory|free_memory) ' \
        "$LOGS/xl-info.log" | sed 's/  */ /g; s/^/XEN-RIG-INFO xl info: /'
    if [ $rc != 0 ]; then
        why="exit $rc: $(last_line "$LOGS/xl-info.log")"
    elif ! grep -qE '^xen_version +: 4\.17' "$LOGS/xl-info.log"; then
        why="no xen_version 4.17 in its output"
    fi
}

xl_list() {
    t 60 xl list >"$LOGS/xl-list.log" 2>&1
    local rc=$?
    if [ $rc != 0 ]; then
        why="exit $rc: $(last_line "$LOGS/xl-list.log")"
    elif ! grep -qE '^Domain-0 +0 ' "$LOGS/xl-list.log"; then
        why="Domain-0 is not listed"
        show_log "$LOGS/xl-list.log"
    else
        XL_UP=1
    fi
}

# --- Xen's clients over the socket and over dom0's kernel ring -----------------------------

# xenstore-TOOL over the transport of $MODE: `-s` (socket only) or XENSTORED_PATH=$RING
# (libxenstore then opens the device: it is no socket).
xs() {
    local tool=$1
    shift
    if [ "$MODE" = ring ]; then
        XENSTORED_PATH=$RING t 10 "xenstore-$tool" "$@"
    elif [ "$tool" = watch ]; then
        t 10 "xenstore-$tool" "$@" # no -s; the socket is what it opens first
    else
        t 10 "xenstore-$tool" -s "$@"
    fi
}

client_suite() { # MODE
    MODE=$1
    local b=/xen-rig/$MODE err=$LOGS/clients-$MODE.log out watcher i
    : >"$err"
    if ! xs write "$b/a" 1 "$b/b" hello 2>>"$err"; then
        why="xenstore-write failed: $(last_line "$err")"
        return
    fi
    out=$(xs read "$b/b" 2>>"$err")
    [ "$out" = hello ] || { why="xenstore-read gave '$out'"; return; }
    out=$(xs list "$b" 2>>"$err" | sort | tr '\n' ' ')
    [ "$out" = "a b " ] || { why="xenstore-list gave '$out'"; return; }
    out=$(xs ls "$b" 2>>"$err")
    [[ "$out" == *'a = "1"'* ]] || { why="xenstore-ls gave '$out'"; return; }
    xs exists "$b/a" 2>>"$err" || { why="xenstore-exists $b/a failed"; return; }
    ! xs exists "$b/none" 2>/dev/null || { why="xenstore-exists $b/none succeeded"; return; }
    xs chmod "$b/a" n0 r1 2>>"$err" || { why="xenstore-chmod failed: $(last_line "$err")"; return; }
    out=$(xs ls -p "$b" 2>>"$err")
    [[ "$out" == *'(n0,r1)'* ]] || { why="permissions after chmod: '$out'"; return; }
    # A watch fires once when set, then once per change: write until it has seen two.
    xs watch -n 2 "$b/w" >"$LOGS/watch-$MODE.out" 2>>"$err" &
    watcher=$!
    for i in $(seq 40); do
        kill -0 $watcher 2>/dev/null || break
        xs write "$b/w" "$i" 2>>"$err"
        sleep 0.25
    done
    wait $watcher || { why="xenstore-watch -n 2 did not see two events on $b/w"; return; }
    xs rm "$b" 2>>"$err" || { why="xenstore-rm failed: $(last_line "$err")"; return; }
    ! xs exists "$b" 2>/dev/null || { why="$b still exists after xenstore-rm"; return; }
}

test_xenstore() { # MODE
    local path=$SOCKET log=$LOGS/test-xenstore-$1.log
    [ "$1" = ring ] && path=$RING
    XENSTORED_PATH=$path t 300 test-xenstore -i "$TEST_XENSTORE_ITERATIONS" >"$log" 2>&1
    local rc=$?
    sed "s/  */ /g; s/^/XEN-RIG-INFO test-xenstore $1: /" "$log" | head -n 20
    [ $rc = 0 ] || why="test-xenstore -i $TEST_XENSTORE_ITERATIONS exited $rc"
}

# Round trips of one READ or one WRITE (xen-rig-probe: one request, its reply, the next).
rtt() { # MODE
    local path=$SOCKET log=$LOGS/rtt-$1.log
    [ "$1" = ring ] && path=$RING
    local cpu
    cpu=$(daemon_cpu_us)
    xen-rig-probe rtt "$path" "/xen-rig/rtt-$1" "$RTT_OPS" >"$log" 2>&1
    local rc=$?
    # 2 x RTT_OPS requests and the first WRITE.
    cpu=$((($(daemon_cpu_us) - cpu) * 10 / (2 * RTT_OPS + 1)))
    if [ $rc != 0 ]; then
        why="xen-rig-probe rtt exited $rc: $(last_line "$log")"
        return
    fi
    local name value
    while read -r name value; do
        case $name in
        read_p50_us) bench "xen_read_p50_$1" "$value" us ;;
        write_p50_us) bench "xen_write_p50_$1" "$value" us ;;
        *) info "rtt $1 ($RTT_OPS ops): $name $value" ;;
        esac
    done <"$log"
    bench "xen_request_store_cpu_$1" "$((cpu / 10)).$((cpu % 10))" us
}

# --- guests ----------------------------------------------------------------------------------

guest_cfg() { # NAME [DISK]: /etc/xen/NAME.cfg, a PV guest of the same kernel
    cat >"/etc/xen/$1.cfg" <<EOF
name = "$1"
type = "pv"
kernel = "$GUEST_DIR/vmlinuz"
ramdisk = "$GUEST_DIR/guest.img"
extra = "console=hvc0"
memory = $GUEST_MEM
vcpus = 1
on_poweroff = "destroy"
on_reboot = "destroy"
on_crash = "destroy"
EOF
    if [ -n "${2:-}" ]; then
        echo "disk = [ 'format=raw,vdev=xvda,access=rw,target=$2' ]" >>"/etc/xen/$1.cfg"
    fi
}

# Starts xen-rig-probe watching for COUNT feature-poweroff nodes (before the guests are
# created, so none is missed); $WATCH_PID; its output in $LOGS/seen.TAG.
start_watch() { # TAG COUNT SECS
    rm -f "$LOGS/ready.$1"
    xen-rig-probe wait-feature "$STORE" "$2" "$3" "$LOGS/ready.$1" \
        >"$LOGS/seen.$1" 2>"$LOGS/probe.$1.log" &
    WATCH_PID=$!
    wait_until 10 test -e "$LOGS/ready.$1" && return 0
    kill $WATCH_PID 2>/dev/null
    return 1
}
seen_at() { awk -v d="$2" '$1 == "seen" && $2 == d { print $3 }' "$LOGS/seen.$1"; } # TAG DOMID

console_has() { grep -q "$2" "$CONSOLE_DIR/guest-$1.log" 2>/dev/null; } # NAME PATTERN
show_console() { show_log "$CONSOLE_DIR/guest-$1.log" 25; }

domain_gone() { # NAME DOMID
    ! t 10 xl domid "$1" >/dev/null 2>&1 && xs_absent "/local/domain/$2" &&
        xs_absent "/libxl/$2"
}

# One guest's life: xl create, feature-poweroff, console, xl shutdown, its nodes gone.
# Scenarios PREFIX-create ... PREFIX-gone; with a DISK, the vbd checks between.
guest_life() { # PREFIX NAME BENCH-NAME [DISK]
    local p=$1 name=$2 benchname=$3 disk=${4:-} domid="" rc start seen cpu
    local later=("$p-feature-poweroff" "$p-console")
    [ -n "$disk" ] && later+=(vbd-backend-connected vbd-frontend-connected vbd-guest-xvda)
    later+=("$p-shutdown" "$p-gone")
    [ -n "$disk" ] && later+=(vbd-data)
    guest_cfg "$name" "$disk"
    echo "=== [$(uptime_s)s] $p: xl create $name"
    if ! start_watch "$name" 1 "$GUEST_TIMEOUT"; then
        fail "$p-create" "xen-rig-probe could not watch /local/domain: $(last_line "$LOGS/probe.$name.log")"
        not_run "$p-create failed" "${later[@]}"
        return
    fi
    start=$(now_us)
    cpu=$(daemon_cpu_us)
    t 120 xl create "/etc/xen/$name.cfg" >"$LOGS/$name.create.log" 2>&1
    rc=$?
    domid=$(t 10 xl domid "$name" 2>/dev/null)
    if [ $rc != 0 ] || [ -z "$domid" ]; then
        if [ $rc = 137 ]; then
            fail "$p-create" "xl create did not return within 120 s"
        else
            fail "$p-create" "xl create exited $rc: $(first_error "$LOGS/$name.create.log")"
        fi
        show_log "$LOGS/$name.create.log"
        [ -n "$disk" ] && show_log /var/log/xen/xen-hotplug.log 30
        kill $WATCH_PID 2>/dev/null
        t 60 xl destroy "$name" >/dev/null 2>&1
        not_run "$p-create failed" "${later[@]}"
        return
    fi
    info "$name: xl create returned after $(ms_since "$start") ms, domid $domid"
    pass "$p-create"

    wait $WATCH_PID
    rc=$?
    seen=$(seen_at "$name" "$domid")
    if [ -n "$seen" ] && xs_equals "/local/domain/$domid/control/feature-poweroff" 1; then
        pass "$p-feature-poweroff"
        if [ -n "$benchname" ]; then
            bench "$benchname" "$(ms_since "$start" "$seen")" ms
            bench "${benchname}_store_cpu" "$((($(daemon_cpu_us) - cpu) / 1000))" ms
        fi
    else
        fail "$p-feature-poweroff" "no /local/domain/$domid/control/feature-poweroff within" \
            "${GUEST_TIMEOUT} s (probe status $rc: $(last_line "$LOGS/probe.$name.log"))"
        show_log "$LOGS/seen.$name"
        t 10 xenstore-ls -f "/local/domain/$domid/control" >"$LOGS/control.log" 2>&1
        show_log "$LOGS/control.log"
        show_console "$name"
    fi

    if wait_until 60 console_has "$name" "XEN-RIG-GUEST hello"; then
        info "$name console: $(grep -m1 'XEN-RIG-GUEST hello' "$CONSOLE_DIR/guest-$name.log")"
        pass "$p-console"
    else
        fail "$p-console" "no 'XEN-RIG-GUEST hello' in $CONSOLE_DIR/guest-$name.log within 60 s"
        show_console "$name"
    fi

    [ -n "$disk" ] && vbd_checks "$name" "$domid"

    echo "=== [$(uptime_s)s] $p: xl shutdown -w $name"
    start=$(now_us)
    t 120 xl shutdown -w "$name" >"$LOGS/$name.shutdown.log" 2>&1
    rc=$?
    if [ $rc = 0 ] && wait_until 30 eval "! t 10 xl domid $name >/dev/null 2>&1"; then
        info "$name: shut down after $(ms_since "$start") ms"
        pass "$p-shutdown"
    else
        fail "$p-shutdown" "xl shutdown -w exited $rc: $(last_line "$LOGS/$name.shutdown.log")"
        show_console "$name"
        t 60 xl destroy "$name" >/dev/null 2>&1
    fi

    if wait_until 30 domain_gone "$name" "$domid"; then
        pass "$p-gone"
    else
        fail "$p-gone" "after 30 s: $(xs_absent "/local/domain/$domid" ||
            echo "/local/domain/$domid still there") $(xs_absent "/libxl/$domid" ||
            echo "/libxl/$domid still there")"
    fi

    [ -n "$disk" ] && vbd_data "$domid" "$disk"
}

# The disk's two ends: blkback in dom0 (the block hotplug script put a loop device under
# it) and blkfront in the guest, both Connected (4); the guest sees /dev/xvda and writes to
# it (tests/xen-rig/guest-init.sh).
vbd_checks() { # NAME DOMID
    local be=/local/domain/0/backend/vbd/$2/51712 fe=/local/domain/$2/device/vbd/51712
    if wait_until 60 xs_equals "$be/state" 4; then
        info "vbd backend: $(xs_read "$be/params") on $(xs_read "$be/node") ($(xs_read "$be/physical-device"))"
        pass vbd-backend-connected
    else
        fail vbd-backend-connected "$be/state is '$(xs_read "$be/state")' after 60 s, not 4"
        show_log "/var/log/xen/xl-$1.log"
    fi
    if wait_until 60 xs_equals "$fe/state" 4; then
        pass vbd-frontend-connected
    else
        fail vbd-frontend-connected "$fe/state is '$(xs_read "$fe/state")' after 60 s, not 4"
    fi
    if wait_until 60 console_has "$1" "XEN-RIG-GUEST xvda written"; then
        info "$1 console: $(grep -m1 'XEN-RIG-GUEST xvda' "$CONSOLE_DIR/guest-$1.log")"
        pass vbd-guest-xvda
    else
        fail vbd-guest-xvda "the guest did not report /dev/xvda written within 60 s"
        show_console "$1"
    fi
}

# After the guest is gone: its backend nodes are gone, the loop device released, and what
# the guest wrote is in the file.
vbd_data() { # DOMID DISK
    local marker
    marker=$(head -c 11 "$2")
    if ! xs_absent "/local/domain/0/backend/vbd/$1"; then
        fail vbd-data "/local/domain/0/backend/vbd/$1 is still there"
    elif losetup -a | grep -q "$2"; then
        fail vbd-data "the loop device is still attached: $(losetup -a | grep "$2")"
    elif [ "$marker" != xen-rig-vbd ]; then
        fail vbd-data "the disk file starts with '$marker', not the guest's 'xen-rig-vbd'"
    else
        pass vbd-data
    fi
}

# Eight guests created at once; all must write feature-poweroff, then all are destroyed.
eight_guests() {
    local names=() pids=() domids=() i n rc last=0 seen start bad="" cpu
    for i in 1 2 3 4 5 6 7 8; do
        names+=("c$i")
        guest_cfg "c$i"
    done
    echo "=== [$(uptime_s)s] pv8: 8 x xl create"
    if ! start_watch pv8 8 "$GUEST8_TIMEOUT"; then
        fail pv8-create "xen-rig-probe could not watch /local/domain: $(last_line "$LOGS/probe.pv8.log")"
        not_run "pv8-create failed" pv8-feature-poweroff pv8-console pv8-destroy
        return
    fi
    start=$(now_us)
    cpu=$(daemon_cpu_us)
    for n in "${names[@]}"; do
        t 300 xl create "/etc/xen/$n.cfg" >"$LOGS/$n.create.log" 2>&1 &
        pids+=($!)
    done
    for i in "${!names[@]}"; do
        wait "${pids[$i]}"
        rc=$?
        n=${names[$i]}
        domids[$i]=$(t 10 xl domid "$n" 2>/dev/null)
        if [ $rc = 137 ]; then
            bad+="${bad:+;} $n: xl create killed after 300 s"
        elif [ $rc != 0 ] || [ -z "${domids[$i]}" ]; then
            bad+="${bad:+;} $n: exit $rc ($(first_error "$LOGS/$n.create.log"))"
            show_log "$LOGS/$n.create.log" 6
        fi
    done
    info "pv8: the 8 xl create returned after $(ms_since "$start") ms, domids ${domids[*]}"
    if [ -n "$bad" ]; then fail pv8-create "${bad# }"; else pass pv8-create; fi

    # Every guest that exists must write feature-poweroff (the probe counts them all).
    all_seen() {
        local d
        for d in "${domids[@]}"; do
            [ -z "$d" ] || [ -n "$(seen_at pv8 "$d")" ] || return 1
        done
    }
    wait_until "$GUEST8_TIMEOUT" all_seen
    kill $WATCH_PID 2>/dev/null
    wait $WATCH_PID 2>/dev/null
    bad=""
    for i in "${!names[@]}"; do
        seen=""
        [ -n "${domids[$i]}" ] && seen=$(seen_at pv8 "${domids[$i]}")
        if [ -z "$seen" ]; then
            bad+=" ${names[$i]}"
        elif [ "$seen" -gt "$last" ]; then
            last=$seen
        fi
    done
    if [ -z "$bad" ]; then
        pass pv8-feature-poweroff
        bench xen_create_8_pv "$(ms_since "$start" "$last")" ms
        bench xen_create_8_pv_store_cpu "$((($(daemon_cpu_us) - cpu) / 1000))" ms
    else
        fail pv8-feature-poweroff "no feature-poweroff within $GUEST8_TIMEOUT s from:$bad" \
            "$(last_line "$LOGS/probe.pv8.log")"
    fi

    bad=""
    for i in "${!names[@]}"; do
        n=${names[$i]}
        if [ -z "${domids[$i]}" ]; then
            bad+=" $n (not created)"
        elif ! wait_until 60 console_has "$n" "XEN-RIG-GUEST hello"; then
            bad+=" $n"
        fi
    done
    if [ -z "$bad" ]; then pass pv8-console; else fail pv8-console "no hello line from:$bad"; fi
    stub_heap_figure pv8

    echo "=== [$(uptime_s)s] pv8: 8 x xl destroy"
    start=$(now_us)
    pids=()
    for i in "${!names[@]}"; do
        n=${names[$i]}
        [ -n "${domids[$i]}" ] || continue
        t 120 xl destroy "$n" >"$LOGS/$n.destroy.log" 2>&1 &
        pids[$i]=$!
    done
    bad=""
    for i in "${!pids[@]}"; do
        wait "${pids[$i]}" || bad+="${bad:+;} ${names[$i]}: $(last_line "$LOGS/${names[$i]}.destroy.log")"
    done
    only_dom0() {
        [ "$(t 10 xenstore-list /local/domain 2>/dev/null | tr '\n' ' ')" = "$ONLY_DOM0" ] &&
            [ "$(t 30 xl list 2>/dev/null | wc -l)" = $((2 + STUB)) ]
    }
    if [ -n "$bad" ]; then
        fail pv8-destroy "xl destroy failed:$bad"
        info "left in /local/domain: $(t 10 xenstore-list /local/domain | tr '\n' ' ')"
    elif ! wait_until 60 only_dom0; then
        fail pv8-destroy "after 60 s /local/domain holds: $(t 10 xenstore-list /local/domain | tr '\n' ' ')"
    else
        info "pv8: all destroyed and their nodes gone after $(ms_since "$start") ms"
        pass pv8-destroy
    fi
}

# CYCLES guests in turn, each created paused (`xl create -p`) and destroyed (`xl destroy`):
# libxl writes its nodes and INTRODUCEs it (the daemon maps its store page by grant and binds
# its event channel); the destroy kills it (the daemon hears VIRQ_DOM_EXC; libxl RELEASEs it
# and removes its nodes). The guest is the rig's tiny PV kernel, which never runs: a cycle is
# the toolstack's and the store's work alone. Afterwards nothing may have accumulated in the
# daemon: its open descriptors, its mappings of guests' pages (gntdev, privcmd) and dom0's
# event channels (lsevtchn) as before, its resident memory within CYCLE_RSS_SLACK_KB.
CYCLE_RSS_SLACK_KB=1024
# /etc/xen/NAME.cfg for one of the rig's tiny PV kernels (xtask/src/xen_rig/tiny_pv.rs).
tiny_cfg() { # NAME KERNEL ON_CRASH
    cat >"/etc/xen/$1.cfg" <<EOF
name = "$1"
type = "pv"
kernel = "$GUEST_DIR/$2"
memory = 16
vcpus = 1
on_poweroff = "destroy"
on_reboot = "destroy"
on_crash = "$3"
EOF
}
# "fds maps evtchns rss_kb": the daemon's descriptors, its mappings of other domains' pages,
# dom0's event channels, the daemon's resident memory.
daemon_usage() {
    local pid fds maps evtchns rss
    pid=$(daemon_pid)
    if [ $STUB = 1 ]; then
        # The stub domain's event channels; its mappings and memory are not visible here.
        echo "0 0 $(t 10 lsevtchn "$pid" 2>/dev/null | wc -l) 0"
        return
    fi
    fds=$(ls "/proc/$pid/fd" 2>/dev/null | wc -l)
    maps=$(grep -c -e /dev/xen/gntdev -e /dev/xen/privcmd "/proc/$pid/maps" 2>/dev/null)
    evtchns=$(t 10 lsevtchn 0 2>/dev/null | wc -l)
    rss=$(awk '/^VmRSS/ { print $2 }' "/proc/$pid/status" 2>/dev/null)
    echo "${fds:-?} ${maps:-?} ${evtchns:-?} ${rss:-?}"
}
usage_text() { # "fds maps evtchns rss"
    set -- $1
    if [ $STUB = 1 ]; then
        echo "$3 event channels of the stub domain"
    else
        echo "$1 descriptors, $2 page mappings, $3 dom0 event channels, RSS $4 kB"
    fi
}
# One cycle; $CYC_ERR says why it failed (empty if it did not). The first records the
# daemon's usage while the guest exists in $CYC_DURING.
one_cycle() { # I
    local log=$LOGS/cyc.log domid t0 t1 t2
    CYC_ERR=""
    t0=$(now_us)
    if ! t 60 xl create -p /etc/xen/cyc.cfg >"$log" 2>&1; then
        CYC_ERR="cycle $1: xl create -p failed: $(first_error "$log")"
        t 60 xl destroy cyc >/dev/null 2>&1
        return
    fi
    domid=$(t 10 xl domid cyc 2>/dev/null)
    if [ -z "$domid" ]; then
        CYC_ERR="cycle $1: no domid for cyc"
        return
    fi
    CYC_LAST=$domid
    local answer
    answer=$(xen-rig-probe introduced "$STORE" "$domid" 2>&1)
    [ "$answer" = "$domid T" ] ||
        CYC_ERR="cycle $1: domain $domid is not introduced after xl create -p ($answer)"
    [ -n "${CYC_DURING:-}" ] || CYC_DURING=$(daemon_usage)
    t1=$(now_us)
    if ! t 60 xl destroy cyc >"$log" 2>&1; then
        CYC_ERR="cycle $1: xl destroy failed: $(last_line "$log")"
        return
    fi
    t2=$(now_us)
    wait_until 30 domain_gone cyc "$domid" ||
        CYC_ERR="cycle $1: domain $domid's nodes are still there 30 s after xl destroy"
    CYC_CREATE_US=$((CYC_CREATE_US + t1 - t0))
    CYC_DESTROY_US=$((CYC_DESTROY_US + t2 - t1))
    CYC_GONE_US=$((CYC_GONE_US + $(now_us) - t2))
}
cycles() {
    local i before after start cpu first released
    tiny_cfg cyc tiny-pv destroy
    echo "=== [$(uptime_s)s] cycles: $CYCLES x (xl create -p, xl destroy)"
    # Two cycles first, to let the daemon's allocator and libxl's first-use work settle.
    CYC_DURING="" CYC_CREATE_US=0 CYC_DESTROY_US=0 CYC_GONE_US=0
    for i in 1 2; do
        one_cycle "warm-up $i"
        [ -z "$CYC_ERR" ] || break
    done
    before=$(daemon_usage)
    info "cycles: daemon before: $(usage_text "$before")"
    cpu=$(daemon_cpu_us)
    sleep 2
    info "cycles: daemon CPU while idle for 2 s: $(($(daemon_cpu_us) - cpu)) us"
    CYC_CREATE_US=0 CYC_DESTROY_US=0 CYC_GONE_US=0
    start=$(now_us)
    cpu=$(daemon_cpu_us)
    first=""
    if [ -z "$CYC_ERR" ]; then
        for i in $(seq "$CYCLES"); do
            one_cycle "$i"
            [ -n "$first" ] || first=$CYC_LAST
            [ -z "$CYC_ERR" ] || break
        done
    fi
    if [ -n "$CYC_ERR" ]; then
        fail cycles-introduce "$CYC_ERR"
        show_log "$LOGS/cyc.log"
        not_run "a cycle failed" cycles-release cycles-no-leak
        t 60 xl destroy cyc >/dev/null 2>&1
        return
    fi
    info "cycles: $CYCLES cycles in $(ms_since "$start") ms, domids $first..$CYC_LAST;" \
        "per cycle: xl create -p $((CYC_CREATE_US / CYCLES / 1000)) ms," \
        "xl destroy $((CYC_DESTROY_US / CYCLES / 1000)) ms, nodes gone $((CYC_GONE_US / CYCLES / 1000)) ms"
    bench xen_cycle_pv "$(ms_since "$start" $(( start + ($(now_us) - start) / CYCLES )))" ms
    bench xen_cycle_pv_store_cpu "$((($(daemon_cpu_us) - cpu) / CYCLES))" us
    pass cycles-introduce

    # None of them is introduced any more, and only dom0 is left in /local/domain.
    released=$(xen-rig-probe introduced "$STORE" "$first" $(( (first + CYC_LAST) / 2 )) \
        "$CYC_LAST" 2>&1)
    if [ "$(grep -c ' F$' <<<"$released")" != 3 ]; then
        fail cycles-release "IS_DOMAIN_INTRODUCED after the cycles: $(tr '\n' ' ' <<<"$released")"
    elif [ "$(t 10 xenstore-list /local/domain 2>/dev/null | tr '\n' ' ')" != "$ONLY_DOM0" ]; then
        fail cycles-release "/local/domain holds: $(t 10 xenstore-list /local/domain | tr '\n' ' ')"
    else
        pass cycles-release
    fi

    same_usage() {
        after=$(daemon_usage)
        set -- $before
        local fds=$1 maps=$2 evtchns=$3 rss=$4
        set -- $after
        [ "$1" = "$fds" ] && [ "$2" = "$maps" ] && [ "$3" = "$evtchns" ] &&
            [ "$4" -le $((rss + CYCLE_RSS_SLACK_KB)) ]
    }
    if ! wait_until 20 same_usage; then
        fail cycles-no-leak "after $CYCLES cycles: $(usage_text "$after"); before: $(usage_text "$before")"
        return
    fi
    info "cycles: daemon after: $(usage_text "$after")"
    info "cycles: daemon with a guest: $(usage_text "$CYC_DURING")"
    # The counts must see a guest at all, or comparing them proves nothing.
    set -- $CYC_DURING
    local maps=$2 evtchns=$3
    set -- $before
    if { [ $STUB = 0 ] && [ "$maps" -le "$2" ]; } || [ "$evtchns" -le "$3" ]; then
        fail cycles-no-leak "with a guest the counts were $(usage_text "$CYC_DURING"), without $(usage_text "$before"): they do not see a guest's mapping and event channel"
    else
        pass cycles-no-leak
    fi
}

# A guest that breaks its ring: the rig's ring-breaker kernel sets its XenStore ring's
# req_prod more than a ring ahead of req_cons and kicks the store's event channel, then
# sleeps. The daemon must give up on that connection only: dom0's requests are still
# answered, the daemon does not spin on the broken ring, and the guest is destroyed and
# cleaned up as any other, leaving nothing behind.
hostile_ring() {
    local domid cpu spent usage_before usage_after log=$LOGS/breaker.log
    tiny_cfg breaker ring-breaker preserve
    usage_before=$(daemon_usage)
    if ! t 60 xl create /etc/xen/breaker.cfg >"$log" 2>&1; then
        why="xl create failed: $(first_error "$log")"
        return
    fi
    domid=$(t 10 xl domid breaker 2>/dev/null)
    sleep 2 # it breaks its ring within microseconds of starting
    cpu=$(daemon_cpu_us)
    sleep 2
    spent=$(($(daemon_cpu_us) - cpu))
    info "ring-breaker: domain $domid, $(t 30 xl list breaker 2>&1 | tail -n 1 | tr -s ' ')"
    info "ring-breaker: daemon CPU over 2 s with the broken ring: $spent us"
    if ! t 10 xenstore-write /xen-rig/after-break ok 2>"$LOGS/after-break.log" ||
        ! xs_equals /xen-rig/after-break ok; then
        why="dom0's requests are not answered with the broken ring there: $(last_line "$LOGS/after-break.log")"
    elif ! XENSTORED_PATH=$RING t 10 xenstore-read /xen-rig/after-break >/dev/null 2>&1; then
        why="dom0's ring is not answered with the broken ring there"
    elif [ "$spent" -gt 200000 ]; then
        why="the daemon spent $spent us of CPU in 2 s with a broken ring and nothing else to do"
    elif ! t 60 xl destroy breaker >"$log" 2>&1; then
        why="xl destroy failed: $(last_line "$log")"
    elif ! wait_until 30 domain_gone breaker "$domid"; then
        why="domain $domid's nodes are still there 30 s after xl destroy"
    elif [ "$(xen-rig-probe introduced "$STORE" "$domid" 2>&1)" != "$domid F" ]; then
        why="domain $domid is still introduced after xl destroy"
    elif ! wait_until 20 eval '[ "$(daemon_usage | cut -d" " -f1-3)" = "$(cut -d" " -f1-3 <<<"$usage_before")" ]'; then
        why="left behind: before $(usage_text "$usage_before"); after $(usage_text "$(daemon_usage)")"
    elif [ "$DAEMON" != cxenstored ] && ! daemon_messages | grep -q "dom$domid: ring no longer served"; then
        # xs-host says so once, when the ring breaks: proof that the guest did break it.
        why="no 'dom$domid: ring no longer served' in the daemon's log"
    fi
    daemon_log "dom$domid"
    [ -z "$why" ] || t 60 xl destroy breaker >/dev/null 2>&1
}

# INTRODUCE of a domain that does not exist: its page cannot be mapped, so the daemon must
# refuse it with an error (C xenstored says EINVAL), not count it as introduced, and go on
# serving everyone.
hostile_introduce() {
    local answer
    answer=$(xen-rig-probe introduce "$STORE" 31000 1234 5 2>&1)
    info "INTRODUCE of domain 31000 (none such): $answer"
    daemon_log 31000
    if [[ "$answer" != ERROR\ * ]]; then
        why="INTRODUCE of a domain that does not exist answered '$answer', not an error"
    elif [ "$(xen-rig-probe introduced "$STORE" 31000 2>&1)" != "31000 F" ]; then
        why="domain 31000 counts as introduced after a failed INTRODUCE"
    elif ! t 10 xenstore-write /xen-rig/after-introduce ok ||
        ! xs_equals /xen-rig/after-introduce ok; then
        why="the daemon no longer answers after the failed INTRODUCE"
    fi
}

# The stub domain's command line: xencommons-stubdom passes `--param=--watch-nb=256` through
# launch-xenstore and init-xenstore-domain; the store must apply it (GET_QUOTA says 256, not
# the default 128) and say so in its log.
stub_param() {
    local watches
    watches=$(xen-rig-probe get-quota "$STORE" watches 2>&1)
    info "stub domain: GET_QUOTA watches = $watches"
    daemon_log "command line"
    if [ "$watches" != 256 ]; then
        why="GET_QUOTA watches is '$watches', not the 256 of --param=--watch-nb=256"
    elif ! daemon_messages | grep -q "quotas from the command line: watches=256"; then
        why="the stub domain's log does not show the quota from its command line"
    fi
}

# Whether the stub domain answers dom0's kernel (the only way to it: there is no socket).
stub_answers() {
    XENSTORED_PATH=$RING t 10 xenstore-read /local/domain/0/name >/dev/null 2>&1
}

# What a stub domain that stopped answering was doing, from what needs no store: Xen's view of
# its vCPU ('q': blocked or running, polling, upcall pending) and of its event channels ('e':
# pending and masked bits per port), three samples of its registers and stack with symbols
# (xenctx: one place each time, or a loop), its last console lines, and the state of dom0's
# xenbus side (interrupt count, the kernel threads' stacks).
stub_postmortem() {
    local pid i key
    postmortem_done=1
    pid=$(daemon_pid)
    echo "XEN-RIG-LOG === the stub domain ($pid) does not answer: post-mortem"
    t 30 xl dmesg 2>&1 | grep "(d$pid)" | tail -n 10 | sed 's/^/XEN-RIG-LOG xl dmesg: /'
    # Xen's console ring is small: emptied first, so that each key's dump is all there.
    for key in q e; do
        t 30 xl dmesg -c >/dev/null 2>&1
        t 30 xl debug-keys $key >/dev/null 2>&1
        t 30 xl dmesg 2>&1 | head -n 200 | sed "s/^/XEN-RIG-LOG debug-key $key: /"
    done
    for i in 1 2 3; do
        t 30 xenctx -k 0 -s /usr/lib/xen-rig/xs-stubdom.map -S -n 4 -l 24 "$pid" 2>&1 |
            head -n 80 | sed "s/^/XEN-RIG-LOG xenctx $i: /"
        sleep 1
    done
    grep -i xenbus /proc/interrupts | tr -s ' ' | sed 's/^/XEN-RIG-LOG dom0 interrupts: /'
    # (busybox here has no pgrep: the kernel threads are found by name in /proc.)
    for i in /proc/[0-9]*; do
        case "$(cat "$i/comm" 2>/dev/null)" in
        xenbus | xenwatch)
            sed "s/^/XEN-RIG-LOG dom0 $(cat "$i/comm") stack: /" "$i/stack" 2>/dev/null
            ;;
        esac
    done
}

# The stub domain's heap, from its answer to `xenstore-control memreport` (its console): "IN SIZE"
# in KiB, or nothing.
stub_heap_kib() {
    XENSTORED_PATH=$RING t 30 xenstore-control memreport >/dev/null 2>&1 || return
    local line
    wait_until 10 eval 'line=$(daemon_messages | grep "xs: heap: " | tail -n 1) && [ "$line" != "${STUB_HEAP_LAST:-}" ]' ||
        return
    STUB_HEAP_LAST=$line
    sed -E 's/.*xs: heap: ([0-9]+) KiB in use of ([0-9]+) KiB.*/\1 \2/' <<<"$line"
}

# Reports the stub domain's heap as LABEL (info and a bench figure).
stub_heap_figure() { # LABEL
    [ $STUB = 1 ] || return 0
    local heap
    heap=$(stub_heap_kib)
    if [ -n "$heap" ]; then
        info "stub domain heap $1: ${heap% *} KiB in use of ${heap#* } KiB"
        bench "xen_stub_heap_$1" "${heap% *}" KiB
    else
        info "stub domain heap $1: no memreport answer"
    fi
}

# The stub domain's memory: xencommons-stubdom gives it --memory 8 and --maxmem 32
# (XENSTORE_MAX_DOMAIN_SIZE), so Xen lets it grow to 32 MiB but populates 8: the heap must end
# where the populated RAM does (a touch beyond would fault), and `memreport` must say so.
stub_memory() {
    local pid heap pages
    pid=$(daemon_pid)
    heap=$(stub_heap_kib)
    pages=$(t 30 xl debug-keys q >/dev/null 2>&1; t 30 xl dmesg 2>/dev/null |
        grep -A3 "General information for domain $pid:" | grep -o "nr_pages=[0-9]* .*max_pages=[0-9]*" | tail -n 1)
    info "stub domain memory: Xen says ${pages:-?}; memreport: ${heap:-none}"
    daemon_log "heap 0x"
    if [ -z "$heap" ]; then
        why="no answer to xenstore-control memreport in the stub domain's log"
    elif [ "${heap#* }" -gt 8192 ] || [ "${heap% *}" -gt "${heap#* }" ]; then
        why="memreport says '$heap' KiB: not within the 8 MiB given"
    elif ! [[ "$pages" =~ nr_pages=([0-9]+).*max_pages=([0-9]+) ]] ||
        [ "${BASH_REMATCH[2]}" -le "${BASH_REMATCH[1]}" ]; then
        why="Xen does not show a maximum above the populated pages ('$pages'): --maxmem not in effect"
    else
        stub_heap_figure idle
    fi
}

# The stub domain's state (issue 18): `xenstore-control save-state` over dom0's ring; the stub
# saves its whole state (rings included) into a heap buffer, verifies it by restoring it into
# a scratch store and saving that again, and says so on its console; then it serves on.
stub_save_state() {
    local before out
    before=$(daemon_messages | grep -c "xs: state: ")
    if ! out=$(XENSTORED_PATH=$RING t 30 xenstore-control save-state 2>&1); then
        why="xenstore-control save-state: $out"
        return
    fi
    if ! wait_until 10 eval '[ "$(daemon_messages | grep -c "xs: state: ")" -gt '"$before"' ]'; then
        why="no 'xs: state:' line on the stub domain's console within 10 s"
        return
    fi
    out=$(daemon_messages | grep "xs: state: " | tail -n 1)
    info "stub domain: ${out#*xs: }"
    if [[ "$out" != *"verified"*"saved again to the same bytes"* ]]; then
        why="the stub's save was not verified: ${out#*xs: }"
    elif ! stub_answers; then
        why="the stub domain does not answer after its save"
    fi
}

xenstored_alive() {
    local pid
    pid=$(daemon_pid)
    if [ $STUB = 1 ]; then
        if ! stub_answers; then
            why="the stub domain ($pid) does not answer any more"
            [ -n "${postmortem_done:-}" ] || stub_postmortem
        else
            info "stub domain $pid at the end: $(t 10 xl list "$pid" 2>&1 | tail -n 1 | tr -s ' ')"
        fi
        return
    fi
    if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then
        why="the daemon from $PIDFILE ('$pid') is not running"
    elif ! t 10 xenstore-read -s /local/domain/0/name >/dev/null 2>&1; then
        why="xenstore-read -s does not answer any more"
    else
        info "xenstored pid $pid at the end: $(grep -E '^(VmRSS|VmHWM)' "/proc/$pid/status" | tr -s ' \t' ' ' | tr '\n' ' ')"
    fi
}

# Live update with Xen rings served (group `lu`, xs-host only): a PV guest up, watches held
# over the socket and over dom0's kernel ring, then three `xenstore-control live-update -f
# /usr/sbin/xenstored` (the same binary, as an update to it would run): the daemon keeps its
# pid, the tree (`xenstore-ls -f -p`) is the same after each, every watch event arrives once,
# dom0's kernel ring and the socket answer, and the guest's ring still works: `xl shutdown`
# (its kernel's watch on control/shutdown, served through the restored ring) powers it off
# and `@releaseDomain` lets xl see it gone. A fourth update whose new process refuses its
# command line must fail, the old binary taking the same state (rings included) back; a
# fifth, to a binary that passes the probe and then dies of a signal, too: the guardian
# starts the old binary with the state (under a new pid). test-xenstore runs in a loop over
# dom0's kernel ring across the first three updates, and must pass every run. Last, a restart
# with --state-file (lu_restart), after which the guest is shut down through its ring (and
# destroyed by hand: xl's monitor, a socket client, went with the restart).
# The tree as xenstore-ls -f -p shows it, but test-xenstore's nodes (dom0's xenstore-test,
# which it adds and removes meanwhile: xenstore-ls shows those it misses half, or not).
lu_tree() { t 10 xenstore-ls -f -p 2>/dev/null | grep '^/' | grep -v '^/local/domain/0/xenstore-test'; }
lu_restart() {
    local pid args state=/run/xenstored-state
    pid=$(daemon_pid)
    # Its command line without the program and the hidden options of an earlier update.
    args=$(tr '\0' '\n' <"/proc/$pid/cmdline" | tail -n +2 | grep -v '^--live-update-' | tr '\n' ' ')
    if ! t 120 xenstore-control live-update -c "$args --state-file $state" -f /usr/sbin/xenstored \
        >"$LOGS/lu-control.state" 2>&1; then
        why="live update adding --state-file: $(last_line "$LOGS/lu-control.state")"
        return
    fi
    lu_tree >"$LOGS/lu-before.restart"
    kill -TERM "$pid"
    if ! wait_until 10 eval '! kill -0 '"$pid"' 2>/dev/null'; then
        why="the daemon did not stop within 10 s of SIGTERM"
        return
    fi
    info "stopped with SIGTERM: $(wc -c <"$state" 2>/dev/null || echo no) bytes of state in $state"
    if [ ! -s "$state" ]; then
        why="no state in $state after SIGTERM"
        return
    fi
    # shellcheck disable=SC2086 # the daemon's own arguments, word by word
    if ! t 30 /usr/sbin/xenstored $args --state-file "$state" >"$LOGS/lu-restart.log" 2>&1; then
        why="the daemon did not start again: $(last_line "$LOGS/lu-restart.log")"
        return
    fi
    daemon_log "restored from"
    if ! wait_until 10 xs_read /local/domain/0/name; then
        why="the restarted daemon does not answer"
    elif [ -e "$state" ]; then
        why="$state is still there after the restart"
    elif ! lu_tree | cmp -s "$LOGS/lu-before.restart" -; then
        why="the tree changed across the restart"
    elif [ "$(XENSTORED_PATH=$RING t 10 xenstore-read "/local/domain/$domid/name" 2>&1)" != lu ]; then
        why="after the restart dom0's kernel ring does not answer"
    fi
}
live_update_rings() {
    local name=lu domid pid i rc w1 w2 out
    guest_cfg $name
    if ! t 120 xl create "/etc/xen/$name.cfg" >"$LOGS/$name.create.log" 2>&1; then
        why="xl create: $(first_error "$LOGS/$name.create.log")"
        return
    fi
    domid=$(t 10 xl domid $name 2>/dev/null)
    if ! wait_until 60 xs_equals "/local/domain/$domid/control/feature-poweroff" 1; then
        why="the guest did not come up (no control/feature-poweroff)"
        t 60 xl destroy $name >/dev/null 2>&1
        return
    fi
    pid=$(daemon_pid)
    t 10 xenstore-write -s /xen-rig/lu/w start
    # Each watcher exits after the initial event and the six writes below.
    t 120 xenstore-watch -n 7 /xen-rig/lu/w >"$LOGS/lu-watch-socket.out" 2>&1 &
    w1=$!
    XENSTORED_PATH=$RING t 120 xenstore-watch -n 7 /xen-rig/lu/w >"$LOGS/lu-watch-ring.out" 2>&1 &
    w2=$!
    sleep 1
    t 10 xenstore-write -s /xen-rig/lu/w 0
    # Xen's test-xenstore over dom0's kernel ring all through the three updates: its requests
    # and transactions cross them (its nodes, under dom0's xenstore-test, are left out of the
    # tree compared).
    rm -f "$LOGS/lu-tx.stop" "$LOGS/lu-tx.fail" "$LOGS/lu-tx.runs"
    (
        n=0
        while [ ! -e "$LOGS/lu-tx.stop" ]; do
            XENSTORED_PATH=$RING t 60 test-xenstore -i 2 >"$LOGS/lu-tx.log" 2>&1 ||
                echo "run $n exited $?: $(tail -n 2 "$LOGS/lu-tx.log" | tr '\n' ' ')" >>"$LOGS/lu-tx.fail"
            n=$((n + 1))
            echo $n >"$LOGS/lu-tx.runs"
        done
    ) &
    local txloop=$!
    sleep 1
    for i in 1 2 3; do
        lu_tree >"$LOGS/lu-before.$i"
        local start
        start=$(now_us)
        t 120 xenstore-control live-update -f /usr/sbin/xenstored >"$LOGS/lu-control.$i" 2>&1
        rc=$?
        info "live update $i: xenstore-control exited $rc after $(ms_since "$start") ms: $(tr '\n' ' ' <"$LOGS/lu-control.$i")"
        if [ $rc != 0 ]; then
            why="xenstore-control live-update $i exited $rc: $(last_line "$LOGS/lu-control.$i")"
            daemon_log live-update
            break
        fi
        if [ "$(daemon_pid)" != "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then
            why="after live update $i the daemon's pid is '$(daemon_pid)', was $pid"
            break
        fi
        lu_tree >"$LOGS/lu-after.$i"
        if ! cmp -s "$LOGS/lu-before.$i" "$LOGS/lu-after.$i"; then
            why="the tree changed across live update $i"
            diff "$LOGS/lu-before.$i" "$LOGS/lu-after.$i" | head -n 10 | sed 's/^/XEN-RIG-INFO diff: /'
            break
        fi
        out=$(XENSTORED_PATH=$RING t 10 xenstore-read "/local/domain/$domid/name" 2>&1)
        if [ "$out" != $name ]; then
            why="after live update $i dom0's kernel ring read '$out'"
            break
        fi
        t 10 xenstore-write -s /xen-rig/lu/w "$i"
    done
    touch "$LOGS/lu-tx.stop"
    wait $txloop
    info "test-xenstore over the kernel ring across the updates: $(cat "$LOGS/lu-tx.runs" 2>/dev/null) runs"
    if [ -z "$why" ] && [ -s "$LOGS/lu-tx.fail" ]; then
        why="test-xenstore over the kernel ring failed across the updates: $(head -n 1 "$LOGS/lu-tx.fail")"
    elif [ -z "$why" ] && [ "$(cat "$LOGS/lu-tx.runs" 2>/dev/null || echo 0)" -lt 2 ]; then
        why="test-xenstore over the kernel ring ran $(cat "$LOGS/lu-tx.runs" 2>/dev/null) times across the updates"
    fi
    # A new process that cannot take over (a command line it refuses) goes back to the old
    # binary, which takes the same state, rings included: the update fails, nothing else.
    if [ -z "$why" ]; then
        t 10 xenstore-ls -f -p >"$LOGS/lu-before.bad" 2>&1
        t 120 xenstore-control live-update -c "--no-such-option" -f /usr/sbin/xenstored \
            >"$LOGS/lu-control.bad" 2>&1
        rc=$?
        info "live update refused by the new process: xenstore-control exited $rc: $(tr '\n' ' ' <"$LOGS/lu-control.bad")"
        t 10 xenstore-ls -f -p >"$LOGS/lu-after.bad" 2>&1
        if [ $rc = 0 ]; then
            why="a live update whose new process refuses its command line succeeded"
        elif [ "$(daemon_pid)" != "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then
            why="after the failed update the daemon's pid is '$(daemon_pid)', was $pid"
        elif ! cmp -s "$LOGS/lu-before.bad" "$LOGS/lu-after.bad"; then
            why="the tree changed across the failed update"
        else
            t 10 xenstore-write -s /xen-rig/lu/w 4
        fi
    fi
    # A new binary that passes the probe and then dies of a signal: the guardian the old
    # process left starts the old binary with the same state (a new pid), which answers.
    if [ -z "$why" ]; then
        printf '#!/bin/sh\ncase "$1" in --live-update-probe) exec /usr/sbin/xenstored "$1" ;; esac\nkill -SEGV $$\n' \
            >/tmp/xenstored-dies
        chmod 755 /tmp/xenstored-dies
        t 10 xenstore-ls -f -p >"$LOGS/lu-before.dies" 2>&1
        t 120 xenstore-control live-update -f /tmp/xenstored-dies >"$LOGS/lu-control.dies" 2>&1
        rc=$?
        info "live update to a binary that dies: xenstore-control exited $rc: $(tr '\n' ' ' <"$LOGS/lu-control.dies")"
        wait_until 10 eval '[ "$(daemon_pid)" != "$pid" ] && kill -0 "$(daemon_pid)" 2>/dev/null'
        info "the daemon's pid was $pid, is $(daemon_pid)"
        t 10 xenstore-ls -f -p >"$LOGS/lu-after.dies" 2>&1
        if [ $rc = 0 ] || ! grep -q "died before it took over" "$LOGS/lu-control.dies"; then
            why="an update to a binary that dies exited $rc: $(last_line "$LOGS/lu-control.dies")"
        elif [ "$(daemon_pid)" = "$pid" ] || ! kill -0 "$(daemon_pid)" 2>/dev/null; then
            why="after the update to a binary that dies, no daemon in its place (pid '$(daemon_pid)')"
        elif ! cmp -s "$LOGS/lu-before.dies" "$LOGS/lu-after.dies"; then
            why="the tree changed across the update to a binary that dies"
        else
            t 10 xenstore-write -s /xen-rig/lu/w 5
        fi
    fi
    daemon_log "took over"
    daemon_log "again on port"
    if [ -z "$why" ]; then
        wait $w1 || why="the socket's watcher did not see its 7 events: $(tr '\n' ' ' <"$LOGS/lu-watch-socket.out")"
    fi
    if [ -z "$why" ]; then
        wait $w2 || why="the ring's watcher did not see its 7 events: $(tr '\n' ' ' <"$LOGS/lu-watch-ring.out")"
    fi
    if [ -z "$why" ]; then
        for f in socket ring; do
            out=$(wc -l <"$LOGS/lu-watch-$f.out")
            [ "$out" = 7 ] || why="the $f watcher printed $out lines, not 7: $(tr '\n' ' ' <"$LOGS/lu-watch-$f.out")"
        done
    fi
    kill $w1 $w2 2>/dev/null
    # A restart that keeps the store: a live update adds --state-file to the command line,
    # then SIGTERM; the daemon writes its state, rings included, and exits (the rings' event
    # channels close, leaving the guest's and the kernel's ports unbound); started again as
    # launch-xenstore starts it, it restores the file and binds every ring again.
    [ -z "$why" ] && lu_restart
    if [ -z "$why" ]; then
        if ! t 120 xl shutdown -w $name >"$LOGS/$name.shutdown.log" 2>&1; then
            why="after the updates and the restart xl shutdown -w failed: $(last_line "$LOGS/$name.shutdown.log")"
            show_console $name
        else
            # The restart dropped the socket clients, xl's monitor of the guest among them
            # (it would have destroyed the domain on its @releaseDomain): destroyed here.
            t 60 xl destroy $name >/dev/null 2>&1
            wait_until 30 domain_gone $name "$domid" ||
                why="after the updates and the restart the guest's nodes stayed after its destruction"
        fi
    fi
    t 60 xl destroy $name >/dev/null 2>&1
    t 10 xenstore-rm -s /xen-rig/lu >/dev/null 2>&1
}

# The guests' Linux as a PVH guest (group `pvh`, only when named: under this QEMU/TCG set-up
# it does not start, while our own PVH image does): it passes if the guest comes up as the
# PV one does; either way, what Xen saw is logged: the domain kept after a crash
# (on_crash, on_reboot, on_poweroff = "preserve") with its registers, Xen's lines about it,
# its console.
pvh_linux() {
    local domid
    guest_cfg pvh1
    sed -i -e 's/^type = "pv"/type = "pvh"/' -e 's/^on_\(crash\|reboot\|poweroff\) = .*/on_\1 = "preserve"/' \
        -e 's/^extra = .*/extra = "console=hvc0 earlyprintk=xen loglevel=8"/' /etc/xen/pvh1.cfg
    t 30 xl dmesg -c >/dev/null 2>&1
    if ! t 120 xl create /etc/xen/pvh1.cfg >"$LOGS/pvh1.create.log" 2>&1; then
        why="xl create failed: $(first_error "$LOGS/pvh1.create.log")"
        show_log "$LOGS/pvh1.create.log"
        return
    fi
    domid=$(t 10 xl domid pvh1 2>/dev/null)
    info "pvh1: domid $domid"
    wait_until 60 xs_equals "/local/domain/$domid/control/feature-poweroff" 1 ||
        why="no feature-poweroff within 60 s"
    t 30 xl list 2>&1 | sed 's/^/XEN-RIG-LOG xl list: /'
    t 30 xl dmesg 2>&1 | grep -v "(d$(daemon_pid))" | tail -n 40 | sed 's/^/XEN-RIG-LOG xl dmesg: /'
    if [ -n "$why" ] && [ -n "$domid" ]; then
        t 30 xen-hvmctx "$domid" 2>&1 | grep -iE ' rip|rsp|cr[0234]|rflags|efer' | head -n 12 |
            sed 's/^/XEN-RIG-LOG xen-hvmctx: /'
        t 30 xenctx -k 0 "$domid" 2>&1 | head -n 20 | sed 's/^/XEN-RIG-LOG xenctx: /'
    fi
    show_log "$LOGS/pvh1.create.log"
    show_console pvh1
    t 60 xl destroy pvh1 >/dev/null 2>&1
}

# --- the run ---------------------------------------------------------------------------------

if [ $STUB = 1 ]; then
    info "daemon $DAEMON: the stub domain /usr/lib/xen-rig/xs-stubdom ($(wc -c </usr/lib/xen-rig/xs-stubdom) bytes)"
else
    info "daemon $DAEMON as /usr/sbin/xenstored ($(wc -c </usr/sbin/xenstored) bytes)"
fi
scenario launch-xenstore launch_xenstore
ONLY_DOM0=$(only_dom0_nodes)
scenario xenstore-ready xenstore_ready
if [ $STORE_UP = 1 ]; then
    scenario xen-init-dom0 xen_init_dom0
    scenario xenconsoled xenconsoled_start
    scenario xl-info xl_info
    scenario xl-list xl_list
    if [ $STUB = 1 ]; then
        scenario stub-param stub_param
        scenario stub-memory stub_memory
        scenario stub-save-state stub_save_state
    fi
    if selected clients; then
        [ $STUB = 1 ] || scenario xenstore-socket client_suite socket
        scenario xenstore-ring client_suite ring
    fi
    if selected test-xenstore; then
        [ $STUB = 1 ] || scenario test-xenstore-socket test_xenstore socket
        scenario test-xenstore-ring test_xenstore ring
    fi
    if selected rtt; then
        [ $STUB = 1 ] || scenario rtt-socket rtt socket
        scenario rtt-ring rtt ring
    fi
else
    not_run "no XenStore answers" xen-init-dom0 xenconsoled xl-info xl-list "${DOM0_PLAN[@]}"
fi
if [ $XL_UP = 1 ]; then
    selected g1 && guest_life g1 g1 xen_create_1_pv
    selected g2 && guest_life g2 g2 ""
    if selected vbd; then
        truncate -s 32M "$GUEST_DIR/disk.img"
        guest_life vbd vbd "" "$GUEST_DIR/disk.img"
    fi
    selected pv8 && eight_guests
    selected cycles && cycles
    if selected hostile; then
        scenario hostile-ring hostile_ring
        scenario hostile-introduce hostile_introduce
    fi
    selected lu && [ "$DAEMON" = xs-host ] && scenario live-update-rings live_update_rings
    named pvh && scenario pvh-linux pvh_linux
else
    not_run "xl cannot reach the store" "${GUEST_PLAN[@]}"
fi
scenario xenstored-alive xenstored_alive
echo "XEN-RIG-END passed=$passed failed=$failed"
