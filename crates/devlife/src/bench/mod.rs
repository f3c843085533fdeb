//! Benchmarks: each measures what its name says, on this machine, and
//! prints a table or (`--json`) one JSON object per line.

pub mod blocked;
pub mod client;
pub mod floor;
pub mod fs;
pub mod gate;
pub mod hist;
pub mod plot;
pub mod restart;
pub mod servers;
pub mod unplug;

use rustix::fd::OwnedFd;
use rustix::fs::{Mode, OFlags};
use std::fmt::Write;
use std::path::Path;
use std::time::{Duration, Instant};

/// Options every benchmark takes.
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct Opts {
    /// A shorter run (seconds, not minutes): fewer and shorter samples.
    #[arg(long)]
    pub quick: bool,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// A JSON value of a result row.
pub enum V {
    /// A string.
    S(String),
    /// An integer.
    I(u64),
    /// A number (`null` if not finite).
    F(f64),
}

/// One result row: ordered `key: value` pairs.
pub struct Row(pub Vec<(&'static str, V)>);

impl Row {
    /// Field `k` as a number (`NaN` if missing or a string), for tables.
    pub fn num(&self, k: &str) -> f64 {
        self.0.iter().find(|(n, _)| *n == k).map_or(f64::NAN, |(_, v)| match v {
            V::F(x) => *x,
            V::I(x) => *x as f64,
            V::S(_) => f64::NAN,
        })
    }

    /// The row as one JSON object.
    pub fn json(&self) -> String {
        let mut s = String::from("{");
        for (i, (k, v)) in self.0.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            let _ = write!(s, "\"{k}\":");
            match v {
                V::S(x) => {
                    s.push('"');
                    for c in x.chars() {
                        match c {
                            '"' => s.push_str("\\\""),
                            '\\' => s.push_str("\\\\"),
                            c if (c as u32) < 0x20 => {
                                let _ = write!(s, "\\u{:04x}", c as u32);
                            }
                            c => s.push(c),
                        }
                    }
                    s.push('"');
                }
                V::I(x) => {
                    let _ = write!(s, "{x}");
                }
                V::F(x) if x.is_finite() => {
                    let _ = write!(s, "{x:.4}");
                }
                V::F(_) => s.push_str("null"),
            }
        }
        s.push('}');
        s
    }
}

/// The `p`th percentile (0..=100) of sorted `xs`.
pub fn percentile(xs: &[f64], p: f64) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (xs.len() - 1) as f64).round() as usize;
    xs[i.min(xs.len() - 1)]
}

/// A one-line description of the machine (CPU model, cores, kernel).
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cpu}, {cores} cores, Linux {}", kernel.trim())
}

/// This process's context switches, every thread's (those that exited
/// too), as `getrusage(RUSAGE_SELF)` counts them:
/// `voluntary_switches N` and `involuntary_switches N` lines. Servers of
/// `bench fs` on devlife's transport publish it, so that threads retired
/// during a measurement keep their counts.
pub fn rusage_text() -> String {
    // SAFETY: `getrusage` writes one `struct rusage`, which `zeroed` makes
    // valid to hold (all integer fields).
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a live, writable `struct rusage`.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return String::new();
    }
    format!("voluntary_switches {}\ninvoluntary_switches {}\n", ru.ru_nvcsw, ru.ru_nivcsw)
}

/// Opens `path` (close-on-exec), the error naming the path.
pub fn open(path: &Path, flags: OFlags) -> Result<OwnedFd, String> {
    rustix::fs::open(path, flags | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Writes `text` to control file `path`; returns how long the write took
/// (the open is not counted).
pub fn timed_write(path: &Path, text: &str) -> Result<Duration, String> {
    let fd = open(path, OFlags::WRONLY)?;
    let t = Instant::now();
    rustix::io::write(&fd, text.as_bytes()).map_err(|e| format!("{} < {text}: {e}", path.display()))?;
    Ok(t.elapsed())
}

/// Raises the soft descriptor limit to at least `need` (up to the hard
/// limit; an error if that is lower).
pub fn raise_nofile(need: u64) -> Result<(), String> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut l = getrlimit(Resource::Nofile);
    let hard = l.maximum.unwrap_or(u64::MAX);
    if l.current.is_some_and(|c| c >= need) {
        return Ok(());
    }
    if hard < need {
        return Err(format!("RLIMIT_NOFILE hard limit {hard} < {need}"));
    }
    l.current = Some(hard.min(1 << 20));
    setrlimit(Resource::Nofile, l).map_err(|e| format!("setrlimit: {e}"))
}
