//! The `devlife` program's modules, as a library for its binary, its
//! integration tests and its fuzz targets:
//!
//! * [`serve`], the driver core served over FUSE.
//! * [`torture`], random clients, signals and removals; the leak check.
//! * [`bench`](mod@bench), benchmarks.
//! * [`fuzzing`], fuzz harnesses.
//! * [`xyz_client`], the sample device's ioctls as a client calls them.

pub mod bench;
pub mod fuzzing;
pub mod serve;
pub mod torture;
pub mod xyz_client;
