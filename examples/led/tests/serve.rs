//! The LED controller served by `led-serve`, through real system calls:
//! `cat` of the seekable node ends, `lseek` on the stream fails `ESPIPE`,
//! write, ioctl, poll, the attribute, debugfs, the blink thread and the
//! pulse work, and a reader blocked in `read` that the unbind wakes with
//! `ENODEV`.

use led::{LED_IOC_BLINK, LED_IOC_GET, LED_IOC_SET};
use std::ffi::CString;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A hang guard, never a timing target.
const GUARD: Duration = Duration::from_secs(60);

struct Served {
    child: Child,
    dir: PathBuf,
}

impl Served {
    fn start() -> Option<Served> {
        if !Path::new("/dev/fuse").exists() {
            assert!(std::env::var("CI").as_deref() != Ok("true"), "CI=true needs /dev/fuse");
            eprintln!("skipped: no /dev/fuse");
            return None;
        }
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("led-test-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // The transport under test (`scripts/test-all` runs both).
        let transport = match std::env::var("DEVLIFE_TEST_TRANSPORT").as_deref() {
            Ok("io-uring") => "on",
            Ok("dev-fuse") => "off",
            _ => "auto",
        };
        let mut child = Command::new(env!("CARGO_BIN_EXE_led-serve"))
            .arg(&dir)
            .env("RUST_LOG", "warn")
            .env("DEVLIFE_IO_URING", transport)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert!(line.starts_with("ready "), "led-serve said {line:?}");
        let s = Served { child, dir };
        let stats = s.read("debug/devlife/fuse");
        let want = match transport {
            "on" => Some("transport io_uring"),
            "off" => Some("transport dev_fuse"),
            _ => None,
        };
        if let Some(want) = want {
            assert!(stats.contains(want), "{transport}: {stats}");
        }
        Some(s)
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.join(p)
    }

    fn read(&self, p: &str) -> String {
        std::fs::read_to_string(self.path(p)).unwrap_or_else(|e| panic!("{p}: {e}"))
    }

    fn write(&self, p: &str, text: &str) -> std::io::Result<()> {
        std::fs::OpenOptions::new().write(true).open(self.path(p))?.write_all(text.as_bytes())
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        // SAFETY: kill(2) with a pid we started; no memory is involved.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn ioctl_u32(f: &std::fs::File, cmd: u32, v: &mut u32) -> Result<(), i32> {
    // SAFETY: `v` is a live u32 for the call; the command's size is 4.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), cmd as _, v as *mut u32) };
    if r < 0 { Err(errno()) } else { Ok(()) }
}

fn poll(f: &std::fs::File, events: i16, ms: i32) -> i16 {
    let mut p = libc::pollfd { fd: f.as_raw_fd(), events, revents: 0 };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut p, 1, ms) };
    assert!(n >= 0, "poll: {}", errno());
    p.revents
}

