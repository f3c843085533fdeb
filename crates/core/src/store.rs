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
use crate::errno::Errno;
use crate::fops::KResult;
use crate::name::ControlError;
use crate::{Error, name};

/// Why a control write was refused: the input, or the act.
#[derive(Debug, thiserror::Error)]
enum Refused {
    #[error(transparent)]
    Input(#[from] ControlError),
    #[error(transparent)]
    Act(#[from] Error),
}

/// Answers a store's outcome; a refusal is logged at info with the file,
/// the input and the reason (a refused hot-plug is something an operator
/// wants to see without turning on debug), then becomes its errno.
fn answer(
    bus: &Bus,
    file: &str,
    data: &[u8],
    r: Result<(), Refused>,
    to_errno: fn(Error) -> Errno,
) -> KResult<()> {
    r.map_err(|e| {
        let input = String::from_utf8_lossy(&data[..data.len().min(name::CONTROL_MAX)]);
        let reason = e.to_string();
        let errno = match e {
            Refused::Input(c) => Errno::from(c),
            Refused::Act(a) => to_errno(a),
        };
        tracing::info!(
            file = format_args!("sys/bus/{}/{file}", bus.name()),
            input = ?input.trim_end_matches('\n'),
            reason = %reason,
            errno = %errno,
            "control write refused"
        );
        errno
    })
}

/// `sys/bus/<bus>/drivers/<driver>/bind` (Linux `bind_store`): binds the
/// named device to `driver`.
pub fn bind_store(bus: &Bus, driver: &str, data: &[u8]) -> KResult<()> {
    let r = (|| Ok(bus.bind(name::one_name(data)?, driver)?))();
    answer(bus, &format!("drivers/{driver}/bind"), data, r, Errno::from)
}

/// `sys/bus/<bus>/drivers/<driver>/unbind` (Linux `unbind_store`): unbinds
/// the named device from `driver`, with the full removal guarantee.
pub fn unbind_store(bus: &Bus, driver: &str, data: &[u8]) -> KResult<()> {
    let r = (|| Ok(bus.unbind(name::one_name(data)?, Some(driver)).map(drop)?))();
    answer(bus, &format!("drivers/{driver}/unbind"), data, r, Errno::from)
}

/// `sys/bus/<bus>/new_device`: `"<type> <name>"` adds a device (and binds a
/// driver that matches it). The type must be one a driver of the bus
/// matches or the bus declares ([`Bus::accepts`]).
pub fn new_device_store(bus: &Bus, data: &[u8]) -> KResult<()> {
    let r = (|| {
        let (ty, dev) = name::type_and_name(data)?;
        if !bus.accepts(ty) {
            return Err(Error::UnknownType(ty.to_owned()).into());
        }
        Ok(bus.add_device(dev, ty).map(drop)?)
    })();
    answer(bus, "new_device", data, r, Error::hotplug_errno)
}

/// `sys/bus/<bus>/delete_device`: deletes the named device, with the full
/// removal guarantee.
pub fn delete_device_store(bus: &Bus, data: &[u8]) -> KResult<()> {
    let r = (|| Ok(bus.delete_device(name::one_name(data)?).map(drop)?))();
    answer(bus, "delete_device", data, r, Errno::from)
}
