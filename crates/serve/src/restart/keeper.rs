//! The built-in keeper (`--supervise`, [`Options::supervise`]): a parent
//! that holds the server's connections and restarts it when it dies.
//!
//! It is a stand-in for systemd, speaking the same protocol ([`sd`]): it
//! starts the server with `$NOTIFY_SOCKET` naming its socket and `$FDSTORE`
//! set, keeps the descriptors the server stores there (`FDSTORE=1`,
//! `FDNAME=`), drops those it removes (`FDSTOREREMOVE=1`), and starts the
//! next server with them (`LISTEN_FDS`, `LISTEN_FDNAMES`, `LISTEN_PID`). A
//! server that runs under systemd with a descriptor store needs no keeper,
//! and one that runs under this keeper cannot tell the difference.
//!
//! # Policy
//!
//! * A server that exits with status 0 stopped on purpose (a signal it
//!   was sent, or its mount was unmounted from outside): the keeper exits
//!   with it.
//! * The first server exiting with a non-zero status before it was ever
//!   ready did not crash: it could not start (bad options, no FUSE), and
//!   would fail again; the keeper exits with its status, holding nothing.
//! * A server killed by a signal, or exiting with another status, is
//!   started again, at once if it had been ready for at least
//!   [`HEALTHY`]; otherwise after a delay that doubles from [`FIRST_DELAY`]
//!   up to [`MAX_DELAY`], so a server that cannot start does not spin.
//! * SIGTERM and SIGINT are passed to the server, and the keeper exits
//!   with the server's status once it has stopped. SIGHUP is passed on
//!   too (the server's planned hand-over).
//! * Only the current server's messages count (the sender's credentials,
//!   `SCM_CREDENTIALS`, are checked): another local process cannot put a
//!   descriptor in the store or take one out.
//!
//! The keeper runs one thread and holds no driver: it builds nothing but
//! its store, so its memory and descriptors stay flat however many times
//! the server is restarted.
//!
//! [`Options::supervise`]: crate::Options::supervise

use super::sd;
use rustix::event::{PollFd, PollFlags};
use rustix::fd::{AsRawFd, OwnedFd};
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SocketAddrUnix, SocketFlags,
    SocketType,
};
use rustix::process::{Pid, Signal, WaitOptions};
use std::ffi::CString;
use std::io::IoSliceMut;
use std::mem::MaybeUninit;
use std::os::unix::ffi::OsStrExt;
use std::time::{Duration, Instant};

/// A server ready for this long before it died is started again at once.
pub const HEALTHY: Duration = Duration::from_secs(1);
/// The first delay before starting again a server that died unready or
/// young.
pub const FIRST_DELAY: Duration = Duration::from_millis(100);
/// The longest delay between starts.
pub const MAX_DELAY: Duration = Duration::from_secs(5);
/// The most descriptors the store keeps (`FileDescriptorStoreMax=`).
const STORE_MAX: usize = 512;

/// The running server.
struct Child {
    pid: Pid,
    started: Instant,
    ready: Option<Instant>,
}

/// What the keeper holds.
struct Keeper {
    sock: OwnedFd,
    sock_name: String,
    store: Vec<(String, OwnedFd)>,
    exe: CString,
    argv: Vec<CString>,
    env: Vec<CString>,
}

/// Becomes the keeper of this program: starts it again as the server (the
/// same executable path and arguments), and keeps restarting it. Never
/// returns: the process exits with the last server's status.
pub(crate) fn run() -> ! {
    match Keeper::new().and_then(|k| k.serve()) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("devlife keeper: {e}");
            std::process::exit(1)
        }
    }
}

/// The signals the keeper watches, each written to its own pipe by
/// `signal-hook` (a poll loop sees them beside the socket).
struct SignalPipes {
    pipes: Vec<(i32, std::os::unix::net::UnixStream)>,
}

impl SignalPipes {
    fn new(signals: &[i32]) -> std::io::Result<Self> {
        let mut pipes = Vec::new();
        for &s in signals {
            let (r, w) = std::os::unix::net::UnixStream::pair()?;
            r.set_nonblocking(true)?;
            signal_hook::low_level::pipe::register(s, w)?;
            pipes.push((s, r));
        }
        Ok(SignalPipes { pipes })
    }

