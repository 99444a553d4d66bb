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
# DAEMON, TEST_XENSTORE_ITERATIONS, RTT_OPS, GUEST_MEM, ONLY (written by the host).
. /etc/xen-rig/config

SOCKET=/run/xenstored/socket            # XEN_RUN_STORED/socket: libxenstore's default
RING=/dev/xen/xenbus                    # dom0's kernel forwards it over dom0's ring
PIDFILE=/var/run/xen/xenstored.pid      # where launch-xenstore has the daemon write it
GUEST_DIR=/var/lib/xen-rig              # the guests' kernel, initrd and disk image
CONSOLE_DIR=/var/log/xen/console
LOGS=/tmp/xen-rig
GUEST_TIMEOUT=180                       # s for one guest to write feature-poweroff
GUEST8_TIMEOUT=480                      # s for eight concurrent ones
mkdir -p "$LOGS"

# The groups of scenarios, in the order they run; ONLY (from the host's --only) may pick
# some of clients, test-xenstore, rtt, g1, g2, vbd, pv8. The daemon's start, dom0's set-up
# and the final check always run.
selected() { [ -z "${ONLY:-}" ] || [[ " $ONLY " == *" $1 "* ]]; }
PLAN=(launch-xenstore xenstore-ready xen-init-dom0 xenconsoled xl-info xl-list)
DOM0_PLAN=()
selected clients && DOM0_PLAN+=(xenstore-socket xenstore-ring)
selected test-xenstore && DOM0_PLAN+=(test-xenstore-socket test-xenstore-ring)
selected rtt && DOM0_PLAN+=(rtt-socket rtt-ring)
GUEST_PLAN=()
for g in g1 g2; do
    selected $g && GUEST_PLAN+=("$g-create" "$g-feature-poweroff" "$g-console" "$g-shutdown" "$g-gone")
done
selected vbd && GUEST_PLAN+=(vbd-create vbd-feature-poweroff vbd-console vbd-backend-connected
    vbd-frontend-connected vbd-guest-xvda vbd-shutdown vbd-gone vbd-data)
selected pv8 && GUEST_PLAN+=(pv8-create pv8-feature-poweroff pv8-console pv8-destroy)
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
    [ -s "$PIDFILE" ] && pid=$(cat "$PIDFILE")
    if [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ]; then
        info "xenstored pid $pid: $(tr '\0' ' ' <"/proc/$pid/cmdline")"
    fi
    if [ "$rc" = 137 ]; then
        why="launch-xenstore did not return within 45 s (does the daemon fork and write $PIDFILE?)"
    elif [ "$rc" != 0 ]; then
        why="launch-xenstore exited $rc: $(last_line "$LOGS/launch-xenstore.log")"
    elif [ -z "$pid" ]; then
        why="no pid in $PIDFILE"
    elif ! kill -0 "$pid" 2>/dev/null; then
        why="the daemon (pid $pid) is not running"
    fi
    [ -z "$why" ] || show_log "$LOGS/launch-xenstore.log"
}

# As Debian's init script and Xen's old xencommons wait: `xenstore-read -s /`, 30 tries.
xenstore_ready() {
    local start i=0
    start=$(now_us)
    while [ $i -lt 30 ]; do
        if t 5 xenstore-read -s / >/dev/null 2>"$LOGS/ready.log"; then
            info "xenstore-read -s / answered after $(ms_since "$start") ms"
            STORE_UP=1
            return
        fi
        i=$((i + 1))
        sleep 1
    done
    why="xenstore-read -s / did not answer within 30 s: $(last_line "$LOGS/ready.log")"
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
    xen-rig-probe rtt "$path" "/xen-rig/rtt-$1" "$RTT_OPS" >"$log" 2>&1
    local rc=$?
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
    xen-rig-probe wait-feature "$SOCKET" "$2" "$3" "$LOGS/ready.$1" \
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
    local p=$1 name=$2 benchname=$3 disk=${4:-} domid="" rc start seen
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
        [ -n "$benchname" ] && bench "$benchname" "$(ms_since "$start" "$seen")" ms
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
    local names=() pids=() domids=() i n rc last=0 seen start bad=""
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
        [ "$(t 10 xenstore-list /local/domain 2>/dev/null | tr '\n' ' ')" = "0 " ] &&
            [ "$(t 30 xl list 2>/dev/null | wc -l)" = 2 ]
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

xenstored_alive() {
    local pid
    pid=$(cat "$PIDFILE" 2>/dev/null)
    if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then
        why="the daemon from $PIDFILE ('$pid') is not running"
    elif ! t 10 xenstore-read -s /local/domain/0/name >/dev/null 2>&1; then
        why="xenstore-read -s does not answer any more"
    else
        info "xenstored pid $pid at the end: $(grep -E '^(VmRSS|VmHWM)' "/proc/$pid/status" | tr -s ' \t' ' ' | tr '\n' ' ')"
    fi
}

# --- the run ---------------------------------------------------------------------------------

info "daemon $DAEMON as /usr/sbin/xenstored ($(wc -c </usr/sbin/xenstored) bytes)"
scenario launch-xenstore launch_xenstore
scenario xenstore-ready xenstore_ready
if [ $STORE_UP = 1 ]; then
    scenario xen-init-dom0 xen_init_dom0
    scenario xenconsoled xenconsoled_start
    scenario xl-info xl_info
    scenario xl-list xl_list
    if selected clients; then
        scenario xenstore-socket client_suite socket
        scenario xenstore-ring client_suite ring
    fi
    if selected test-xenstore; then
        scenario test-xenstore-socket test_xenstore socket
        scenario test-xenstore-ring test_xenstore ring
    fi
    if selected rtt; then
        scenario rtt-socket rtt socket
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
else
    not_run "xl cannot reach the store" "${GUEST_PLAN[@]}"
fi
scenario xenstored-alive xenstored_alive
echo "XEN-RIG-END passed=$passed failed=$failed"
