//! The control files: parse what was written, act, and answer only when the
//! act is complete (for a removal: the whole removal guarantee).

use crate::tree::Control;
use devlife_core::{Errno, System, store};

/// Performs the write `data` to control file `c` (the core's stores do the
/// parsing, validation and errno). Bad input answers `EINVAL`, `ENODEV` or
/// `EBUSY` and changes nothing.
pub fn write(sys: &System, c: &Control, data: &[u8]) -> Result<(), Errno> {
    let bus_of = |b: &str| sys.bus(b).ok_or(Errno::ENODEV);
    match c {
        Control::Bind { bus, driver } => store::bind_store(&bus_of(bus)?, driver, data),
        Control::Unbind { bus, driver } => store::unbind_store(&bus_of(bus)?, driver, data),
        Control::NewDevice { bus } => store::new_device_store(&bus_of(bus)?, data),
        Control::DeleteDevice { bus } => store::delete_device_store(&bus_of(bus)?, data),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsing() {
        use devlife_core::name::{one_name, type_and_name};
        fn e<T>(r: Result<T, devlife_core::name::ControlError>) -> Result<T, Errno> {
            r.map_err(Errno::from)
        }
        assert_eq!(e(one_name(b"xyz0\n")), Ok("xyz0"));
        assert_eq!(e(one_name(b"xyz0")), Ok("xyz0"));
        for bad in [&b""[..], b"\n", b"a/b", b"..", b"x\n\n", b"\xff", &[b'x'; 256]] {
            assert_eq!(e(one_name(bad)), Err(Errno::EINVAL), "{bad:?}");
        }
        assert_eq!(e(type_and_name(b"xyz xyz5\n")), Ok(("xyz", "xyz5")));
        for bad in [&b"xyz"[..], b"xyz a b", b"xyz  a", b" xyz a", b"xyz ../a", b"xyz bind"] {
            assert_eq!(e(type_and_name(bad)), Err(Errno::EINVAL), "{bad:?}");
        }
    }
}
