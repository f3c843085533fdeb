//! Sample drivers for devlife.
//!
//! * [`xyz`]: the driver of the `cdev: Generic shutdown handling` thread:
//!   `probe` makes a context owned by the binding and registers an ioctl
//!   character device with `devm_cdev_device_add`; the handlers use the
//!   context.
//! * [`bench`](mod@bench): the device `devlife bench` measures: a non-blocking read,
//!   write and `XYZ_IOC_COUNT`, the file its libfuse and fuser peers serve.

pub mod bench;
pub mod xyz;
