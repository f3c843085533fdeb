//! Namespace churn for `devlife torture`, checked as it goes: handles
//! kept across a device's deletion and re-creation, and directory listings
//! in progress while devices come and go.
//!
//! Every identity the kernel caches (a directory descriptor, an `O_PATH`
//! descriptor, the inode behind them) must never reach the object made
//! later in its place; a listing must show each entry that was neither
//! added nor removed while it ran exactly once. Both use devices of their
//! own (clients never touch them), so what the chaos thread did is all that
//! happened to them.

use super::write;
use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{Mode, OFlags, RawDir};
use rustix::io::Errno;
use std::collections::BTreeSet;
use std::mem::MaybeUninit;
use std::path::Path;

/// The devices the listing check makes (`lsNN`) and the one the handle
/// check re-creates.
const LISTED: usize = 40;
const RECREATED: &str = "rc0";

fn open_dir(p: &Path) -> Result<OwnedFd, Errno> {
    rustix::fs::open(p, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
}

/// What a handle to a removed object may answer.
fn gone(r: Result<(), Errno>) -> bool {
    matches!(r, Err(Errno::NOENT | Errno::STALE))
}

/// The first entry of a listing through `fd` (an error if it fails).
fn list_first(fd: impl AsFd) -> Result<(), Errno> {
    let mut buf = [MaybeUninit::uninit(); 1024];
    let mut d = RawDir::new(fd, &mut buf);
    match d.next() {
        Some(Err(e)) => Err(e),
        _ => Ok(()),
    }
}

/// Deletes and re-creates a device while handles to its directory, its
/// debugfs directory and its `uevent` are open; returns what went wrong.
pub(crate) fn handles_across_recreation(dir: &Path) -> Vec<String> {
    let mut bad = Vec::new();
    let ctl = |f: &str, t: &str| write(&dir.join("sys/bus/sim").join(f), t);
    let _ = ctl("new_device", &format!("xyz {RECREATED}"));
    let dev = dir.join("sys/bus/sim/devices").join(RECREATED);
    let Ok(devfd) = open_dir(&dev) else { return bad };
    let dbg = open_dir(&dir.join("debug/xyz").join(RECREATED)).ok();
    let uevent = rustix::fs::open(dev.join("uevent"), OFlags::PATH | OFlags::CLOEXEC, Mode::empty()).ok();
    if ctl("delete_device", RECREATED).is_err() || ctl("new_device", &format!("xyz {RECREATED}")).is_err() {
        return bad;
    }
    if !gone(list_first(&devfd)) {
        bad.push(format!("a listing of the old sys/bus/sim/devices/{RECREATED} did not fail ENOENT"));
    }
    let at = rustix::fs::openat(&devfd, "uevent", OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty());
    if !gone(at.map(drop)) {
        bad.push(format!("openat(old {RECREATED} dir, \"uevent\") reached the new device"));
    }
    if let Some(d) = dbg {
        if !gone(list_first(&d)) {
            bad.push(format!("a listing of the old debug/xyz/{RECREATED} did not fail ENOENT"));
        }
    }
    if let Some(u) = uevent {
        use rustix::fd::AsRawFd;
        let p = format!("/proc/self/fd/{}", u.as_raw_fd());
        let r = rustix::fs::open(p.as_str(), OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty());
        if !gone(r.map(drop)) {
            bad.push(format!("the old {RECREATED}/uevent, reopened through /proc, reached the new device"));
        }
    }
    let _ = ctl("delete_device", RECREATED);
    bad
}

/// Lists `sys/bus/sim/devices` in pieces while deleting some of what it
/// returned and adding devices; returns what went wrong.
pub(crate) fn listing_while_changing(dir: &Path, pick: u64) -> Vec<String> {
    let mut bad = Vec::new();
    let ctl = |f: &str, t: &str| write(&dir.join("sys/bus/sim").join(f), t);
    let names: Vec<String> = (0..LISTED).map(|i| format!("ls{i:02}")).collect();
    for n in &names {
        let _ = ctl("new_device", &format!("xyz {n}"));
    }
    let Ok(fd) = open_dir(&dir.join("sys/bus/sim/devices")) else { return bad };
    let mut buf = [MaybeUninit::uninit(); 512];
    let mut d = RawDir::new(&fd, &mut buf);
    let mut listed: Vec<String> = Vec::new();
    let next = |d: &mut RawDir<'_, &OwnedFd>| -> Option<Result<String, Errno>> {
        d.next().map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
    };
    // Part of the listing: up to 10 of ours.
    while listed.iter().filter(|n| n.starts_with("ls")).count() < 10 {
        match next(&mut d) {
            Some(Ok(n)) => listed.push(n),
            Some(Err(e)) => {
                bad.push(format!("listing failed: {e}"));
                return bad;
            }
            None => break,
        }
    }
    // Delete up to 5 of those already returned (from a seed-chosen start),
    // and add 3.
    let returned: Vec<String> = listed.iter().filter(|n| n.starts_with("ls")).cloned().collect();
    let mut deleted = BTreeSet::new();
    for k in 0..returned.len().min(5) {
        let n = &returned[(pick as usize + k) % returned.len()];
        if ctl("delete_device", n).is_ok() {
            deleted.insert(n.clone());
        }
    }
    for i in 0..3 {
        let _ = ctl("new_device", &format!("xyz lsnew{i}"));
    }
    loop {
        match next(&mut d) {
            Some(Ok(n)) => listed.push(n),
            Some(Err(e)) => {
                bad.push(format!("listing failed: {e}"));
                break;
            }
            None => break,
        }
    }
    let mut seen = BTreeSet::new();
    for n in &listed {
        if !seen.insert(n.clone()) {
            bad.push(format!("{n} listed twice"));
        }
    }
    for n in names.iter().filter(|n| !deleted.contains(*n)) {
        if !seen.contains(n) {
            bad.push(format!("{n} (never removed) missing from the listing"));
        }
    }
    for n in names.iter().chain(["lsnew0", "lsnew1", "lsnew2"].map(String::from).iter()) {
        let _ = ctl("delete_device", n);
    }
    bad
}
