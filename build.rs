//! Links the forkd binary with its workers' code laid out together
//! (src/bin/forkd/child-path.ld says why). Linux only: the layout was measured there, with
//! the linkers that read such a script (lld, Rust's default, and GNU ld). gold and mold do
//! not take its INSERT: with either named in the flags, forkd is linked as it comes.

fn main() {
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/bin/forkd/child-path.ld");
    println!("cargo:rerun-if-changed={}", script.display());
    println!("cargo:rerun-if-env-changed=CARGO_ENCODED_RUSTFLAGS");
    let linux = std::env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "linux");
    let flags = std::env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default()
        + &std::env::var("RUSTC_LINKER").unwrap_or_default();
    let other_linker = ["ld=gold", "ld.gold", "mold"]
        .iter()
        .any(|l| flags.contains(l));
    if other_linker {
        println!("cargo:warning=gold or mold: forkd is linked without child-path.ld");
    }
    if linux && !other_linker {
        println!("cargo:rustc-link-arg-bin=forkd=-Wl,-T,{}", script.display());
    }
}