    /// The signals that came, each once (their pipes drained).
    fn take(&self, ready: &[bool]) -> Vec<i32> {
        use std::io::Read;
        let mut got = Vec::new();
        for ((s, mut r), &yes) in self.pipes.iter().map(|(s, r)| (s, r)).zip(ready) {
            if yes {
                let mut b = [0u8; 64];
                while matches!(r.read(&mut b), Ok(n) if n > 0) {}
                got.push(*s);
            }
        }
        got
    }
}

impl Keeper {
    fn new() -> std::io::Result<Self> {
        // The path, not /proc/self/exe: a server started after the binary
        // was replaced (an upgrade) runs the new one.
        let exe = std::fs::read_link("/proc/self/exe")?;
        let exe = exe.as_os_str().as_bytes();
        let exe = exe.strip_suffix(b" (deleted)").unwrap_or(exe);
        let exe = CString::new(exe).map_err(std::io::Error::other)?;
        let argv = std::env::args_os()
            .map(|a| CString::new(a.as_bytes()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(std::io::Error::other)?;
        let sock_name = format!("devlife-keeper-{}", std::process::id());
        let sock = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::DGRAM,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )?;
        rustix::net::bind(&sock, &SocketAddrUnix::new_abstract_name(sock_name.as_bytes())?)?;
        rustix::net::sockopt::set_socket_passcred(&sock, true)?;
        let skip = [sd::NOTIFY_SOCKET, sd::FDSTORE, sd::LISTEN_FDS, sd::LISTEN_FDNAMES, sd::LISTEN_PID];
        let env = std::env::vars_os()
            .filter(|(k, _)| !skip.iter().any(|s| k.as_bytes() == s.as_bytes()))
            .filter_map(|(k, v)| {
                let mut kv = k.as_bytes().to_vec();
                kv.push(b'=');
                kv.extend_from_slice(v.as_bytes());
                CString::new(kv).ok()
            })
            .collect();
        Ok(Keeper { sock, sock_name, store: Vec::new(), exe, argv, env })
    }

    fn serve(mut self) -> std::io::Result<i32> {
        use signal_hook::consts::{SIGCHLD, SIGHUP, SIGINT, SIGTERM};
        let signals = SignalPipes::new(&[SIGCHLD, SIGTERM, SIGINT, SIGHUP])?;
        let mut delay = Duration::ZERO;
        let (mut stopping, mut ever_ready) = (false, false);
        // SIGHUP passed on: the server hands over, and its successor
        // starts as soon as it exits, whatever its status.
        let mut upgrading = false;
        let mut child = self.spawn()?;
        loop {
            let mut fds = vec![PollFd::new(&self.sock, PollFlags::IN)];
            fds.extend(signals.pipes.iter().map(|(_, r)| PollFd::new(r, PollFlags::IN)));
            match rustix::event::poll(&mut fds, None) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
            let ready: Vec<bool> = fds.iter().map(|f| !f.revents().is_empty()).collect();
            drop(fds);
            if ready[0] {
                self.receive(&mut child);
            }
            for sig in signals.take(&ready[1..]) {
                if sig == SIGCHLD {
                    continue;
                }
                if sig == SIGHUP {
                    upgrading = true;
                } else {
                    stopping = true;
                }
                if let Some(s) = Signal::from_named_raw(sig) {
                    let _ = rustix::process::kill_process(child.pid, s);
                }
            }
            // Reaped here whatever woke the loop: SIGCHLD may coalesce.
            let Some(status) = reap(child.pid)? else { continue };
            // Its last messages (a store, a removal) before it died.
            self.receive(&mut child);
            let code = status.exit_status();
            if upgrading && !stopping {
                upgrading = false;
                eprintln!(
                    "devlife keeper: the server handed over ({}); starting the next",
                    describe(&status)
                );
                child = self.spawn()?;
                continue;
            }
            if stopping || code == Some(0) {
                eprintln!("devlife keeper: the server {}; exiting", describe(&status));
                return Ok(code.unwrap_or(1));
            }
            ever_ready |= child.ready.is_some();
            if let (false, Some(code)) = (ever_ready, code) {
                eprintln!("devlife keeper: the server could not start ({}); exiting", describe(&status));
                return Ok(code);
            }
            let lived_ready = child.ready.is_some_and(|r| r.elapsed() >= HEALTHY);
            delay = if lived_ready { Duration::ZERO } else { (delay * 2).clamp(FIRST_DELAY, MAX_DELAY) };
            eprintln!(
                "devlife keeper: the server (pid {}) {} after {:.1} s; starting it again in {} ms with {} kept descriptors",
                child.pid.as_raw_nonzero(),
                describe(&status),
                child.started.elapsed().as_secs_f64(),
                delay.as_millis(),
                self.store.len()
            );
            if !delay.is_zero() && self.sleep_watching(delay, &signals)? {
                return Ok(code.unwrap_or(1));
            }
            child = self.spawn()?;
        }
    }

    /// Sleeps `d`, still taking SIGTERM/SIGINT: returns whether one came
    /// (no server is running to pass it to, so the keeper stops).
    fn sleep_watching(&self, d: Duration, signals: &SignalPipes) -> std::io::Result<bool> {
        let until = Instant::now() + d;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            let ts =
                rustix::fs::Timespec { tv_sec: left.as_secs() as i64, tv_nsec: left.subsec_nanos() as i64 };
            let mut fds: Vec<_> = signals.pipes.iter().map(|(_, r)| PollFd::new(r, PollFlags::IN)).collect();
            match rustix::event::poll(&mut fds, Some(&ts)) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
            let ready: Vec<bool> = fds.iter().map(|f| !f.revents().is_empty()).collect();
            drop(fds);
            let got = signals.take(&ready);
            if got.iter().any(|&s| s == signal_hook::consts::SIGTERM || s == signal_hook::consts::SIGINT) {
                return Ok(true);
            }
        }
    }