/// Waits until `cond()` holds (hang guard only).
fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + GUARD;
    while !cond() {
        assert!(Instant::now() < end, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Runs `cat` on `path`: it must end (the node has a file position).
fn cat(path: &Path) -> String {
    let mut child = Command::new("cat").arg(path).stdout(Stdio::piped()).spawn().unwrap();
    let mut out = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        // At most 64 KiB: a node read forever from offset 0 would not end.
        let mut v = Vec::new();
        let _ = (&mut out).take(64 * 1024).read_to_end(&mut v);
        v
    });
    let end = Instant::now() + GUARD;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > end {
            let _ = child.kill();
            panic!("cat {} did not end", path.display());
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(status.success(), "cat: {status}");
    String::from_utf8(reader.join().unwrap()).unwrap()
}

#[test]
fn the_led_through_system_calls() {
    let Some(s) = Served::start() else { return };

    // A seekable text node: cat reads it to the end, and ends.
    assert_eq!(cat(&s.path("dev/led0")), "0\n");
    s.write("dev/led0", "128").unwrap();
    assert_eq!(cat(&s.path("dev/led0")), "128\n");
    assert_eq!(s.read("sys/class/leds/led0/uevent").lines().last(), Some("DEVNAME=led0"));

    // Its position is real: lseek works, and reads continue from it.
    let mut f = std::fs::OpenOptions::new().read(true).write(true).open(s.path("dev/led0")).unwrap();
    // SAFETY: lseek on an open descriptor.
    assert_eq!(unsafe { libc::lseek(f.as_raw_fd(), 1, libc::SEEK_SET) }, 1);
    let mut rest = String::new();
    f.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "28\n");

    // The stream has no position.
    let events = std::fs::File::open(s.path("dev/led0-events")).unwrap();
    // SAFETY: as above.
    assert_eq!(unsafe { libc::lseek(events.as_raw_fd(), 0, libc::SEEK_SET) }, -1);
    assert_eq!(errno(), libc::ESPIPE);

    // Bad input changes nothing.
    assert_eq!(s.write("dev/led0", "300").unwrap_err().raw_os_error(), Some(libc::EINVAL));
    assert_eq!(s.read("sys/bus/platform/devices/led0/brightness"), "128\n");

    // Ioctls.
    let mut v = 0;
    ioctl_u32(&f, LED_IOC_GET.raw(), &mut v).unwrap();
    assert_eq!(v, 128);
    let mut v = 7;
    ioctl_u32(&f, LED_IOC_SET.raw(), &mut v).unwrap();
    let mut v = 256;
    assert_eq!(ioctl_u32(&f, LED_IOC_SET.raw(), &mut v), Err(libc::EINVAL));

    // The attribute shows and stores through the device's data.
    assert_eq!(s.read("sys/bus/platform/devices/led0/brightness"), "7\n");
    s.write("sys/bus/platform/devices/led0/brightness", "off\n").unwrap();
    assert_eq!(cat(&s.path("dev/led0")), "0\n");

    // Poll: POLLPRI once the value changed since this file read it.
    let mut seen = String::new();
    // SAFETY: lseek on an open descriptor.
    unsafe { libc::lseek(f.as_raw_fd(), 0, libc::SEEK_SET) };
    f.read_to_string(&mut seen).unwrap();
    assert_eq!(poll(&f, libc::POLLPRI, 0) & libc::POLLPRI, 0);
    s.write("dev/led0", "on").unwrap();
    assert_ne!(poll(&f, libc::POLLPRI, GUARD.as_millis() as i32) & libc::POLLPRI, 0);

    // The events stream: blocking read of each change; poll says POLLIN.
    s.write("dev/led0", "5").unwrap();
    assert_ne!(poll(&events, libc::POLLIN, GUARD.as_millis() as i32) & libc::POLLIN, 0);
    let mut buf = [0u8; 64];
    let n = (&events).read(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"brightness 5\n");

    // Debugfs, in the driver's directory.
    // 128, off (the attribute), on, 5: the refused 300 is not counted.
    assert_eq!(s.read("debug/led/led0/writes"), "4\n");

    // The pulse's delayed work turns the LED off again.
    s.write("dev/led0", "pulse").unwrap();
    until("the pulse ends", || s.read("sys/bus/platform/devices/led0/brightness") == "0\n");

    // The blink thread toggles it.
    let mut v = 10;
    ioctl_u32(&f, LED_IOC_BLINK.raw(), &mut v).unwrap();
    until("a blink", || s.read("sys/bus/platform/devices/led0/brightness") == "255\n");
    until("a blink off", || s.read("sys/bus/platform/devices/led0/brightness") == "0\n");
}

/// Whether thread `tid` of this process is asleep inside `read(2)`.
fn asleep_in_read(tid: i32) -> bool {
    let task = format!("/proc/self/task/{tid}");
    let syscall = std::fs::read_to_string(format!("{task}/syscall")).unwrap_or_default();
    let stat = std::fs::read_to_string(format!("{task}/stat")).unwrap_or_default();
    let state = stat.rsplit(')').next().and_then(|r| r.split_whitespace().next());
    syscall.split_whitespace().next() == Some(&libc::SYS_read.to_string()) && state == Some("S")
}

