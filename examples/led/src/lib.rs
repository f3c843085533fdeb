//! `led`: a simulated LED controller, written against devlife's public API
//! as a driver outside the repository would be.
//!
//! Each device of type `led` on bus [`BUS`] gets, while bound to the `led`
//! driver:
//!
//! * `dev/<name>` (class `leds`): a seekable text node. `read` gives the
//!   brightness (`"128\n"`) from the file position, so `cat` ends; `write`
//!   takes `on`, `off`, `0`-`255` or `pulse` (full brightness, off again
//!   after [`PULSE`]); `poll` is always readable, with `POLLPRI` once the
//!   brightness changed since this file last read it (as sysfs's
//!   `sysfs_notify`); ioctls [`LED_IOC_GET`], [`LED_IOC_SET`],
//!   [`LED_IOC_BLINK`];
//! * `dev/<name>-events`: a stream whose `read` waits until the
//!   brightness changes and returns `"brightness N\n"` (`EAGAIN` with
//!   `O_NONBLOCK`); `poll` says `POLLIN` when a change is waiting. The
//!   read is an async handler ([`AsyncFileOperations`]): a waiting reader
//!   holds no server thread;
//! * the attribute `sys/bus/platform/devices/<name>/brightness` (show and
//!   store, as the node's read and write);
//! * `debug/led/<name>/writes`, in the driver's debugfs directory: the
//!   count of writes;
//! * a blink thread, toggling the LED every `LED_IOC_BLINK` milliseconds,
//!   and the pulse's delayed work: both stopped and joined at unbind.
//!
//! Unbinding removes all of it with the removal guarantee: a reader
//! blocked in `read` returns `ENODEV`, no handler runs afterwards, and the
//! context ([`Led`]) is dropped last.

use devlife_core::debugfs::devm_create_dir;
use devlife_core::fops::{
    FileOperations, Ioctl, KResult, Llseek, OpCtx, PollMask, PollTable, simple_read_from_buffer,
};
use devlife_core::gate::WaitQueue;
use devlife_core::gate::sync::lock;
use devlife_core::{
    AsyncCtx, AsyncFileOperations, Bound, Cdev, DelayedWork, Device, DeviceAttribute, DeviceNode, Driver,
    Errno, IoctlCmd, IoctlDef, ReadBuf, System, devm_cdev_device_add, devm_delayed_work_autocancel,
    devm_device_create_file, devm_kthread_run,
};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// The bus the driver registers on.
pub const BUS: &str = "platform";
/// How long `pulse` keeps the LED lit.
pub const PULSE: Duration = Duration::from_millis(200);
/// Full brightness.
pub const MAX_BRIGHTNESS: u32 = 255;

/// `_IOR('L', 1, __u32)`: the brightness.
pub const LED_IOC_GET: IoctlCmd = IoctlCmd::ior(b'L', 1, 4);
/// `_IOW('L', 2, __u32)`: set the brightness (`EINVAL` above 255).
pub const LED_IOC_SET: IoctlCmd = IoctlCmd::iow(b'L', 2, 4);
/// `_IOW('L', 3, __u32)`: blink with that half-period in milliseconds
/// (0 stops; at least 10).
pub const LED_IOC_BLINK: IoctlCmd = IoctlCmd::iow(b'L', 3, 4);
/// The driver's ioctls, for client code.
pub const IOCTLS: &[IoctlDef] = &[
    IoctlDef { name: "LED_IOC_GET", cmd: LED_IOC_GET, arg: "__u32", doc: "the brightness" },
    IoctlDef { name: "LED_IOC_SET", cmd: LED_IOC_SET, arg: "__u32", doc: "set the brightness (0-255)" },
    IoctlDef {
        name: "LED_IOC_BLINK",
        cmd: LED_IOC_BLINK,
        arg: "__u32",
        doc: "blink half-period ms, 0 stops",
    },
];

/// One LED's state: the binding's data, shared by its nodes, attribute,
/// thread and work.
pub struct Led {
    brightness: AtomicU32,
    /// Bumped on every change; files remember the one they last saw.
    generation: AtomicU64,
    changed: WaitQueue,
    blink_ms: AtomicU32,
    writes: Arc<AtomicU64>,
    /// Turns the LED off after a pulse.
    pulse_off: OnceLock<DelayedWork>,
}