    /// Takes every queued message; applies those `child` sent.
    fn receive(&mut self, child: &mut Child) {
        loop {
            let mut buf = [0u8; 4096];
            let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(8), ScmCredentials(1))];
            let mut control = RecvAncillaryBuffer::new(&mut space);
            let mut iov = [IoSliceMut::new(&mut buf)];
            let r = rustix::net::recvmsg(
                &self.sock,
                &mut iov,
                &mut control,
                RecvFlags::DONTWAIT | RecvFlags::CMSG_CLOEXEC,
            );
            let n = match r {
                Ok(m) => m.bytes,
                Err(rustix::io::Errno::INTR) => continue,
                Err(_) => return,
            };
            let mut fds = Vec::new();
            let mut sender = None;
            for m in control.drain() {
                match m {
                    RecvAncillaryMessage::ScmRights(it) => fds.extend(it),
                    RecvAncillaryMessage::ScmCredentials(c) => sender = Some(c.pid),
                    _ => {}
                }
            }
            if sender != Some(child.pid) {
                // Not the server: dropped, descriptors closed.
                tracing::warn!(?sender, "a notification from another process was ignored");
                continue;
            }
            let text = String::from_utf8_lossy(&buf[..n.min(buf.len())]).into_owned();
            self.apply(&text, fds, child);
        }
    }

    fn apply(&mut self, text: &str, fds: Vec<OwnedFd>, child: &mut Child) {
        let mut name = "stored";
        let (mut store, mut remove) = (false, false);
        for line in text.lines() {
            match line.split_once('=') {
                Some(("READY", "1")) => child.ready = Some(Instant::now()),
                Some(("FDSTORE", "1")) => store = true,
                Some(("FDSTOREREMOVE", "1")) => remove = true,
                Some(("FDNAME", n)) => name = n,
                _ => {}
            }
        }
        if remove {
            self.store.retain(|(n, _)| n != name);
        }
        if store {
            for fd in fds {
                // One per name: a name stored again replaces the old one.
                self.store.retain(|(n, _)| n != name);
                if self.store.len() >= STORE_MAX {
                    tracing::warn!(name, "the keeper's store is full; a descriptor was dropped");
                    continue;
                }
                self.store.push((name.to_owned(), fd));
            }
        }
    }

    /// Starts the server, with the store's descriptors at 3.. and the
    /// protocol's variables set.
    fn spawn(&self) -> std::io::Result<Child> {
        let mut env = self.env.clone();
        env.push(
            CString::new(format!("{}=@{}", sd::NOTIFY_SOCKET, self.sock_name))
                .map_err(std::io::Error::other)?,
        );
        env.push(CString::new(format!("{}={STORE_MAX}", sd::FDSTORE)).map_err(std::io::Error::other)?);
        let n = self.store.len();
        if n > 0 {
            let names: Vec<&str> = self.store.iter().map(|(n, _)| n.as_str()).collect();
            env.push(CString::new(format!("{}={n}", sd::LISTEN_FDS)).map_err(std::io::Error::other)?);
            env.push(
                CString::new(format!("{}={}", sd::LISTEN_FDNAMES, names.join(":")))
                    .map_err(std::io::Error::other)?,
            );
        }
        // LISTEN_PID is the child's own pid, written after the fork into
        // this buffer (the environment is built before it: nothing after a
        // fork may allocate).
        let mut listen_pid = format!("{}=", sd::LISTEN_PID).into_bytes();
        let digits_at = listen_pid.len();
        listen_pid.extend_from_slice(&[0u8; 12]);
        let mut envp: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
        if n > 0 {
            envp.push(listen_pid.as_ptr().cast());
        }
        envp.push(std::ptr::null());
        let mut argv: Vec<*const libc::c_char> = self.argv.iter().map(|a| a.as_ptr()).collect();
        argv.push(std::ptr::null());
        let raw: Vec<i32> = self.store.iter().map(|(_, fd)| fd.as_raw_fd()).collect();
        // Above every descriptor the store holds and every target: the
        // first pass of the move cannot overwrite a source.
        let high = raw.iter().copied().max().unwrap_or(0).max(sd::LISTEN_FDS_START + n as i32) + 1;
        let pid_buf = listen_pid.as_mut_ptr();
        // SAFETY: after the fork the child calls only async-signal-safe
        // functions (getpid, fcntl, dup2, execve, _exit) and writes only
        // memory it owns (its copy of `listen_pid`); every pointer it
        // passes (`argv`, `envp`, `exe`) points into allocations made
        // before the fork, which its copy of the address space holds.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if pid == 0 {
            // SAFETY: as above: the child, between fork and exec.
            unsafe { child_exec(&raw, high, pid_buf.add(digits_at), self.exe.as_ptr(), &argv, &envp) }
        }
        let pid = Pid::from_raw(pid).ok_or_else(|| std::io::Error::other("fork returned pid 0"))?;
        Ok(Child { pid, started: Instant::now(), ready: None })
    }
}

