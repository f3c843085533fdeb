//! `devlife-serve` on its own: a driver defined here, served in this
//! process by [`Server`], reached through real system calls on the FUSE
//! mount (the repository's `devlife` suites test the sample drivers
//! through the binary; these test the library's API).

use devlife_core::gate::WaitQueue;
use devlife_core::{
    Bound, Cdev, DeviceNode, Driver, FileOperations, KResult, Llseek, OpCtx, System, devm_cdev_device_add,
    fops,
};
use devlife_serve::{IoUring, Options, ServeError, Server, Transport};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// A hang guard, never a timing target.
const GUARD: Duration = Duration::from_secs(60);

/// A bell: reading `dev/<name>` blocks until someone writes to it, then
/// reads `ding` (one read per write).
struct Bell {
    rung: AtomicBool,
    wq: WaitQueue,
}

struct BellDev(Arc<Bell>);

impl FileOperations for BellDev {
    type File = ();
    const LLSEEK: Llseek = Llseek::Stream;
    fn open(&self, _cx: &OpCtx<'_>) -> KResult<()> {
        Ok(())
    }
    fn read(&self, _: &(), cx: &OpCtx<'_>, buf: &mut [u8], _offset: u64) -> KResult<usize> {
        // Each ring answers one read.
        cx.wait_event(&self.0.wq, || self.0.rung.swap(false, Ordering::AcqRel))?;
        Ok(fops::simple_read_from_buffer(buf, 0, b"ding\n"))
    }
    fn write(&self, _: &(), _cx: &OpCtx<'_>, data: &[u8], _offset: u64) -> KResult<usize> {
        self.0.rung.store(true, Ordering::Release);
        self.0.wq.wake_all();
        Ok(data.len())
    }
}

struct BellDriver;

impl Driver for BellDriver {
    type Data = Arc<Bell>;
    fn name(&self) -> &str {
        "bell"
    }
    fn id_table(&self) -> &[&str] {
        &["bell"]
    }
    fn probe(&self, dev: &Bound<'_>) -> KResult<Arc<Bell>> {
        let bell = Arc::new(Bell { rung: AtomicBool::new(false), wq: WaitQueue::new() });
        let region = dev.system().alloc_chrdev_region(0, 1, "bell")?;
        let node = DeviceNode::new(dev.name(), region.first()).mode(0o666);
        dev.devres().add_or_reset("region", move || drop(region))?;
        devm_cdev_device_add(dev, Cdev::new(BellDev(bell.clone())), node)?;
        Ok(bell)
    }
}

/// The transport under test (`scripts/test-all` runs both).
fn transport() -> IoUring {
    match std::env::var("DEVLIFE_TEST_TRANSPORT").as_deref() {
        Ok("io-uring") => IoUring::On,
        Ok("dev-fuse") => IoUring::Off,
        _ => IoUring::Auto,
    }
}

fn mount_dir(what: &str) -> PathBuf {
    std::env::temp_dir().join(format!("devlife-serve-test-{}-{what}", std::process::id()))
}

/// A system with one bell, `bell0`, served at a directory of its own; `None`
/// (skipped) where there is no FUSE.
fn serve(what: &str, opts: Options) -> Option<Server> {
    if !std::path::Path::new("/dev/fuse").exists() {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "CI=true needs /dev/fuse");
        eprintln!("skipped: no /dev/fuse");
        return None;
    }
    let sys = System::new();
    let bus = sys.bus_register("platform").unwrap();
    bus.register_driver(BellDriver).unwrap();
    bus.add_device("bell0", "bell").unwrap();
    let server = Server::start(sys, &opts.mount_dir(mount_dir(what)).io_uring(transport())).unwrap();
    match transport() {
        IoUring::On => assert!(matches!(server.transport(), Transport::IoUring { .. })),
        IoUring::Off => assert_eq!(server.transport(), Transport::DevFuse),
        IoUring::Auto => {}
    }
    Some(server)
}

fn write(server: &Server, path: &str, text: &str) -> std::io::Result<()> {
    std::fs::OpenOptions::new().write(true).open(server.mount_path().join(path))?.write_all(text.as_bytes())
}

