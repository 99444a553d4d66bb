//! A realistic XenStore tree: a Xen host running N guests as libxl lays them out.
//!
//! Each guest `<d>` (domids 1..=N) gets what libxl (`libxl__domain_make`,
//! `libxl__device_generic_add`) and the guest's own drivers write for a PV guest with one
//! network and one disk device (`docs/misc/xenstore-paths.pandoc`):
//!
//! * `/local/domain/<d>`: `vm`, `name`, `domid`, `cpu/*`, `memory/*`, `control/*`,
//!   `platform/*`, the guest-writable `data`/`drivers`/`attr`/`error`, `store/*`,
//!   `console/*`, and the frontends `device/vif/0` and `device/vbd/51712`;
//! * the backends `/local/domain/0/backend/vif/<d>/0` and `/local/domain/0/backend/vbd/<d>/51712`;
//! * `/vm/<uuid>` with a few nodes.
//!
//! Permissions are libxl's: toolstack nodes `[n0, r<d>]`, guest-writable nodes `[n<d>]`,
//! frontends `[n<d>, r0]`, backends `[n0, r<d>]`. The tree is built through the ordinary API
//! (`mkdir`/`write`, then `set_perms` where the inherited permissions are not the wanted ones),
//! as a toolstack does, and each guest is introduced once its nodes exist.
//!
//! Values have realistic sizes: paths, MAC addresses, small numbers.

use std::io::Write as _;

use xs_core::store::Introduction;
use xs_core::{Access, ConnId, DomId, Perm, Store, XsError, XsResult};

/// Where a template entry's path starts.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Base {
    /// `/local/domain/<d>`
    Home,
    /// `/local/domain/0/backend/vif/<d>`
    VifBackend,
    /// `/local/domain/0/backend/vbd/<d>`
    VbdBackend,
    /// `/vm/<uuid of d>`
    Vm,
}

/// The permissions a template entry is given.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Perms {
    /// Whatever the node inherits from its parent on creation (no `SET_PERMS`).
    Inherit,
    /// Toolstack-owned, readable by the guest: `[n0, r<d>]` (also backends and `/vm`).
    Toolstack,
    /// Owned by the guest: `[n<d>]`.
    Guest,
    /// A frontend directory: owned by the guest, readable by the backend domain: `[n<d>, r0]`.
    Frontend,
}

/// A template entry's value.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Value {
    /// A directory (created with `MKDIR`, empty value).
    Dir,
    /// Literal text.
    Text(&'static str),
    /// The domid in decimal.
    DomId,
    /// The guest's name.
    Name,
    /// `/vm/<uuid>`.
    VmPath,
    /// The guest's UUID.
    Uuid,
    /// The vif's MAC address.
    Mac,
    /// Path of the vif's backend.
    VifBackendPath,
    /// Path of the vbd's backend.
    VbdBackendPath,
    /// Path of the vif's frontend.
    VifFrontendPath,
    /// Path of the vbd's frontend.
    VbdFrontendPath,
    /// The disk's block device.
    DiskParams,
    /// The disk's `major:minor` in hex.
    PhysicalDevice,
}

/// One node of a guest's layout.
#[derive(Clone, Copy, Debug)]
pub struct Entry {
    /// Where the path starts.
    pub base: Base,
    /// The path below the base (empty for the base itself).
    pub rel: &'static str,
    /// The value.
    pub value: Value,
    /// The permissions.
    pub perms: Perms,
    /// A directory a client would typically list (moderate number of children).
    pub listable: bool,
}

impl Entry {
    /// Whether the entry is a leaf (it has a value, no children).
    pub fn is_leaf(&self) -> bool {
        self.value != Value::Dir
    }
}

const fn dir(base: Base, rel: &'static str, perms: Perms) -> Entry {
    Entry {
        base,
        rel,
        value: Value::Dir,
        perms,
        listable: false,
    }
}

const fn listed(base: Base, rel: &'static str, perms: Perms) -> Entry {
    Entry {
        base,
        rel,
        value: Value::Dir,
        perms,
        listable: true,
    }
}

const fn leaf(base: Base, rel: &'static str, value: Value) -> Entry {
    Entry {
        base,
        rel,
        value,
        perms: Perms::Inherit,
        listable: false,
    }
}

