//! Every VFS operation on every kind of entry of the served tree, against
//! the table in `docs/ARCHITECTURE.md` ("What every VFS operation
//! answers"): the table is the expectation, read from the document, so
//! the document cannot drift from what the server does.
//!
//! Run as root (as CI does): root bypasses modes in the VFS permission
//! check, so what is seen is the server's own answer. As another user the
//! test only checks that the table parses.

mod common;

use common::*;
use rustix::fd::OwnedFd;
use rustix::fs::{AtFlags, Mode, OFlags, Timestamps};
use rustix::io::Errno;
use std::collections::BTreeMap;
use std::path::Path;

/// The kinds of entry (the table's columns), each with the sample path
/// the test uses, relative to the mount.
const KINDS: &[(&str, &str)] = &[
    ("device node", "dev/xyz0"),
    ("attribute", "sys/bus/sim/devices/xyz0/count"),
    ("control file", "sys/bus/sim/drivers/xyz/bind"),
    ("debugfs file", "debug/xyz/xyz0/ops"),
    ("directory", "sys/bus/sim/devices/xyz0"),
    ("symlink", "sys/bus/sim/devices/xyz0/driver"),
    ("generated text", "sys/class/xyz/xyz0/dev"),
];

/// The table as the document has it: operation -> kind -> expected cell
/// (`0`, an errno name, or `—` for not applicable).
fn doc_table() -> BTreeMap<String, BTreeMap<String, String>> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/ARCHITECTURE.md"))
        .expect("docs/ARCHITECTURE.md");
    let start = doc.find("<!-- vfs-table -->").expect("the vfs-table marker in ARCHITECTURE.md");
    let rows: Vec<Vec<String>> = doc[start..]
        .lines()
        .skip(1)
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .map(cells)
        .collect();
    let header = &rows[0];
    assert_eq!(header[0], "operation");
    let kinds: Vec<&str> = KINDS.iter().map(|k| k.0).collect();
    assert_eq!(&header[1..], kinds.as_slice(), "the table's columns are the kinds, in order");
    rows[2..]
        .iter()
        .map(|r| {
            assert_eq!(r.len(), header.len(), "row {r:?}");
            let cells = header[1..].iter().cloned().zip(r[1..].iter().cloned()).collect();
            (r[0].clone(), cells)
        })
        .collect()
}

/// The cells of one Markdown table row (`\|` is a `|` inside a cell).
fn cells(line: &str) -> Vec<String> {
    let inner = line.trim().trim_start_matches('|').trim_end_matches('|');
    let mut out = vec![String::new()];
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'|') => out.last_mut().unwrap().push(chars.next().unwrap()),
            '|' => out.push(String::new()),
            c => out.last_mut().unwrap().push(c),
        }
    }
    out.into_iter().map(|c| c.trim().trim_matches('`').to_owned()).collect()
}

fn code(r: Result<(), Errno>) -> String {
    match r {
        Ok(()) => "0".to_owned(),
        Err(e) => errno_name(e),
    }
}

fn errno_name(e: Errno) -> String {
    // The driver core's names for Linux's numbers (`ENODEV`).
    let n = devlife_core::Errno::from_raw(e.raw_os_error());
    n.name().map_or_else(|| format!("{e:?}"), str::to_owned)
}

fn open(p: &Path, flags: OFlags) -> Result<OwnedFd, Errno> {
    rustix::fs::open(p, flags | OFlags::CLOEXEC | OFlags::NONBLOCK, Mode::from_raw_mode(0o644))
}

