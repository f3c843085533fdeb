//! [`Error`]: why a driver-core operation (bind, add a device, register a
//! region, ...) failed. Turned into an errno in `errno.rs` only.

use crate::Errno;
use crate::name::NameError;

/// A failed driver-core operation. Nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A name failed validation.
    #[error("invalid name: {0}")]
    InvalidName(#[from] NameError),
    /// Other malformed input (a control file's text).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// No device by that name.
    #[error("no device {0:?}")]
    NoSuchDevice(String),
    /// No driver by that name.
    #[error("no driver {0:?}")]
    NoSuchDriver(String),
    /// No bus by that name.
    #[error("no bus {0:?}")]
    NoSuchBus(String),
    /// The driver does not handle the device's type.
    #[error("driver {driver:?} does not match device {device:?}")]
    NoMatch {
        /// The driver.
        driver: String,
        /// The device.
        device: String,
    },
    /// The device has a driver already.
    #[error("device {0:?} is already bound")]
    AlreadyBound(String),
    /// The device has no driver.
    #[error("device {0:?} is not bound")]
    NotBound(String),
    /// The device is bound to another driver than the one named.
    #[error("device {device:?} is bound to {driver:?}")]
    BoundElsewhere {
        /// The device.
        device: String,
        /// The driver it is bound to.
        driver: String,
    },
    /// The name is taken.
    #[error("{0:?} exists")]
    Exists(String),
    /// A device-number range overlaps one in use.
    #[error("device numbers {0} are in use")]
    RegionBusy(String),
    /// Out of dynamic device numbers.
    #[error("no free {0}")]
    NoSpace(&'static str),
    /// The driver's probe failed (its resources were released).
    #[error("probe of {0:?} failed: {1}")]
    ProbeFailed(String, Errno),
    /// The parent object has been removed.
    #[error("{0:?} has been removed")]
    Removed(String),
    /// A managed resource was added to a binding that has ended.
    #[error("the binding has ended")]
    Detached,
    /// The removal was requested from inside one of the removed object's
    /// own handlers, where waiting for handlers would wait for itself.
    #[error("removal from inside its own handler")]
    WouldDeadlock,
    /// A device type no driver of the bus matches and the bus does not
    /// declare.
    #[error("no driver of the bus handles device type {0:?}")]
    UnknownType(String),
}

/// Result of a driver-core operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;
