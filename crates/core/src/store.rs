//! The stores of a bus's control files: what a write to `bind`, `unbind`,
//! `new_device` and `delete_device` does, parsed, validated and answered in
//! one place (Linux keeps `bind_store` and `unbind_store` in
//! `drivers/base/bus.c`, and buses such as i2c their `new_device` and
//! `delete_device` stores, alike). Bad input answers an errno and changes
//! nothing; a removal answers only once it is complete.
//!
//! Each function takes the bytes one `write(2)` brought (one trailing
//! newline dropped, as `echo` adds it).

use crate::bus::Bus;
use crate::fops::KResult;
use crate::{Error, name};

/// `sys/bus/<bus>/drivers/<driver>/bind` (Linux `bind_store`): binds the
/// named device to `driver`.
pub fn bind_store(bus: &Bus, driver: &str, data: &[u8]) -> KResult<()> {
    let dev = name::one_name(data)?;
    Ok(bus.bind(dev, driver)?)
}

/// `sys/bus/<bus>/drivers/<driver>/unbind` (Linux `unbind_store`): unbinds
/// the named device from `driver`, with the full removal guarantee.
pub fn unbind_store(bus: &Bus, driver: &str, data: &[u8]) -> KResult<()> {
    let dev = name::one_name(data)?;
    Ok(bus.unbind(dev, Some(driver)).map(drop)?)
}

/// `sys/bus/<bus>/new_device`: `"<type> <name>"` adds a device (and binds a
/// driver that matches it). The type must be one a driver of the bus
/// matches or the bus declares ([`Bus::accepts`]).
pub fn new_device_store(bus: &Bus, data: &[u8]) -> KResult<()> {
    let (ty, dev) = name::type_and_name(data)?;
    if !bus.accepts(ty) {
        return Err(Error::UnknownType(ty.to_owned()).into());
    }
    bus.add_device(dev, ty).map(drop).map_err(Error::hotplug_errno)
}

/// `sys/bus/<bus>/delete_device`: deletes the named device, with the full
/// removal guarantee.
pub fn delete_device_store(bus: &Bus, data: &[u8]) -> KResult<()> {
    let dev = name::one_name(data)?;
    Ok(bus.delete_device(dev).map(drop)?)
}
