//! Links the forkd binary with its workers' code laid out together
//! (src/bin/forkd/child-path.ld says why). Linux only: the layout was measured there, with
//! the GNU-compatible linkers (lld, ld.bfd) that read such a script.

fn main() {
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/bin/forkd/child-path.ld");
    println!("cargo:rerun-if-changed={}", script.display());
    if std::env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "linux") {
        println!("cargo:rustc-link-arg-bin=forkd=-Wl,-T,{}", script.display());
    }
}
