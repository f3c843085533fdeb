//! Linux `_IOC` ioctl command numbers.
//!
//! The layout of `include/uapi/asm-generic/ioctl.h`: bits 0-7 number, 8-15
//! type, 16-29 argument size, 30-31 direction (`_IOC_WRITE` = 1: user to
//! driver; `_IOC_READ` = 2: driver to user).

use std::fmt;

const NRBITS: u32 = 8;
const TYPEBITS: u32 = 8;
const SIZEBITS: u32 = 14;
const TYPESHIFT: u32 = NRBITS;
const SIZESHIFT: u32 = TYPESHIFT + TYPEBITS;
const DIRSHIFT: u32 = SIZESHIFT + SIZEBITS;

/// The largest argument size a command can encode.
pub const IOC_SIZE_MAX: usize = (1 << SIZEBITS) - 1;

/// Data direction of an ioctl, from the caller's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Dir(u32);

impl Dir {
    /// No data (`_IOC_NONE`).
    pub const NONE: Dir = Dir(0);
    /// The caller writes, the driver reads (`_IOC_WRITE`).
    pub const WRITE: Dir = Dir(1);
    /// The driver writes, the caller reads (`_IOC_READ`).
    pub const READ: Dir = Dir(2);
    /// Both (`_IOC_READ | _IOC_WRITE`).
    pub const READ_WRITE: Dir = Dir(3);

    /// Whether the caller passes data in.
    pub const fn is_write(self) -> bool {
        self.0 & 1 != 0
    }
    /// Whether the driver passes data out.
    pub const fn is_read(self) -> bool {
        self.0 & 2 != 0
    }
}

/// An ioctl command number.
///
/// # Examples
///
/// ```
/// use devlife_core::ioctl::IoctlCmd;
/// const XYZ_IOC_COUNT: IoctlCmd = IoctlCmd::ior(b'X', 1, 8);
/// assert_eq!(XYZ_IOC_COUNT.raw(), 0x8008_5801);
/// assert_eq!(XYZ_IOC_COUNT.size(), 8);
/// assert!(XYZ_IOC_COUNT.dir().is_read());
/// ```
#[doc(alias = "_IOC")]
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct IoctlCmd(u32);

impl IoctlCmd {
    /// `_IOC(dir, ty, nr, size)`; `size` is truncated to 14 bits.
    pub const fn new(dir: Dir, ty: u8, nr: u8, size: usize) -> Self {
        IoctlCmd(
            (dir.0 << DIRSHIFT)
                | ((size as u32 & ((1 << SIZEBITS) - 1)) << SIZESHIFT)
                | ((ty as u32) << TYPESHIFT)
                | nr as u32,
        )
    }
    /// `_IO(ty, nr)`: no argument data.
    pub const fn io(ty: u8, nr: u8) -> Self {
        Self::new(Dir::NONE, ty, nr, 0)
    }
    /// `_IOR(ty, nr, T)` with `size = sizeof(T)`: the driver writes.
    pub const fn ior(ty: u8, nr: u8, size: usize) -> Self {
        Self::new(Dir::READ, ty, nr, size)
    }
    /// `_IOW(ty, nr, T)`: the caller writes.
    pub const fn iow(ty: u8, nr: u8, size: usize) -> Self {
        Self::new(Dir::WRITE, ty, nr, size)
    }
    /// `_IOWR(ty, nr, T)`: both.
    pub const fn iowr(ty: u8, nr: u8, size: usize) -> Self {
        Self::new(Dir::READ_WRITE, ty, nr, size)
    }
    /// A raw command number.
    pub const fn from_raw(raw: u32) -> Self {
        IoctlCmd(raw)
    }
    /// The raw command number.
    pub const fn raw(self) -> u32 {
        self.0
    }
    /// `_IOC_DIR`.
    pub const fn dir(self) -> Dir {
        Dir(self.0 >> DIRSHIFT)
    }
    /// `_IOC_TYPE`.
    pub const fn ty(self) -> u8 {
        (self.0 >> TYPESHIFT) as u8
    }
    /// `_IOC_NR`.
    pub const fn nr(self) -> u8 {
        self.0 as u8
    }
    /// `_IOC_SIZE`.
    pub const fn size(self) -> usize {
        ((self.0 >> SIZESHIFT) & ((1 << SIZEBITS) - 1)) as usize
    }
    /// Bytes the caller passes in (`size` if the direction includes write).
    pub const fn in_size(self) -> usize {
        if self.0 >> DIRSHIFT & 1 != 0 { self.size() } else { 0 }
    }
    /// Bytes the driver passes out (`size` if the direction includes read).
    pub const fn out_size(self) -> usize {
        if self.0 >> DIRSHIFT & 2 != 0 { self.size() } else { 0 }
    }
}

