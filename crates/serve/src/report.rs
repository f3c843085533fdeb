//! [`Report`]: an error as `main` should print it.

use std::error::Error;
use std::fmt;

/// Any error, printed as sentences when `main` returns it.
///
/// `fn main() -> Result<(), E>` prints `Error: ` and then `E`'s `Debug`
/// form: for a `Box<dyn Error>` holding a [`ServeError`](crate::ServeError)
/// that is `AlreadyMounted { dir: ... }`. A `Report`'s `Debug` is the
/// error's `Display`, followed by each cause its message does not already
/// say, so `main` prints `Error: /run/user/0/devlife is already mounted by
/// a live server`. Every error converts with `?`, as into a
/// `Box<dyn Error>` (a `&str` and a `String` too).
///
/// # Examples
///
/// ```no_run
/// use devlife_serve::{Options, Report, Server};
///
/// fn main() -> Result<(), Report> {
///     let sys = devlife_core::System::new();
///     sys.bus_register("platform")?;
///     let server = Server::start(sys, &Options::new())?;
///     server.run_until_signal()?;
///     Ok(())
/// }
/// ```
///
/// ```
/// # use devlife_serve::Report;
/// let r = Report::from(std::io::Error::other("the disk is on fire"));
/// assert_eq!(format!("{r:?}"), "the disk is on fire");
/// ```
pub struct Report(Box<dyn Error + Send + Sync + 'static>);

impl Report {
    /// The error inside.
    pub fn into_inner(self) -> Box<dyn Error + Send + Sync + 'static> {
        self.0
    }
}

impl<E: Into<Box<dyn Error + Send + Sync + 'static>>> From<E> for Report {
    fn from(e: E) -> Self {
        Report(e.into())
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut said = self.0.to_string();
        f.write_str(&said)?;
        let mut cause = self.0.source();
        while let Some(c) = cause {
            let msg = c.to_string();
            if !said.contains(&msg) {
                write!(f, ": {msg}")?;
                said.push_str(&msg);
            }
            cause = c.source();
        }
        Ok(())
    }
}

impl fmt::Debug for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}