/// Runs operation `op` on the entry at `p` (of kind `kind`); `None` if the
/// test does not know the operation.
fn run(op: &str, kind: &str, p: &Path) -> Option<String> {
    use OFlags as O;
    let beside = |name: &str| p.with_file_name(name);
    let inside = |name: &str| p.join(name);
    let r: Result<(), Errno> = match op {
        "lstat" => rustix::fs::statat(rustix::fs::CWD, p, AtFlags::SYMLINK_NOFOLLOW).map(drop),
        "open(O_RDONLY)" => open(p, O::RDONLY).map(drop),
        "open(O_WRONLY)" => open(p, O::WRONLY).map(drop),
        "open(O_RDWR)" => open(p, O::RDWR).map(drop),
        "open(O_WRONLY|O_TRUNC)" => open(p, O::WRONLY | O::TRUNC).map(drop),
        "open(O_CREAT|O_WRONLY)" => open(p, O::CREATE | O::WRONLY).map(drop),
        "open(O_CREAT) of a new name in it" => open(&inside("new"), O::CREATE | O::WRONLY).map(drop),
        "mkdir in it" => rustix::fs::mkdir(inside("new"), Mode::from_raw_mode(0o755)),
        "mknod(S_IFREG) in it" => rustix::fs::mknodat(
            rustix::fs::CWD,
            inside("new"),
            rustix::fs::FileType::RegularFile,
            Mode::from_raw_mode(0o644),
            0,
        ),
        "mkfifo in it" => rustix::fs::mknodat(
            rustix::fs::CWD,
            inside("new"),
            rustix::fs::FileType::Fifo,
            Mode::from_raw_mode(0o644),
            0,
        ),
        "symlink in it" => rustix::fs::symlink("target", inside("new")),
        "rmdir" => rustix::fs::unlinkat(rustix::fs::CWD, p, AtFlags::REMOVEDIR),
        "unlink" => rustix::fs::unlink(p),
        "rename beside it" => rustix::fs::rename(p, beside("renamed")),
        "link beside it" => {
            rustix::fs::linkat(rustix::fs::CWD, p, rustix::fs::CWD, beside("linked"), AtFlags::empty())
        }
        "chmod" => rustix::fs::chmod(p, Mode::from_raw_mode(0o666)),
        "lchown" => rustix::fs::chownat(
            rustix::fs::CWD,
            p,
            Some(rustix::process::Uid::from_raw(1)),
            None,
            AtFlags::SYMLINK_NOFOLLOW,
        ),
        "utimensat" => {
            let t = rustix::fs::Timespec { tv_sec: 1_000_000, tv_nsec: 0 };
            rustix::fs::utimensat(
                rustix::fs::CWD,
                p,
                &Timestamps { last_access: t, last_modification: t },
                AtFlags::SYMLINK_NOFOLLOW,
            )
        }
        "truncate(0)" => {
            // truncate(2) of the path, as `truncate -s 0` does.
            let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
            // SAFETY: `c` is a NUL-terminated path that lives across the call.
            let rc = unsafe { libc::truncate(c.as_ptr(), 0) };
            if rc == 0 {
                Ok(())
            } else {
                Err(Errno::from_raw_os_error(std::io::Error::last_os_error().raw_os_error().unwrap_or(0)))
            }
        }
        "lseek(1) on a descriptor" => {
            let flags = if kind == "control file" { O::WRONLY } else { O::RDONLY };
            open(p, flags).and_then(|fd| rustix::fs::seek(&fd, rustix::fs::SeekFrom::Start(1)).map(drop))
        }
        "mmap(MAP_SHARED)" => open(p, O::RDONLY).and_then(|fd| {
            // SAFETY: a fresh mapping at an address the kernel chooses,
            // unmapped at once and never touched.
            unsafe {
                let m = rustix::mm::mmap(
                    std::ptr::null_mut(),
                    4096,
                    rustix::mm::ProtFlags::READ,
                    rustix::mm::MapFlags::SHARED,
                    &fd,
                    0,
                )?;
                rustix::mm::munmap(m, 4096)
            }
        }),
        "getxattr" => {
            let mut buf = [0u8; 64];
            rustix::fs::lgetxattr(p, "user.x", &mut buf[..]).map(drop)
        }
        "setxattr" => rustix::fs::lsetxattr(p, "user.x", b"1", rustix::fs::XattrFlags::empty()),
        "readlink" => rustix::fs::readlink(p, Vec::new()).map(drop),
        "ioctl(XYZ_IOC_COUNT)" => {
            let flags = if kind == "control file" { O::WRONLY } else { O::RDONLY };
            open(p, flags).and_then(|fd| count(&fd).map(drop))
        }
        _ => return None,
    };
    Some(code(r))
}

#[test]
fn every_vfs_operation_answers_as_the_table_says() {
    let table = doc_table();
    assert!(table.len() >= 20, "the table covers the operations ({} rows)", table.len());
    if !rustix::process::getuid().is_root() {
        eprintln!("skipped: the table is checked as root (modes are the server's answer then)");
        return;
    }
    let Some(s) = Server::start(&[]) else { return };
    let mut wrong = Vec::new();
    let mut observed = String::from("| operation |");
    for (k, _) in KINDS {
        observed += &format!(" {k} |");
    }
    observed += "\n";
    for (op, cells) in &table {
        observed += &format!("| `{op}` |");
        for (kind, rel) in KINDS {
            let want = &cells[*kind];
            if want == "—" {
                observed += " — |";
                continue;
            }
            let got = run(op, kind, &s.p(rel)).unwrap_or_else(|| panic!("the test does not know {op:?}"));
            observed +=
                &format!(" {} |", if got.starts_with('E') { format!("`{got}`") } else { got.clone() });
            if &got != want {
                wrong.push(format!("{op} on a {kind} ({rel}): {got}, the table says {want}"));
            }
        }
        observed += "\n";
    }
    // Nothing the operations tried changed the tree.
    for (kind, rel) in KINDS {
        assert!(
            rustix::fs::statat(rustix::fs::CWD, s.p(rel), AtFlags::SYMLINK_NOFOLLOW).is_ok(),
            "the {kind} is still there"
        );
    }
    for stray in ["new", "renamed", "linked"] {
        for (_, rel) in KINDS {
            let p = s.p(rel);
            assert!(!p.join(stray).exists() && !p.with_file_name(stray).exists(), "{stray} beside {rel}");
        }
    }
    assert!(wrong.is_empty(), "{} cells differ:\n{}\nobserved:\n{observed}", wrong.len(), wrong.join("\n"));
}
