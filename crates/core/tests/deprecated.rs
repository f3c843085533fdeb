//! Renamed public items keep their old names, deprecated, for a release
//! (`CHANGELOG.md`, "Deprecated"): code written against them still builds.

#![allow(deprecated)]

use devlife_core::fops::Ctx;
use devlife_core::{FileOperations, KResult};

struct Old;

impl FileOperations for Old {
    type File = ();
    fn open(&self, _cx: &Ctx<'_>) -> KResult<()> {
        Ok(())
    }
}

#[test]
fn the_old_context_name_still_implements_file_operations() {
    let sys = devlife_core::System::new();
    let d = sys.debugfs().create_file("old", 0o444, Old).unwrap();
    d.node().unwrap().open(&devlife_core::Caller::default()).unwrap();
}
