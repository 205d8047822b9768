//! Gives `libtally.so` its SONAME, `libtally.so.ABI` (docs/EMBEDDING.md, "ABI policy"): programs
//! linked against it record that name, and the dynamic loader refuses a library of another ABI.
//! `scripts/dist.sh` installs the file as `libtally.so.ABI.MINOR.PATCH` with the symlinks.

/// The ABI major version: raised on any incompatible change of the C ABI, independent of the
/// package version (a removed or changed function, struct or meaning); additions keep it.
const ABI_MAJOR: u32 = 0;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if os == "linux" {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libtally.so.{ABI_MAJOR}");
    }
    println!("cargo:rustc-env=TALLY_ABI_MAJOR={ABI_MAJOR}");
}
