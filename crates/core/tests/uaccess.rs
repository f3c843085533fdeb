//! Unrestricted ioctls (`devlife_core::uaccess`), driven by a model of the
//! kernel's `fuse_do_ioctl` retry loop over a fake caller's memory: the
//! argument fetched from the command's encoding or a declared layout, a
//! pointer inside it followed in a second round, output scattered back in
//! order; and what a restricted transport (FUSE) answers instead.

use devlife_core::fops::*;
use devlife_core::ioctl::Dir;
use devlife_core::*;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

/// `int *`, tty-style: no `_IOC` bits.
const GET_LEN: IoctlCmd = IoctlCmd::from_raw(0x5858);
/// `_IOWR('U', 1, struct { u64 addr; u32 len; u32 done; })`.
const REVERSE: IoctlCmd = IoctlCmd::iowr(b'U', 1, 16);
/// `_IOR('U', 2, u64)`.
const COUNT: IoctlCmd = IoctlCmd::ior(b'U', 2, 8);

struct Dev {
    calls: AtomicU64,
    actions: AtomicU64,
}

impl FileOperations for Dev {
    type File = ();
    const IOCTL_LAYOUTS: &'static [IoctlLayout] = &[IoctlLayout::new(GET_LEN, Dir::READ, 4)];

    fn open(&self, _: &OpCtx<'_>) -> KResult<()> {
        Ok(())
    }

    fn ioctl(&self, _: &(), _: &OpCtx<'_>, io: &mut Ioctl<'_>) -> KResult<i64> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        match io.cmd() {
            GET_LEN => io.set_output(&42u32.to_ne_bytes()).map(|()| 0),
            COUNT => io.set_output(&7u64.to_ne_bytes()).map(|()| 0),
            REVERSE => {
                let arg = io.input();
                let addr = u64::from_ne_bytes(arg[0..8].try_into().unwrap());
                let len = u32::from_ne_bytes(arg[8..12].try_into().unwrap()) as usize;
                let (data, out) = io.user_inout(addr, len)?;
                // Every region is named: act once.
                self.actions.fetch_add(1, Ordering::Relaxed);
                let rev: Vec<u8> = data.iter().rev().copied().collect();
                io.write_user(out, &rev)?;
                let mut reply = arg[..12].to_vec();
                reply.extend_from_slice(&(len as u32).to_ne_bytes());
                io.set_output(&reply)?;
                Ok(len as i64)
            }
            _ => Err(Errno::ENOTTY),
        }
    }
}

/// A caller's address space: regions at addresses.
#[derive(Default)]
struct Memory(BTreeMap<u64, Vec<u8>>);

impl Memory {
    fn read(&self, r: &UserRegion) -> Vec<u8> {
        let (base, bytes) = self.0.range(..=r.addr).next_back().expect("mapped");
        let off = (r.addr - base) as usize;
        bytes[off..off + r.len].to_vec()
    }
    fn write(&mut self, r: &UserRegion, data: &[u8]) {
        let (base, bytes) = self.0.range_mut(..=r.addr).next_back().expect("mapped");
        let off = (r.addr - *base) as usize;
        bytes[off..off + data.len()].copy_from_slice(data);
    }
}

/// The kernel's side: first try with no memory, then as asked; at the end
/// the output is copied back region by region. Returns the result and
/// the number of rounds.
fn kernel_ioctl(f: &File, cmd: IoctlCmd, arg: u64, mem: &mut Memory) -> (KResult<i64>, usize) {
    let (mut fetched, mut outs): (Vec<u8>, Vec<UserRegion>) = (Vec::new(), Vec::new());
    let mut output = Vec::new();
    for round in 1..=8 {
        let room = outs.iter().map(|r| r.len).sum();
        match f.ioctl_unrestricted(cmd, arg, &fetched, room, &mut output, &Caller::default()) {
            Err(e) => return (Err(e), round),
            Ok(IoctlOutcome::Done(r)) => {
                assert!(output.len() <= room, "output fits the room asked for");
                let mut at = 0;
                for o in &outs {
                    let n = o.len.min(output.len() - at);
                    mem.write(o, &output[at..at + n]);
                    at += n;
                }
                return (Ok(r), round);
            }
            Ok(IoctlOutcome::Fetch { input, output: o }) => {
                fetched = input.iter().flat_map(|r| mem.read(r)).collect();
                outs = o;
            }
        }
    }
    panic!("no end after 8 rounds");
}