/// Waits until a handler is inside `bell0`'s driver (hang guard only).
fn until_inside(sys: &System) {
    let end = Instant::now() + GUARD;
    while sys.dev_lookup("bell0").is_some_and(|n| n.node.inside() == 0) {
        assert!(Instant::now() < end, "the reader never entered the driver");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// One read of `dev/bell0` on a thread of its own.
fn read_on_thread(server: &Server) -> std::thread::JoinHandle<Result<Vec<u8>, Option<i32>>> {
    let mut f = std::fs::File::open(server.mount_path().join("dev/bell0")).unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 16];
        f.read(&mut buf).map(|n| buf[..n].to_vec()).map_err(|e| e.raw_os_error())
    })
}

/// A reader blocked in the driver's `read` is answered by a write, and the
/// next one, still blocked when its device is unbound through the served
/// `unbind` file, gets `ENODEV`; the node is gone when the write returns.
#[test]
fn a_blocked_reader_is_woken_by_data_then_by_unbind() {
    let Some(server) = serve("blocked", Options::new()) else { return };
    let sys = server.system().clone();
    let reader = read_on_thread(&server);
    until_inside(&sys);
    write(&server, "dev/bell0", "ring").unwrap();
    assert_eq!(reader.join().unwrap().as_deref(), Ok(&b"ding\n"[..]));

    let reader = read_on_thread(&server);
    until_inside(&sys);
    write(&server, "sys/bus/platform/drivers/bell/unbind", "bell0").unwrap();
    assert!(!server.mount_path().join("dev/bell0").exists(), "dev/bell0 outlived its unbind");
    assert_eq!(reader.join().unwrap(), Err(Some(devlife_core::Errno::ENODEV.raw())));
}

/// `Options::fsname` names the mount; the default is `devlife`.
#[test]
fn the_mount_is_named_as_asked() {
    for (what, opts, name) in [
        ("default-name", Options::new(), devlife_serve::DEFAULT_FSNAME),
        ("own-name", Options::new().fsname("bell-serve"), "bell-serve"),
    ] {
        let Some(server) = serve(what, opts) else { return };
        let dir = server.mount_path().to_str().unwrap().to_owned();
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        let line = mounts.lines().find(|l| l.split(' ').nth(1) == Some(&dir)).expect("mounted");
        let f: Vec<_> = line.split(' ').collect();
        assert_eq!((f[0], f[2]), (name, format!("fuse.{name}").as_str()), "{line}");
        server.shutdown().unwrap();
    }
}

/// Bad options fail the start with a sentence and mount nothing.
#[test]
fn bad_options_fail_the_start_and_change_nothing() {
    let dir = mount_dir("bad-name");
    let e = Server::start(System::new(), &Options::new().mount_dir(&dir).fsname("my bell")).unwrap_err();
    assert!(matches!(e, ServeError::FsName { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        "\"my bell\" cannot name the mount: only letters, digits and ._+- may name a mount"
    );
    assert!(!dir.exists(), "a refused start created {}", dir.display());

    let file = mount_dir("a-file");
    std::fs::write(&file, "x").unwrap();
    let e = Server::start(System::new(), &Options::new().mount_dir(&file)).unwrap_err();
    std::fs::remove_file(&file).unwrap();
    assert_eq!(e.to_string(), format!("{} is not a directory", file.display()));
}

/// A second server on a live mount is refused, and the first goes on.
#[test]
fn a_live_mount_is_left_alone() {
    let Some(server) = serve("live", Options::new()) else { return };
    let e = Server::start(System::new(), &Options::new().mount_dir(server.mount_path())).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("{} is already mounted by a live server", server.mount_path().display())
    );
    let uevent =
        std::fs::read_to_string(server.mount_path().join("sys/bus/platform/devices/bell0/uevent")).unwrap();
    assert!(uevent.contains("DRIVER=bell"), "{uevent}");
}

/// The transport and the stop reason print as words.
#[test]
fn transports_print_as_words() {
    assert_eq!(Transport::DevFuse.to_string(), "/dev/fuse");
    assert_eq!(Transport::IoUring { queues: 2 }.to_string(), "io_uring (2 queues)");
    assert_eq!("on".parse::<IoUring>(), Ok(IoUring::On));
    assert_eq!(IoUring::Auto.to_string(), "auto");
    assert!("yes".parse::<IoUring>().is_err());
}
