//! `composer verify PATH... --cert CERT`: checks that every kernel module
//! under the paths carries a signature that verifies cryptographically
//! against one of the given certificates.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use super::{CliError, CliResult, Global};
use crate::sign::tree::verify_paths;
use crate::sign::verify::Trusted;

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// Modules, or directories searched for `*.ko`.
    #[arg(value_name = "PATH", required = true)]
    pub paths: Vec<PathBuf>,
    /// A trusted certificate (PEM or DER), such as the kernel build's
    /// certs/signing_key.x509. Repeatable.
    #[arg(long = "cert", value_name = "FILE", required_unless_present = "kernel")]
    pub certs: Vec<PathBuf>,
    /// Trust the certificates built into this kernel image (bzImage,
    /// Image or Image.gz), as the kernel itself does.
    #[arg(long, value_name = "VMLINUZ")]
    pub kernel: Option<PathBuf>,
    /// Print only failures and the summary.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

pub fn run(global: &Global, args: &VerifyArgs) -> CliResult {
    let mut trusted = Vec::new();
    for c in &args.certs {
        trusted.extend(Trusted::read_file(c).map_err(CliError::user)?);
    }
    if let Some(k) = &args.kernel {
        trusted.extend(Trusted::read_kernel(k).map_err(CliError::user)?);
    }
    for p in &args.paths {
        if !p.exists() {
            return Err(CliError::user(format!(
                "{}: no such file or directory",
                p.display()
            )));
        }
    }
    let checked = verify_paths(&args.paths, &trusted);
    let bad = checked.iter().filter(|c| c.result.is_err()).count();
    if global.json {
        let items: Vec<serde_json::Value> = checked
            .iter()
            .map(|c| match &c.result {
                Ok(v) => serde_json::json!({
                    "path": c.path, "ok": true, "signer": trusted[v.signer].subject(),
                    "hash": v.hash, "algorithm": v.algorithm,
                }),
                Err(e) => serde_json::json!({"path": c.path, "ok": false, "error": e}),
            })
            .collect();
        println!("{}", serde_json::Value::Array(items));
    } else {
        for c in &checked {
            match &c.result {
                Ok(v) if !args.quiet => println!(
                    "ok    {}  ({} {}, {})",
                    c.path.display(),
                    v.algorithm,
                    v.hash,
                    trusted[v.signer].subject()
                ),
                Ok(_) => {}
                Err(e) => println!("FAIL  {}: {e}", c.path.display()),
            }
        }
    }
    eprintln!(
        "{} module(s) checked, {} signed by a trusted key, {bad} not",
        checked.len(),
        checked.len() - bad
    );
    if checked.is_empty() {
        return Err(CliError::user("no kernel modules (*.ko) found"));
    }
    if bad > 0 {
        return Err(CliError::user(format!(
            "{bad} module(s) failed verification"
        )));
    }
    Ok(ExitCode::SUCCESS)
}