const fn text(base: Base, rel: &'static str, value: &'static str) -> Entry {
    leaf(base, rel, Value::Text(value))
}

const fn guest(base: Base, rel: &'static str, value: &'static str) -> Entry {
    Entry {
        base,
        rel,
        value: Value::Text(value),
        perms: Perms::Guest,
        listable: false,
    }
}

use Base::{Home as H, VbdBackend as VBD, VifBackend as VIF, Vm as VM};

/// The nodes of one guest, parents before children.
pub const TEMPLATE: &[Entry] = &[
    listed(H, "", Perms::Toolstack),
    leaf(H, "vm", Value::VmPath),
    leaf(H, "name", Value::Name),
    leaf(H, "domid", Value::DomId),
    dir(H, "cpu", Perms::Inherit),
    dir(H, "cpu/0", Perms::Inherit),
    text(H, "cpu/0/availability", "online"),
    dir(H, "cpu/1", Perms::Inherit),
    text(H, "cpu/1/availability", "online"),
    listed(H, "memory", Perms::Inherit),
    text(H, "memory/static-max", "2097152"),
    text(H, "memory/target", "2096128"),
    text(H, "memory/videoram", "-1"),
    listed(H, "control", Perms::Inherit),
    guest(H, "control/shutdown", ""),
    guest(H, "control/feature-poweroff", "1"),
    guest(H, "control/feature-reboot", "1"),
    guest(H, "control/feature-suspend", "1"),
    guest(H, "control/sysrq", ""),
    text(H, "control/platform-feature-multiprocessor-suspend", "1"),
    text(H, "control/platform-feature-xs_reset_watches", "1"),
    dir(H, "platform", Perms::Inherit),
    text(H, "platform/acpi", "1"),
    text(H, "platform/acpi_s3", "0"),
    text(H, "platform/acpi_s4", "0"),
    dir(H, "data", Perms::Guest),
    dir(H, "drivers", Perms::Guest),
    dir(H, "attr", Perms::Guest),
    dir(H, "error", Perms::Guest),
    listed(H, "device", Perms::Inherit),
    dir(H, "device/suspend", Perms::Inherit),
    guest(H, "device/suspend/event-channel", ""),
    dir(H, "device/vif", Perms::Inherit),
    listed(H, "device/vif/0", Perms::Frontend),
    leaf(H, "device/vif/0/backend", Value::VifBackendPath),
    text(H, "device/vif/0/backend-id", "0"),
    text(H, "device/vif/0/state", "4"),
    text(H, "device/vif/0/handle", "0"),
    leaf(H, "device/vif/0/mac", Value::Mac),
    text(H, "device/vif/0/mtu", "1500"),
    text(H, "device/vif/0/tx-ring-ref", "1280"),
    text(H, "device/vif/0/rx-ring-ref", "1281"),
    text(H, "device/vif/0/event-channel", "12"),
    text(H, "device/vif/0/request-rx-copy", "1"),
    text(H, "device/vif/0/feature-rx-notify", "1"),
    text(H, "device/vif/0/feature-sg", "1"),
    dir(H, "device/vbd", Perms::Inherit),
    listed(H, "device/vbd/51712", Perms::Frontend),
    leaf(H, "device/vbd/51712/backend", Value::VbdBackendPath),
    text(H, "device/vbd/51712/backend-id", "0"),
    text(H, "device/vbd/51712/state", "4"),
    text(H, "device/vbd/51712/virtual-device", "51712"),
    text(H, "device/vbd/51712/device-type", "disk"),
    text(H, "device/vbd/51712/ring-ref", "8"),
    text(H, "device/vbd/51712/event-channel", "13"),
    text(H, "device/vbd/51712/protocol", "x86_64-abi"),
    dir(H, "store", Perms::Inherit),
    text(H, "store/port", "1"),
    text(H, "store/ring-ref", "1044476"),
    dir(H, "console", Perms::Inherit),
    text(H, "console/port", "2"),
    text(H, "console/ring-ref", "1044479"),
    text(H, "console/type", "xenconsoled"),
    text(H, "console/limit", "1048576"),
    // The network backend.
    dir(VIF, "", Perms::Inherit),
    listed(VIF, "0", Perms::Toolstack),
    leaf(VIF, "0/frontend", Value::VifFrontendPath),
    leaf(VIF, "0/frontend-id", Value::DomId),
    text(VIF, "0/online", "1"),
    text(VIF, "0/state", "4"),
    text(VIF, "0/script", "/etc/xen/scripts/vif-bridge"),
    leaf(VIF, "0/mac", Value::Mac),
    text(VIF, "0/bridge", "xenbr0"),
    text(VIF, "0/handle", "0"),
    text(VIF, "0/type", "vif"),
    text(VIF, "0/hotplug-status", "connected"),
    text(VIF, "0/feature-sg", "1"),
    text(VIF, "0/feature-rx-copy", "1"),
    text(VIF, "0/multi-queue-max-queues", "2"),
    // The disk backend.
    dir(VBD, "", Perms::Inherit),
    listed(VBD, "51712", Perms::Toolstack),
    leaf(VBD, "51712/frontend", Value::VbdFrontendPath),
    leaf(VBD, "51712/frontend-id", Value::DomId),
    text(VBD, "51712/online", "1"),
    text(VBD, "51712/state", "4"),
    leaf(VBD, "51712/params", Value::DiskParams),
    text(VBD, "51712/script", "/etc/xen/scripts/block"),
    leaf(VBD, "51712/physical-device", Value::PhysicalDevice),
    text(VBD, "51712/mode", "w"),
    text(VBD, "51712/removable", "0"),
    text(VBD, "51712/bootable", "1"),
    text(VBD, "51712/type", "phy"),
    text(VBD, "51712/dev", "xvda"),
    text(VBD, "51712/device-type", "disk"),
    text(VBD, "51712/sectors", "41943040"),
    text(VBD, "51712/sector-size", "512"),
    text(VBD, "51712/feature-flush-cache", "1"),
    text(VBD, "51712/hotplug-status", "connected"),
    // The VM's record.
    dir(VM, "", Perms::Toolstack),
    leaf(VM, "uuid", Value::Uuid),
    leaf(VM, "name", Value::Name),
    text(VM, "start_time", "1718031337.42"),
    dir(VM, "image", Perms::Inherit),
    text(VM, "image/ostype", "linux"),
];

