//! Fuzz harnesses, shared by the cargo-fuzz targets (`fuzz/`) and the
//! `cargo test` replay of their corpus (`tests/fuzz_corpus.rs`).
//!
//! Each takes arbitrary bytes and must neither panic nor, when it refuses
//! the input, change any state.

use crate::serve::{SIM_BUS, default_system};
use devlife_core::{Caller, System, store};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, OnceLock};

/// Decodes `data` as a request read from `/dev/fuse`, and as one taken from
/// an io_uring entry (its first 288 bytes the entry's header buffer, the
/// rest its payload).
pub fn decode(data: &[u8]) {
    use devlife_fuse::abi::uring::ReqHeader;
    use zerocopy::FromZeros;
    if let Ok(req) = devlife_fuse::decode::decode(data) {
        // The decoded lengths are within the input.
        assert!(req.header.len as usize == data.len());
    }
    let mut entry = ReqHeader::new_zeroed();
    let n = data.len().min(size_of::<ReqHeader>());
    zerocopy::IntoBytes::as_mut_bytes(&mut entry)[..n].copy_from_slice(&data[..n]);
    let payload = &data[n..];
    if let Ok(req) = devlife_fuse::decode::decode_ring(&entry, payload) {
        // The header's length covers the payload and at most the argument area.
        let len = req.header.len as usize;
        assert!(len >= 40 + payload.len() && len <= 40 + 128 + payload.len());
    }
}

struct Rig {
    sys: System,
    stores: Vec<devlife_core::debugfs::Dentry>,
}

fn rig() -> &'static Rig {
    static RIG: OnceLock<Rig> = OnceLock::new();
    RIG.get_or_init(|| {
        let sys = default_system(0, 0).expect("the default system builds");
        let root = sys.debugfs();
        let stores = vec![
            root.create_u64("fuzz_u64", 0o600, Arc::new(AtomicU64::new(0))).expect("debugfs u64"),
            root.create_bool("fuzz_bool", 0o600, Arc::new(AtomicBool::new(false))).expect("debugfs bool"),
        ];
        Rig { sys, stores }
    })
}

/// Everything a control write can change.
fn snapshot(sys: &System) -> Vec<String> {
    let mut v: Vec<String> = sys
        .buses()
        .iter()
        .flat_map(|b| b.devices().into_iter().map(|d| format!("dev {} {:?}", d.name(), d.driver_name())))
        .collect();
    v.extend(sys.dev_nodes().into_iter().map(|n| format!("node {} {}", n.name, n.devt)));
    v
}

/// Applies `data[1..]` as a write to the control file or store selected by
/// `data[0]`; a refused write must leave everything as it was.
pub fn control(data: &[u8]) {
    let Some((&which, text)) = data.split_first() else { return };
    let r = rig();
    let Some(bus) = r.sys.bus(SIM_BUS) else { return };
    // The stores behind sys/bus/sim/drivers/xyz/{bind,unbind} and
    // sys/bus/sim/{new,delete}_device.
    let before = snapshot(&r.sys);
    let target = match which % 6 {
        0 => Some(("bind", store::bind_store(&bus, "xyz", text))),
        1 => Some(("unbind", store::unbind_store(&bus, "xyz", text))),
        2 => Some(("new_device", store::new_device_store(&bus, text))),
        3 => Some(("delete_device", store::delete_device_store(&bus, text))),
        _ => None,
    };
    match target {
        Some((name, result)) => {
            if result.is_err() {
                assert_eq!(before, snapshot(&r.sys), "a refused {name} write changed state");
            }
        }
        None => {
            let store = &r.stores[usize::from(which % 6 - 4)];
            let Some(node) = store.node() else { return };
            let f = node.open(&Caller::default()).expect("open a store");
            let mut before = vec![0u8; 64];
            let n = f.read(&mut before, 0, &Caller::default()).expect("read a store");
            before.truncate(n);
            if f.write(text, 0, &Caller::default()).is_err() {
                let mut after = vec![0u8; 64];
                let n = f.read(&mut after, 0, &Caller::default()).expect("read a store");
                after.truncate(n);
                assert_eq!(before, after, "a refused store changed the value");
            }
        }
    }
    // Keep the system small over millions of inputs.
    if let Some(b) = r.sys.bus("sim") {
        for d in b.devices().into_iter().skip(16) {
            let _ = b.delete_device(d.name());
        }
    }
}