/// One entry of a driver's ioctl table: what client code in C or Python
/// needs to call it (see [`IoctlCmd::c_macro`]).
///
/// # Examples
///
/// ```
/// use devlife_core::{IoctlCmd, IoctlDef};
/// const COUNT: IoctlDef =
///     IoctlDef { name: "XYZ_IOC_COUNT", cmd: IoctlCmd::ior(b'X', 1, 8), arg: "__u64", doc: "count" };
/// assert_eq!(COUNT.cmd.c_macro(COUNT.arg), "_IOR('X', 1, __u64)");
/// assert_eq!(COUNT.cmd.raw(), 0x8008_5801);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoctlDef {
    /// The command's C name (`XYZ_IOC_COUNT`).
    pub name: &'static str,
    /// The command.
    pub cmd: IoctlCmd,
    /// The argument's C type (`"__u64"`, or `""` for `_IO`).
    pub arg: &'static str,
    /// What it does, one line.
    pub doc: &'static str,
}

impl IoctlCmd {
    /// The `<linux/ioctl.h>` macro that makes this number, given the
    /// argument's C type (`_IOR('X', 1, __u64)`).
    pub fn c_macro(self, arg: &str) -> String {
        let ty = match self.ty() {
            t @ 0x20..=0x7e if t != b'\'' && t != b'\\' => format!("'{}'", t as char),
            t => format!("{t:#04x}"),
        };
        match (self.dir().is_read(), self.dir().is_write()) {
            (false, false) => format!("_IO({ty}, {})", self.nr()),
            (true, false) => format!("_IOR({ty}, {}, {arg})", self.nr()),
            (false, true) => format!("_IOW({ty}, {}, {arg})", self.nr()),
            (true, true) => format!("_IOWR({ty}, {}, {arg})", self.nr()),
        }
    }
}

/// How [`ioctl_table`] writes a driver's ioctls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoctlFormat {
    /// Name, number, C macro and description, aligned.
    Table,
    /// `#define NAME _IOR(...) /* number: description */` lines.
    C,
    /// `NAME = 0x...  # macro: description` lines.
    Python,
}

impl std::str::FromStr for IoctlFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "table" => Ok(IoctlFormat::Table),
            "c" => Ok(IoctlFormat::C),
            "python" => Ok(IoctlFormat::Python),
            other => Err(format!("{other:?}: table, c or python")),
        }
    }
}

/// A driver's ioctl table as client code needs it: the numbers a C or
/// Python program would otherwise compute from `_IOW` by hand.
///
/// # Examples
///
/// ```
/// use devlife_core::ioctl::{IoctlFormat, ioctl_table};
/// use devlife_core::{IoctlCmd, IoctlDef};
/// const T: &[IoctlDef] =
///     &[IoctlDef { name: "LED_IOC_GET", cmd: IoctlCmd::ior(b'L', 1, 4), arg: "__u32", doc: "brightness" }];
/// assert_eq!(ioctl_table(T, IoctlFormat::Python), "LED_IOC_GET = 0x80044c01  # _IOR('L', 1, __u32): brightness\n");
/// ```
pub fn ioctl_table(defs: &[IoctlDef], format: IoctlFormat) -> String {
    let mut out = String::new();
    for d in defs {
        let (n, m) = (d.cmd.raw(), d.cmd.c_macro(d.arg));
        let line = match format {
            IoctlFormat::Table => format!("{:<22} {n:#010x}  {m:<24} {}", d.name, d.doc),
            IoctlFormat::C => format!("#define {:<22} {m:<24} /* {n:#010x}: {} */", d.name, d.doc),
            IoctlFormat::Python => format!("{} = {n:#010x}  # {m}: {}", d.name, d.doc),
        };
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

impl fmt::Debug for IoctlCmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "IoctlCmd({:#x}: dir={} type={:?} nr={} size={})",
            self.0,
            self.dir().0,
            self.ty() as char,
            self.nr(),
            self.size()
        )
    }
}