/// Host-wide nodes created before the guests (all `[n0]`, as inherited from `/`).
const HOST_NODES: &[(&str, &str)] = &[
    ("/local", ""),
    ("/local/domain", ""),
    ("/local/domain/0", ""),
    ("/local/domain/0/name", "Domain-0"),
    ("/local/domain/0/domid", "0"),
    ("/local/domain/0/memory", ""),
    ("/local/domain/0/memory/target", "4194304"),
    ("/local/domain/0/memory/static-max", "4194304"),
    ("/local/domain/0/backend", ""),
    ("/local/domain/0/backend/vif", ""),
    ("/local/domain/0/backend/vbd", ""),
    ("/vm", ""),
];

/// Nodes of a fresh [`Store`] (`/`, `/tool`, `/tool/xenstored`).
const STORE_NODES: usize = 3;

/// A host with guests 1..=`domains`.
#[derive(Clone, Copy, Debug)]
pub struct Host {
    /// Number of guests.
    pub domains: u16,
}

impl Host {
    /// The host whose tree has about `nodes` nodes (at least one guest).
    pub fn for_nodes(nodes: usize) -> Host {
        let fixed = STORE_NODES + HOST_NODES.len();
        let per = TEMPLATE.len();
        let domains = (nodes.saturating_sub(fixed) + per / 2) / per;
        // Guests are numbered from 1 and must stay below the reserved domids.
        let most = usize::from(DomId::FIRST_RESERVED.0 - 1);
        Host {
            domains: u16::try_from(domains.clamp(1, most)).unwrap_or(1),
        }
    }

    /// The node count of the built tree.
    pub fn node_count(&self) -> usize {
        STORE_NODES + HOST_NODES.len() + usize::from(self.domains) * TEMPLATE.len()
    }

    /// Nodes per guest.
    pub fn nodes_per_domain() -> usize {
        TEMPLATE.len()
    }

    /// The guests' domids.
    pub fn domids(&self) -> impl Iterator<Item = u16> + use<> {
        1..=self.domains
    }

    /// A random guest's domid.
    pub fn random_domid(&self, rng: &mut fastrand::Rng) -> u16 {
        rng.u16(1..=self.domains)
    }

