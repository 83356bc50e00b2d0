//! Sets `cohort_avx512` where the compiler has stable AVX-512 (Rust 1.89 and later), which
//! `conv`'s AVX-512F kernel needs; the workspace's minimum Rust is 1.88, where the kernel is left
//! out and the `gemm` crate runs instead.

use std::process::Command;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(cohort_avx512)");
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=RUSTC");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let minor = Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|v| {
            v.split_whitespace()
                .nth(1)?
                .split('.')
                .nth(1)?
                .parse::<u32>()
                .ok()
        });
    if minor.is_some_and(|m| m >= 89) {
        println!("cargo::rustc-cfg=cohort_avx512");
    }
}
