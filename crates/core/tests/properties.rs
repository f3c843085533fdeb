//! Property tests over many random inputs (a seeded xorshift, so a failure
//! replays): the ioctl number codec and name validation.

use devlife_core::ioctl::{Dir, IoctlCmd};
use devlife_core::name::{NAME_MAX, NameError, one_name, type_and_name, validate};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn ioctl_codec_round_trips() {
    let mut r = Rng(0x1234_5678);
    for _ in 0..200_000 {
        let x = r.next();
        let dir = [Dir::NONE, Dir::WRITE, Dir::READ, Dir::READ_WRITE][(x & 3) as usize];
        let (ty, nr) = ((x >> 8) as u8, (x >> 16) as u8);
        let size = ((x >> 24) as usize) % (devlife_core::ioctl::IOC_SIZE_MAX + 1);
        let c = IoctlCmd::new(dir, ty, nr, size);
        assert_eq!((c.dir(), c.ty(), c.nr(), c.size()), (dir, ty, nr, size));
        assert_eq!(IoctlCmd::from_raw(c.raw()), c);
        assert_eq!(c.in_size(), if dir.is_write() { size } else { 0 });
        assert_eq!(c.out_size(), if dir.is_read() { size } else { 0 });
        // Any raw number decodes into fields that encode back to it.
        let raw = x as u32;
        let d = IoctlCmd::from_raw(raw);
        assert_eq!(IoctlCmd::new(d.dir(), d.ty(), d.nr(), d.size()).raw(), raw);
    }
}

#[test]
fn valid_names_are_single_safe_components() {
    let mut r = Rng(0x9e37_79b9);
    let alphabet: Vec<char> = "ab./\\0\n -_é\u{7f}\u{0}xyz09".chars().collect();
    for _ in 0..200_000 {
        let len = (r.next() % 300) as usize;
        let s: String = (0..len).map(|_| alphabet[(r.next() % alphabet.len() as u64) as usize]).collect();
        match validate(&s) {
            Ok(()) => {
                assert!(!s.is_empty() && s.len() <= NAME_MAX && s != "." && s != "..");
                assert!(!s.contains('/') && !s.chars().any(char::is_control), "{s:?}");
                // A valid name joined to a directory stays one component below it.
                let p = std::path::Path::new("/base").join(&s);
                assert_eq!(p.parent(), Some(std::path::Path::new("/base")), "{s:?}");
                assert_eq!(one_name(format!("{s}\n").as_bytes()), Ok(s.as_str()));
            }
            Err(e) => {
                // A control write drops one trailing newline (echo's).
                let stripped = s.strip_suffix('\n').unwrap_or(&s);
                assert_eq!(one_name(s.as_bytes()).is_ok(), validate(stripped).is_ok(), "{s:?}");
                match e {
                    NameError::Empty => assert!(s.is_empty()),
                    NameError::TooLong => assert!(s.len() > NAME_MAX),
                    NameError::Dot => assert!(s == "." || s == ".."),
                    NameError::BadChar(c) => assert!(c == '/' || c.is_control()),
                    NameError::Reserved(r) => panic!("validate() reserves no name, but refused {r:?}"),
                }
            }
        }
    }
}

#[test]
fn type_and_name_needs_exactly_two_valid_fields() {
    let mut r = Rng(42);
    let words = ["xyz", "xyz0", "", "a/b", "..", "x y", "ok"];
    for _ in 0..50_000 {
        let n = 1 + (r.next() % 3) as usize;
        let parts: Vec<&str> = (0..n).map(|_| words[(r.next() % words.len() as u64) as usize]).collect();
        let text = parts.join(" ");
        let ok = type_and_name(text.as_bytes());
        let expect = text.split(' ').count() == 2 && text.split(' ').all(|w| validate(w).is_ok());
        assert_eq!(ok.is_ok(), expect, "{text:?}");
    }
}
