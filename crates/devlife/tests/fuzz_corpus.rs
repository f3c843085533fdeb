//! Replays the fuzz corpus (`fuzz/corpus/<target>/*`) through the same
//! harnesses the fuzz targets run, so every input the fuzzer kept (and every
//! crash it found, once added there) is checked by `cargo test`.

use std::path::Path;

fn replay(target: &str, f: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus").join(target);
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = e.unwrap().path();
        f(&std::fs::read(&p).unwrap());
        n += 1;
    }
    assert!(n > 0, "empty corpus for {target}");
}

#[test]
fn decode_corpus() {
    replay("decode", devlife::fuzzing::decode);
}

#[test]
fn control_corpus() {
    replay("control", devlife::fuzzing::control);
}
