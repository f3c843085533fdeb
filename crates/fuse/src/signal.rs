//! Whether a thread has a signal pending: how a transport finds a caller
//! whose `FUSE_INTERRUPT` the kernel dropped.

/// Whether thread `tid` has a signal pending that it does not block: the
/// signal that interrupted its FUSE request, if its interrupt was dropped
/// (see "Interrupts the kernel drops" in [`crate::ring`]). Read from `/proc/<tid>/status`
/// (`SigPnd`, `ShdPnd`, `SigBlk`); a fatal signal shows as `SIGKILL`.
pub(crate) fn signal_pending(tid: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{tid}/status")) else { return false };
    let mask = |key: &str| {
        status.lines().find_map(|l| l.strip_prefix(key)).and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
    };
    match (mask("SigPnd:"), mask("ShdPnd:"), mask("SigBlk:")) {
        (Some(p), Some(s), Some(b)) => (p | s) & !b != 0,
        _ => false,
    }
}