impl Led {
    fn new() -> Self {
        Led {
            brightness: AtomicU32::new(0),
            generation: AtomicU64::new(0),
            changed: WaitQueue::new(),
            blink_ms: AtomicU32::new(0),
            writes: Arc::default(),
            pulse_off: OnceLock::new(),
        }
    }

    /// The brightness (0-255).
    pub fn brightness(&self) -> u32 {
        self.brightness.load(Ordering::Acquire)
    }

    fn set(&self, b: u32) {
        self.brightness.store(b, Ordering::Release);
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.changed.wake_all();
    }

    /// Applies a command written to the node or the attribute.
    fn command(&self, text: &str) -> KResult<()> {
        match text.trim() {
            "on" => self.set(MAX_BRIGHTNESS),
            "off" => self.set(0),
            "pulse" => {
                self.set(MAX_BRIGHTNESS);
                if let Some(w) = self.pulse_off.get() {
                    w.modify(PULSE);
                }
            }
            n => match n.parse::<u32>() {
                Ok(b) if b <= MAX_BRIGHTNESS => self.set(b),
                _ => return Err(Errno::EINVAL),
            },
        }
        self.writes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// `dev/<name>`: the brightness as seekable text.
struct BrightnessNode(Arc<Led>);

/// An open `dev/<name>`: the text read at offset 0, and the generation it
/// showed.
#[derive(Default)]
struct Snapshot {
    text: Mutex<String>,
    seen: AtomicU64,
}

impl FileOperations for BrightnessNode {
    type File = Snapshot;
    const LLSEEK: Llseek = Llseek::Default;

    fn open(&self, _cx: &OpCtx<'_>) -> KResult<Snapshot> {
        Ok(Snapshot::default())
    }

    fn read(&self, file: &Snapshot, _cx: &OpCtx<'_>, buf: &mut [u8], offset: u64) -> KResult<usize> {
        let mut text = lock(&file.text);
        // A read from the start (or the first read) takes a fresh value;
        // later ones continue it.
        if offset == 0 || text.is_empty() {
            file.seen.store(self.0.generation.load(Ordering::Acquire), Ordering::Relaxed);
            *text = format!("{}\n", self.0.brightness());
        }
        Ok(simple_read_from_buffer(buf, offset, text.as_bytes()))
    }

    fn write(&self, _file: &Snapshot, _cx: &OpCtx<'_>, data: &[u8], _offset: u64) -> KResult<usize> {
        let text = std::str::from_utf8(data).map_err(|_| Errno::EINVAL)?;
        self.0.command(text)?;
        Ok(data.len())
    }

    fn poll(&self, file: &Snapshot, _cx: &OpCtx<'_>, pt: &PollTable<'_>) -> PollMask {
        pt.wait(&self.0.changed);
        let mut mask = PollMask::IN | PollMask::RDNORM;
        if self.0.generation.load(Ordering::Acquire) != file.seen.load(Ordering::Relaxed) {
            mask |= PollMask::PRI;
        }
        mask
    }

    fn ioctl(&self, _file: &Snapshot, _cx: &OpCtx<'_>, io: &mut Ioctl<'_>) -> KResult<i64> {
        match io.cmd() {
            LED_IOC_GET => io.set_output(&self.0.brightness().to_ne_bytes())?,
            LED_IOC_SET => match io.input_u32()? {
                b if b <= MAX_BRIGHTNESS => self.0.set(b),
                _ => return Err(Errno::EINVAL),
            },
            LED_IOC_BLINK => match io.input_u32()? {
                ms @ (0 | 10..) => self.0.blink_ms.store(ms, Ordering::Relaxed),
                _ => return Err(Errno::EINVAL),
            },
            _ => return Err(Errno::ENOTTY),
        }
        Ok(0)
    }
}

/// `dev/<name>-events`: one line per change; a read waits for the next
/// (an async handler: no server thread while it waits).
struct EventsNode(Arc<Led>);

impl FileOperations for EventsNode {
    /// The generation this file has reported.
    type File = AtomicU64;

    fn open(&self, _cx: &OpCtx<'_>) -> KResult<AtomicU64> {
        Ok(AtomicU64::new(self.0.generation.load(Ordering::Acquire)))
    }

    fn poll(&self, seen: &AtomicU64, _cx: &OpCtx<'_>, pt: &PollTable<'_>) -> PollMask {
        pt.wait(&self.0.changed);
        if self.0.generation.load(Ordering::Acquire) != seen.load(Ordering::Relaxed) {
            PollMask::IN | PollMask::RDNORM
        } else {
            PollMask::NONE
        }
    }
}

/// The stream's read waits as a future: a reader waiting for the next
/// change holds no server thread (and a thousand of them, none).
impl AsyncFileOperations for EventsNode {
    async fn read_async(
        &self,
        seen: &AtomicU64,
        cx: &AsyncCtx,
        buf: &mut ReadBuf,
        _offset: u64,
    ) -> KResult<usize> {
        let led = &self.0;
        let unseen = || led.generation.load(Ordering::Acquire) != seen.load(Ordering::Relaxed);
        if !unseen() && cx.nonblock() {
            return Err(Errno::EAGAIN);
        }
        // Until a change; the removal (ENODEV) or a signal (EINTR) drops
        // this future here, having taken nothing.
        led.changed.wait_until(unseen).await;
        seen.store(led.generation.load(Ordering::Acquire), Ordering::Relaxed);
        let line = format!("brightness {}\n", led.brightness());
        Ok(buf.fill(line.as_bytes()))
    }
}

/// The `led` driver.
pub struct LedDriver;

impl Driver for LedDriver {
    type Data = Arc<Led>;

    fn name(&self) -> &str {
        "led"
    }

    fn id_table(&self) -> &[&str] {
        &["led"]
    }

    fn probe(&self, dev: &Bound<'_>) -> KResult<Arc<Led>> {
        let led = Arc::new(Led::new());
        let name = dev.name();

        // Registered first, released last: the device numbers.
        let region = dev.system().alloc_chrdev_region(0, 2, "led")?;
        let (node, events) = (region.first(), region.devt(1).ok_or(Errno::ENOSPC)?);
        dev.devres().add_or_reset("led region", move || drop(region))?;

        // The blink thread and the pulse's work use only `led`: registered
        // before the nodes, they are stopped after the nodes are gone.
        let l = led.clone();
        devm_kthread_run(dev, &format!("{name}-blink"), move |stop| {
            let mut lit = false;
            loop {
                let ms = l.blink_ms.load(Ordering::Relaxed);
                if ms == 0 {
                    if !stop.sleep(Duration::from_millis(20)) {
                        return;
                    }
                    continue;
                }
                lit = !lit;
                l.set(if lit { MAX_BRIGHTNESS } else { 0 });
                if !stop.sleep(Duration::from_millis(u64::from(ms))) {
                    return;
                }
            }
        })?;
        let l = led.clone();
        let off = devm_delayed_work_autocancel(dev, &format!("{name}-pulse"), move || l.set(0))?;
        let _ = led.pulse_off.set(off);

        devm_cdev_device_add(
            dev,
            Cdev::new(BrightnessNode(led.clone())),
            DeviceNode::new(name, node).class("leds"),
        )?;
        devm_cdev_device_add(
            dev,
            Cdev::new_async(EventsNode(led.clone())),
            DeviceNode::new(format!("{name}-events"), events),
        )?;

        // The attribute finds the LED through its device (dev_get_drvdata).
        fn led_of(d: &Device) -> KResult<Arc<Led>> {
            d.drvdata::<Arc<Led>>().ok_or(Errno::ENODEV)
        }
        devm_device_create_file(
            dev,
            DeviceAttribute::rw(
                "brightness",
                |d| Ok(format!("{}\n", led_of(d)?.brightness())),
                |d, text| led_of(d)?.command(text),
            ),
        )?;

        // debug/led/<name>/writes, in the driver's directory.
        let dir = devm_create_dir(dev, &dev.driver_debugfs()?, name)?;
        dir.create_u64("writes", 0o444, led.writes.clone())?;
        Ok(led)
    }
}

/// Registers bus [`BUS`] (if missing) and the `led` driver on `sys`, and
/// declares the `led` device type, so `new_device` takes it with the
/// driver unloaded too.
pub fn register(sys: &System) -> devlife_core::Result<()> {
    let bus = match sys.bus(BUS) {
        Some(b) => b,
        None => sys.bus_register(BUS)?,
    };
    bus.declare_device_type("led")?;
    bus.register_driver(LedDriver)
}
