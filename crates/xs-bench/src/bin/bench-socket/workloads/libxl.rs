//! What libxl writes when it makes a domain and adds its devices (the boot storm's
//! transactions).

use xs_bench::client::MsgType;
use xs_bench::host::{self, Base, Entry, TEMPLATE};

use super::requests::{guest_requests, req_path, req_perms, req_write};

/// Guest `d`'s `/vm/<uuid>` directory.
pub(super) fn vm_path(d: u32) -> Vec<u8> {
    let e = TEMPLATE
        .iter()
        .find(|e| e.base == Base::Vm && e.rel.is_empty());
    let mut p = Vec::new();
    if let Some(e) = e {
        host::push_path(e, u16::try_from(d).unwrap_or(u16::MAX), &mut p);
    }
    p
}

/// What libxl writes when it makes domain `d` (`libxl__domain_make`, simplified): its home
/// (without the device frontends), `/vm/<uuid>` and `/libxl/<d>`.
pub(super) fn domain_make_requests(d: u32) -> Vec<(MsgType, Vec<u8>)> {
    let home = format!("/local/domain/{d}");
    let mut reqs = vec![req_path(MsgType::Rm, home.as_bytes())];
    let entries: Vec<&Entry> = TEMPLATE
        .iter()
        .filter(|e| {
            (e.base == Base::Home
                && !e.rel.starts_with("device/vif")
                && !e.rel.starts_with("device/vbd"))
                || e.base == Base::Vm
        })
        .collect();
    guest_requests(&entries, d, &mut reqs);
    let libxl = format!("/libxl/{d}");
    reqs.push(req_path(MsgType::Mkdir, libxl.as_bytes()));
    reqs.push(req_perms(libxl.as_bytes(), &["n0".into()]));
    reqs
}

/// What libxl writes to add device `devid` of `kind` to domain `d`
/// (`libxl__device_generic_add`): removes stale frontend and backend directories, creates
/// them with their permissions and fields, and records them under `/libxl/<d>`.
pub(super) fn device_requests(d: u32, kind: &str, devid: u32) -> Vec<(MsgType, Vec<u8>)> {
    let fe = format!("/local/domain/{d}/device/{kind}/{devid}");
    let be = format!("/local/domain/0/backend/{kind}/{d}/{devid}");
    let mut reqs = vec![
        req_path(MsgType::Rm, fe.as_bytes()),
        req_path(MsgType::Rm, be.as_bytes()),
        req_path(MsgType::Mkdir, fe.as_bytes()),
        req_perms(fe.as_bytes(), &[format!("n{d}"), "r0".into()]),
        req_path(MsgType::Mkdir, be.as_bytes()),
        req_perms(be.as_bytes(), &["n0".into(), format!("r{d}")]),
    ];
    let mac = format!(
        "00:16:3e:{:02x}:{:02x}:{:02x}",
        (d >> 16) & 0x7f,
        (d >> 8) & 0xff,
        d & 0xff
    );
    let d_s = d.to_string();
    let devid_s = devid.to_string();
    let disk = format!("/dev/vg0/guest-{d:05}-disk");
    type Fields<'a> = Vec<(&'a str, &'a str)>;
    let (front, back): (Fields<'_>, Fields<'_>) = if kind == "vif" {
        (
            vec![
                ("backend", &be),
                ("backend-id", "0"),
                ("state", "1"),
                ("handle", &devid_s),
                ("mac", &mac),
            ],
            vec![
                ("frontend", &fe),
                ("frontend-id", &d_s),
                ("online", "1"),
                ("state", "1"),
                ("script", "/etc/xen/scripts/vif-bridge"),
                ("mac", &mac),
                ("bridge", "xenbr0"),
                ("handle", &devid_s),
                ("type", "vif"),
            ],
        )
    } else {
        (
            vec![
                ("backend", &be),
                ("backend-id", "0"),
                ("state", "1"),
                ("virtual-device", &devid_s),
                ("device-type", "disk"),
            ],
            vec![
                ("frontend", &fe),
                ("frontend-id", &d_s),
                ("online", "1"),
                ("removable", "0"),
                ("bootable", "1"),
                ("state", "1"),
                ("dev", "xvda"),
                ("type", "phy"),
                ("mode", "w"),
                ("device-type", "disk"),
                ("discard-enable", "1"),
                ("params", &disk),
                ("script", "/etc/xen/scripts/block"),
            ],
        )
    };
    for (base, fields) in [(&fe, &front), (&be, &back)] {
        for (k, v) in fields {
            reqs.push(req_write(format!("{base}/{k}").as_bytes(), v.as_bytes()));
        }
    }
    let libxl = format!("/libxl/{d}/device/{kind}/{devid}");
    reqs.push(req_write(
        format!("{libxl}/frontend").as_bytes(),
        fe.as_bytes(),
    ));
    reqs.push(req_write(
        format!("{libxl}/backend").as_bytes(),
        be.as_bytes(),
    ));
    reqs
}