fn node() -> (System, CdevRegistration, File, &'static Dev) {
    let sys = System::new();
    let region = sys.alloc_chrdev_region(0, 1, "u").unwrap();
    let dev: &'static Dev = Box::leak(Box::new(Dev { calls: AtomicU64::new(0), actions: AtomicU64::new(0) }));
    struct Ops(&'static Dev);
    impl FileOperations for Ops {
        type File = ();
        const IOCTL_LAYOUTS: &'static [IoctlLayout] = Dev::IOCTL_LAYOUTS;
        fn open(&self, cx: &OpCtx<'_>) -> KResult<()> {
            self.0.open(cx)
        }
        fn ioctl(&self, f: &(), cx: &OpCtx<'_>, io: &mut Ioctl<'_>) -> KResult<i64> {
            self.0.ioctl(f, cx, io)
        }
    }
    let reg = cdev_device_add(&sys, Cdev::new(Ops(dev)), DeviceNode::new("u0", region.first())).unwrap();
    let file = reg.node().unwrap().open(&Caller::default()).unwrap();
    std::mem::forget(region);
    (sys, reg, file, dev)
}

#[test]
fn an_encoded_argument_takes_one_retry() {
    let (_sys, _reg, f, dev) = node();
    let mut mem = Memory::default();
    mem.0.insert(0x1000, vec![0; 8]);
    assert_eq!(kernel_ioctl(&f, COUNT, 0x1000, &mut mem), (Ok(0), 2));
    assert_eq!(mem.0[&0x1000], 7u64.to_ne_bytes());
    assert_eq!(dev.calls.load(Ordering::Relaxed), 1, "the handler ran once, with its argument");
}

#[test]
fn a_declared_layout_fetches_what_the_number_does_not_say() {
    let (_sys, _reg, f, _) = node();
    let mut mem = Memory::default();
    mem.0.insert(0x2000, vec![0; 4]);
    assert_eq!(kernel_ioctl(&f, GET_LEN, 0x2000, &mut mem), (Ok(0), 2));
    assert_eq!(mem.0[&0x2000], 42u32.to_ne_bytes());
    // Over a restricted transport it cannot reach the driver.
    let mut out = Vec::new();
    assert_eq!(f.ioctl(GET_LEN, 0x2000, &[], &mut out, &Caller::default()), Err(Errno::EOPNOTSUPP));
}

#[test]
fn a_pointer_inside_the_argument_is_followed_in_a_second_round() {
    let (_sys, _reg, f, dev) = node();
    let mut mem = Memory::default();
    let mut arg = 0x9000u64.to_ne_bytes().to_vec();
    arg.extend_from_slice(&5u32.to_ne_bytes());
    arg.extend_from_slice(&0u32.to_ne_bytes());
    mem.0.insert(0x3000, arg);
    mem.0.insert(0x9000, b"hello".to_vec());
    assert_eq!(kernel_ioctl(&f, REVERSE, 0x3000, &mut mem), (Ok(5), 3));
    assert_eq!(mem.0[&0x9000], b"olleh");
    assert_eq!(mem.0[&0x3000][12..16], 5u32.to_ne_bytes(), "done written back");
    assert_eq!(dev.actions.load(Ordering::Relaxed), 1, "acted once, after every region was named");

    // Over FUSE the pointer cannot be followed.
    let mut out = Vec::new();
    let a = &mem.0[&0x3000].clone();
    assert_eq!(f.ioctl(REVERSE, 0x3000, a, &mut out, &Caller::default()), Err(Errno::EOPNOTSUPP));
}

#[test]
fn a_region_larger_than_one_request_is_refused_before_asking() {
    let (_sys, _reg, f, dev) = node();
    let mut mem = Memory::default();
    // Past the limit with the argument's own 16 bytes counted, and a
    // length that would overflow a sum.
    for len in [uaccess::IOCTL_MEM_MAX as u32 - 15, u32::MAX] {
        let mut arg = 0x9000u64.to_ne_bytes().to_vec();
        arg.extend_from_slice(&len.to_ne_bytes());
        arg.extend_from_slice(&0u32.to_ne_bytes());
        mem.0.insert(0x3000, arg);
        assert_eq!(kernel_ioctl(&f, REVERSE, 0x3000, &mut mem), (Err(Errno::ENOMEM), 2), "len {len}");
    }
    assert_eq!(dev.actions.load(Ordering::Relaxed), 0);
}

#[test]
fn a_removed_node_answers_enodev_in_any_round() {
    let (_sys, reg, f, _) = node();
    assert_eq!(reg.remove(), Removed::Complete);
    let mut mem = Memory::default();
    mem.0.insert(0x1000, vec![0; 8]);
    // The first round names the argument without calling the driver; the
    // second, with it, finds the node gone.
    assert_eq!(kernel_ioctl(&f, COUNT, 0x1000, &mut mem), (Err(Errno::ENODEV), 2));
}