/// The child's side of [`Keeper::spawn`]: moves the kept descriptors to
/// 3.., writes its pid after `LISTEN_PID=`, and executes the server.
///
/// # Safety
///
/// Only in the child of a fork, before anything else runs there; `digits`
/// points at 12 writable bytes; `exe`, `argv` and `envp` are valid,
/// NUL-terminated as `execve(2)` wants.
unsafe fn child_exec(
    raw: &[i32],
    high: i32,
    digits: *mut u8,
    exe: *const libc::c_char,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
) -> ! {
    // SAFETY: the caller's contract (the whole body): each call below is
    // async-signal-safe, and `digits` has the room written.
    unsafe {
        let mut moved = [0i32; STORE_MAX];
        for (i, &fd) in raw.iter().enumerate() {
            moved[i] = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, high);
            if moved[i] < 0 {
                libc::_exit(126);
            }
        }
        for (i, &fd) in moved[..raw.len()].iter().enumerate() {
            // dup2 leaves the new descriptor without close-on-exec.
            if libc::dup2(fd, sd::LISTEN_FDS_START + i as i32) < 0 {
                libc::_exit(126);
            }
        }
        let mut pid = libc::getpid() as u32;
        let mut tmp = [0u8; 10];
        let mut len = 0;
        loop {
            tmp[len] = b'0' + (pid % 10) as u8;
            len += 1;
            pid /= 10;
            if pid == 0 {
                break;
            }
        }
        for i in 0..len {
            *digits.add(i) = tmp[len - 1 - i];
        }
        *digits.add(len) = 0;
        libc::execve(exe, argv.as_ptr(), envp.as_ptr());
        libc::_exit(127)
    }
}

/// The exit status of `pid` if it has ended (reaped), else `None`.
fn reap(pid: Pid) -> std::io::Result<Option<rustix::process::WaitStatus>> {
    loop {
        match rustix::process::waitpid(Some(pid), WaitOptions::NOHANG) {
            Ok(Some((_, status))) if status.exited() || status.signaled() => return Ok(Some(status)),
            Ok(_) => return Ok(None),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

fn describe(status: &rustix::process::WaitStatus) -> String {
    match (status.exit_status(), status.terminating_signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (_, Some(s)) => format!("was killed by signal {s}"),
        _ => "ended".to_owned(),
    }
}
