//! The control files: parse what was written, act, and answer only when the
//! act is complete (for a removal: the whole removal guarantee).

use super::tree::{Control, SIM_TYPES};
use devlife_core::{Errno, Error, System, name};

fn one_name(data: &[u8]) -> Result<&str, Errno> {
    name::one_name(data).map_err(|_| Errno::EINVAL)
}

fn type_and_name(data: &[u8]) -> Result<(&str, &str), Errno> {
    name::type_and_name(data).map_err(|_| Errno::EINVAL)
}

/// Performs the write `data` to control file `c`. Bad input answers
/// `EINVAL`, `ENODEV` or `EBUSY` and changes nothing.
pub fn write(sys: &System, c: &Control, data: &[u8]) -> Result<(), Errno> {
    let bus_of = |b: &str| sys.bus(b).ok_or(Errno::ENODEV);
    match c {
        Control::Bind { bus, driver } => {
            let dev = one_name(data)?;
            bus_of(bus)?.bind(dev, driver).map_err(Errno::from)
        }
        Control::Unbind { bus, driver } => {
            let dev = one_name(data)?;
            bus_of(bus)?.unbind(dev, Some(driver)).map(drop).map_err(Errno::from)
        }
        Control::NewDevice { bus } => {
            let (ty, name) = type_and_name(data)?;
            if !SIM_TYPES.contains(&ty) {
                return Err(Errno::EINVAL);
            }
            bus_of(bus)?.add_device(name, ty).map(drop).map_err(|e| match e {
                Error::Exists(_) => Errno::EBUSY,
                e => Errno::from(e),
            })
        }
        Control::DeleteDevice { bus } => {
            let name = one_name(data)?;
            bus_of(bus)?.delete_device(name).map(drop).map_err(Errno::from)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsing() {
        assert_eq!(one_name(b"xyz0\n"), Ok("xyz0"));
        assert_eq!(one_name(b"xyz0"), Ok("xyz0"));
        for bad in [&b""[..], b"\n", b"a/b", b"..", b"x\n\n", b"\xff", &[b'x'; 256]] {
            assert_eq!(one_name(bad), Err(Errno::EINVAL), "{bad:?}");
        }
        assert_eq!(type_and_name(b"xyz xyz5\n"), Ok(("xyz", "xyz5")));
        for bad in [&b"xyz"[..], b"xyz a b", b"xyz  a", b" xyz a", b"xyz ../a"] {
            assert_eq!(type_and_name(bad), Err(Errno::EINVAL), "{bad:?}");
        }
    }
}