#[test]
fn unbind_wakes_a_blocked_reader_with_enodev() {
    let Some(s) = Served::start() else { return };
    let path = CString::new(s.path("dev/led0-events").as_os_str().as_bytes()).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        // SAFETY: open, read into a live buffer, close: plain system calls.
        unsafe {
            let fd = libc::open(path.as_ptr(), libc::O_RDONLY);
            assert!(fd >= 0, "open: {}", errno());
            tx.send(libc::gettid()).unwrap();
            let mut buf = [0u8; 64];
            let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
            let e = errno();
            libc::close(fd);
            (n, e)
        }
    });
    let tid = rx.recv().unwrap();
    until("the reader sleeps in read", || asleep_in_read(tid));

    s.write("sys/bus/platform/drivers/led/unbind", "led0\n").unwrap();
    let (n, e) = reader.join().unwrap();
    assert_eq!((n, e), (-1, libc::ENODEV), "the blocked read ends with ENODEV");

    // Everything of the binding is gone; the driver's directory stays.
    for gone in ["dev/led0", "dev/led0-events", "sys/class/leds/led0", "debug/led/led0"] {
        assert!(!s.path(gone).exists(), "{gone} outlived the unbind");
    }
    assert!(s.path("debug/led").is_dir());
    assert!(!s.path("sys/bus/platform/devices/led0/brightness").exists());

    // Bound again: fresh nodes; hot-plug of the declared type works too.
    s.write("sys/bus/platform/drivers/led/bind", "led0\n").unwrap();
    assert_eq!(cat(&s.path("dev/led0")), "0\n");
    s.write("sys/bus/platform/new_device", "led led1\n").unwrap();
    assert_eq!(cat(&s.path("dev/led1")), "0\n");
    assert_eq!(
        s.write("sys/bus/platform/new_device", "lamp lamp0\n").unwrap_err().raw_os_error(),
        Some(libc::EINVAL)
    );
    s.write("sys/bus/platform/delete_device", "led1\n").unwrap();
    assert!(!s.path("dev/led1").exists());
}

/// The README and `devlife-serve`'s crate docs show this crate's `main`,
/// as it is.
#[test]
fn the_docs_show_this_main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let main = std::fs::read_to_string(root.join("examples/led/src/main.rs")).unwrap();
    let body = &main[main.find("use devlife_core::System;").unwrap()..];
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    assert!(readme.contains(body), "README.md's \"Serve your own driver\" differs from src/main.rs");
    let lib = std::fs::read_to_string(root.join("crates/serve/src/lib.rs")).unwrap();
    let docs: String = lib
        .lines()
        .filter_map(|l| l.strip_prefix("//!"))
        .map(|l| format!("{}\n", l.strip_prefix(' ').unwrap_or(l)))
        .collect();
    assert!(docs.contains(body), "devlife-serve's crate docs differ from src/main.rs");
    let lines = body.lines().filter(|l| !l.trim().is_empty()).count();
    eprintln!("main: {} lines, {lines} not blank", main.lines().count());
}

/// Runs `led-serve DIR` expecting it to fail at start; returns its stderr.
fn led_serve_fails(dir: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_led-serve"))
        .arg(dir)
        .env("RUST_LOG", "off")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success(), "led-serve {} started", dir.display());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The shown `main` pattern (`-> Result<(), Report>`) prints why it could
/// not start as a sentence, never as `Debug` (`AlreadyMounted { dir: .. }`).
#[test]
fn a_failed_start_reads_as_a_sentence() {
    let Some(s) = Served::start() else { return };
    let err = led_serve_fails(&s.dir);
    assert_eq!(err.trim(), format!("Error: {} is already mounted by a live server", s.dir.display()));

    let file = std::env::temp_dir().join(format!("led-test-file-{}", std::process::id()));
    std::fs::write(&file, "x").unwrap();
    let err = led_serve_fails(&file);
    std::fs::remove_file(&file).unwrap();
    assert_eq!(err.trim(), format!("Error: {} is not a directory", file.display()));
}

/// `Options::fsname` names the mount in `/proc/mounts`: `led-serve` calls
/// it, so the mount says which program serves it.
#[test]
fn proc_mounts_names_the_program() {
    let Some(s) = Served::start() else { return };
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let line = mounts
        .lines()
        .find(|l| l.split(' ').nth(1) == Some(s.dir.to_str().unwrap()))
        .unwrap_or_else(|| panic!("{} not in /proc/self/mounts", s.dir.display()));
    let fields: Vec<_> = line.split(' ').collect();
    assert_eq!((fields[0], fields[2]), ("led-serve", "fuse.led-serve"), "{line}");
}