    /// Builds the tree through `conn` (a privileged connection) into `store`, which should
    /// have been created with `domain_nodes: false` (the toolstack creates the nodes).
    pub fn build(&self, store: &mut Store, conn: ConnId) -> XsResult<()> {
        for (path, value) in HOST_NODES {
            store.write(conn, 0, path.as_bytes(), value.as_bytes())?;
        }
        let mut path = Vec::with_capacity(128);
        let mut value = Vec::with_capacity(128);
        for d in self.domids() {
            for entry in TEMPLATE {
                path.clear();
                push_path(entry, d, &mut path);
                if entry.value == Value::Dir {
                    store.mkdir(conn, 0, &path)?;
                } else {
                    value.clear();
                    push_value(entry.value, d, &mut value);
                    store.write(conn, 0, &path, &value)?;
                }
                if let Some(perms) = perm_list(entry.perms, DomId(d)) {
                    store.set_perms(conn, 0, &path, &perms)?;
                }
            }
            let intro = Introduction {
                gfn: 0xfeffc,
                evtchn: 1,
            };
            store.introduce(conn, DomId(d), intro)?;
        }
        Ok(())
    }
}

/// A lighter tree for what only needs many domains: dom0's and guests 1..=`domains`' home
/// directories (`[n0, r<d>]`) with their `name` and `domid`.
pub fn build_homes(store: &mut Store, conn: ConnId, domains: u16) -> XsResult<()> {
    store.mkdir(conn, 0, b"/local/domain/0")?;
    let (mut path, mut value) = (Vec::new(), Vec::new());
    for d in 1..=domains {
        path.clear();
        let _ = write!(path, "/local/domain/{d}");
        store.mkdir(conn, 0, &path)?;
        let perms = [Perm::owner(DomId::DOM0), Perm::new(DomId(d), Access::READ)];
        store.set_perms(conn, 0, &path, &perms)?;
        let home = path.len();
        for (name, kind) in [("name", Value::Name), ("domid", Value::DomId)] {
            path.truncate(home);
            path.push(b'/');
            path.extend_from_slice(name.as_bytes());
            value.clear();
            push_value(kind, d, &mut value);
            store.write(conn, 0, &path, &value)?;
        }
    }
    Ok(())
}

/// The permission list of a class for guest `d`, or `None` to keep the inherited one.
pub fn perm_list(perms: Perms, d: DomId) -> Option<Vec<Perm>> {
    match perms {
        Perms::Inherit => None,
        Perms::Toolstack => Some(vec![Perm::owner(DomId::DOM0), Perm::new(d, Access::READ)]),
        Perms::Guest => Some(vec![Perm::owner(d)]),
        Perms::Frontend => Some(vec![Perm::owner(d), Perm::new(DomId::DOM0, Access::READ)]),
    }
}

/// Appends the path of `entry` for guest `d`.
pub fn push_path(entry: &Entry, d: u16, out: &mut Vec<u8>) {
    match entry.base {
        Base::Home => {
            let _ = write!(out, "/local/domain/{d}");
        }
        Base::VifBackend => {
            let _ = write!(out, "/local/domain/0/backend/vif/{d}");
        }
        Base::VbdBackend => {
            let _ = write!(out, "/local/domain/0/backend/vbd/{d}");
        }
        Base::Vm => {
            out.extend_from_slice(b"/vm/");
            push_uuid(d, out);
        }
    }
    if !entry.rel.is_empty() {
        out.push(b'/');
        out.extend_from_slice(entry.rel.as_bytes());
    }
}

/// Appends the value of an entry for guest `d`.
pub fn push_value(value: Value, d: u16, out: &mut Vec<u8>) {
    let _ = match value {
        Value::Dir => Ok(()),
        Value::Text(t) => out.write_all(t.as_bytes()),
        Value::DomId => write!(out, "{d}"),
        Value::Name => write!(out, "guest-{d:05}"),
        Value::VmPath => {
            out.extend_from_slice(b"/vm/");
            push_uuid(d, out);
            Ok(())
        }
        Value::Uuid => {
            push_uuid(d, out);
            Ok(())
        }
        Value::Mac => write!(
            out,
            "00:16:3e:{:02x}:{:02x}:{:02x}",
            0x80 | (d >> 15),
            (d >> 8) & 0x7f,
            d & 0xff
        ),
        Value::VifBackendPath => write!(out, "/local/domain/0/backend/vif/{d}/0"),
        Value::VbdBackendPath => write!(out, "/local/domain/0/backend/vbd/{d}/51712"),
        Value::VifFrontendPath => write!(out, "/local/domain/{d}/device/vif/0"),
        Value::VbdFrontendPath => write!(out, "/local/domain/{d}/device/vbd/51712"),
        Value::DiskParams => write!(out, "/dev/vg0/guest-{d:05}-disk"),
        Value::PhysicalDevice => write!(out, "fd:{d:x}"),
    };
}

