//! Control-file and debugfs-store writes on arbitrary bytes.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| devlife::fuzzing::control(data));
