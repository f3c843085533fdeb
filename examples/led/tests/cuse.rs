//! `led-serve` with `DEVLIFE_CUSE=1`: a program built on devlife-serve,
//! unchanged, serves its nodes as real character devices. Needs CUSE and
//! root: `#[ignore]`d here, run by `scripts/cuse-tests` (in a VM where the
//! kernel has no CUSE).

use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::process::{Command, Stdio};

#[test]
#[ignore = "needs CUSE: run by scripts/cuse-tests"]
fn the_seekable_node_reads_to_its_end_from_the_position_the_server_keeps() {
    assert!(std::path::Path::new("/dev/cuse").exists(), "no /dev/cuse: run by scripts/cuse-tests");
    let dir = std::env::temp_dir().join(format!("led-cuse-{}", std::process::id()));
    let mut child = Command::new(env!("CARGO_BIN_EXE_led-serve"))
        .arg(&dir)
        .env("RUST_LOG", "warn")
        .env("DEVLIFE_CUSE", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert!(line.starts_with("ready "), "led-serve said {line:?}");

    let m = std::fs::metadata("/dev/led0").unwrap();
    assert!(m.file_type().is_char_device());
    assert_eq!(
        std::fs::read_to_string(dir.join("sys/class/leds/led0/dev")).unwrap(),
        format!("{}:{}\n", libc::major(m.rdev()), libc::minor(m.rdev()))
    );
    // `cat` ends: the kernel passes offset 0 to every CUSE read, and the
    // server keeps the position of a seekable node.
    let cat = Command::new("cat").arg("/dev/led0").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&cat.stdout), "0\n");
    std::fs::write("/dev/led0", "128").unwrap();
    let mut f = std::fs::File::open("/dev/led0").unwrap();
    let mut one = [0u8; 1];
    assert_eq!(f.read(&mut one).unwrap(), 1);
    assert_eq!(&one, b"1");
    let mut rest = String::new();
    f.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "28\n", "the second read went on from the first's end");
    // lseek is the kernel's noop_llseek on a CUSE device: it reports 0
    // and moves nothing the server sees.
    assert_eq!(f.seek(SeekFrom::Start(0)).unwrap(), 0);
    rest.clear();
    f.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "", "still at the end");

    // SIGTERM: every device removed, the nodes gone.
    // SAFETY: kill(2) on the child we started.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
    assert!(!std::path::Path::new("/dev/led0").exists());
}