/// Appends a UUID derived from `d` (random-looking, the same on every run).
fn push_uuid(d: u16, out: &mut Vec<u8>) {
    let mut rng = fastrand::Rng::with_seed(u64::from(d));
    let a = rng.u64(..);
    let b = rng.u64(..);
    let _ = write!(
        out,
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        0x8000 | ((b >> 48) & 0x3fff),
        b & 0xffff_ffff_ffff
    );
}

/// Lists all children of `path` into `names` (NUL-terminated names, as `DIRECTORY` returns
/// them) through `DIRECTORY_PART`, which works for directories of any size (`DIRECTORY` fails
/// with `E2BIG` past 4096 bytes of names). Restarts if the directory changes in between, as
/// clients do. `scratch` is a reusable reply buffer. Returns the number of requests made.
pub fn directory_all(
    store: &mut Store,
    conn: ConnId,
    path: &[u8],
    names: &mut Vec<u8>,
    scratch: &mut Vec<u8>,
) -> XsResult<usize> {
    names.clear();
    let mut requests = 0usize;
    let mut offset = 0usize;
    let mut generation = [0u8; 24];
    let mut generation_len = 0usize;
    loop {
        scratch.clear();
        store.directory_part(conn, 0, path, offset, scratch)?;
        requests += 1;
        let sep = scratch.iter().position(|&b| b == 0).ok_or(XsError::Io)?;
        let (gen_text, body) = (&scratch[..sep], &scratch[sep + 1..]);
        if offset == 0 {
            generation_len = gen_text.len().min(generation.len());
            generation[..generation_len].copy_from_slice(&gen_text[..generation_len]);
        } else if gen_text != &generation[..generation_len] {
            names.clear();
            offset = 0;
            continue;
        }
        let last = body == b"\0" || body.ends_with(b"\0\0");
        let chunk = if last { &body[..body.len() - 1] } else { body };
        if chunk.is_empty() && !last {
            return Err(XsError::Io);
        }
        names.extend_from_slice(chunk);
        offset += chunk.len();
        if last {
            return Ok(requests);
        }
    }
}

/// What the nodes of a tree hold, as the issue counts payload: name + value + 3 bytes per
/// permission entry.
#[derive(Clone, Copy, Debug, Default)]
pub struct Payload {
    /// Nodes visited.
    pub nodes: usize,
    /// Sum of name lengths (the last path segment).
    pub name_bytes: usize,
    /// Sum of value lengths.
    pub value_bytes: usize,
    /// Sum of permission entries.
    pub perm_entries: usize,
}

impl Payload {
    /// Payload bytes.
    pub fn bytes(&self) -> usize {
        self.name_bytes + self.value_bytes + 3 * self.perm_entries
    }
}

/// Walks the whole tree (through a privileged `conn`) and adds up its payload.
pub fn payload(store: &mut Store, conn: ConnId) -> XsResult<Payload> {
    let mut total = Payload::default();
    let mut stack: Vec<Vec<u8>> = vec![b"/".to_vec()];
    let (mut value, mut names, mut scratch) = (Vec::new(), Vec::new(), Vec::new());
    while let Some(path) = stack.pop() {
        value.clear();
        store.read(conn, 0, &path, &mut value)?;
        let perms = store.get_perms(conn, 0, &path)?;
        directory_all(store, conn, &path, &mut names, &mut scratch)?;
        let name_len = path
            .iter()
            .rposition(|&b| b == b'/')
            .map_or(0, |i| path.len() - i - 1);
        total.nodes += 1;
        total.name_bytes += name_len;
        total.value_bytes += value.len();
        total.perm_entries += perms.len();
        for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
            let mut child = path.clone();
            if child != b"/" {
                child.push(b'/');
            }
            child.extend_from_slice(name);
            stack.push(child);
        }
    }
    Ok(total)
}
