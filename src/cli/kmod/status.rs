//! `composer kmod status [--json]`: the installed images, each module's
//! state and the kernel's taint, as text or JSON.

use std::path::Path;
use std::process::ExitCode;

use clap::Args;

use super::{CliError, CliResult, StateArgs, node_path, user};
use crate::node::Host;
use crate::node::state::{Status, status};

#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub state: StateArgs,
}

pub fn run(host: &Host, cwd: &Path, json: bool, a: &StatusArgs) -> CliResult {
    let s = status(host, &node_path(cwd, &a.state.state_dir)).map_err(user)?;
    if json {
        let text = serde_json::to_string_pretty(&s).map_err(|e| CliError::Internal(e.into()))?;
        println!("{text}");
    } else {
        print!("{}", status_text(&s));
    }
    Ok(ExitCode::SUCCESS)
}

fn status_text(s: &Status) -> String {
    let mut out = String::new();
    let kernel = s.running_release.as_deref().unwrap_or("(unknown)");
    let sig = match s.sig_enforce {
        Some(true) => "module signatures enforced (sig_enforce=Y)",
        Some(false) => "module signatures not enforced (sig_enforce=N)",
        None => "no module signatures",
    };
    let taint = match s.tainted {
        None => "taint unknown".to_string(),
        Some(0) => "not tainted".to_string(),
        Some(v) => format!(
            "tainted {v}: {}",
            s.taint_flags
                .iter()
                .map(|f| format!("{} ({})", f.letter, f.description))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    out.push_str(&format!("kernel {kernel}: {sig}; {taint}\n"));
    if s.images.is_empty() {
        out.push_str("no images installed\n");
    }
    for i in &s.images {
        let running = if i.running { "" } else { " (not running)" };
        out.push_str(&format!(
            "\n{}  {}{running}  {}\n  from {}\n  in {}\n",
            i.name,
            i.release,
            i.digest,
            i.reference,
            i.dir.display()
        ));
        for m in &i.modules {
            let mut line = format!("  {:<24} {}", m.name, m.state);
            if let Some(t) = m.taint.as_deref().filter(|t| !t.is_empty()) {
                line.push_str(&format!(" (taint {t})"));
            }
            if !m.used_by.is_empty() {
                line.push_str(&format!(", used by {}", m.used_by.join(", ")));
            }
            if !m.present {
                line.push_str(&format!("; {} is missing", m.path.display()));
            }
            out.push_str(&line);
            out.push('\n');
        }
        if let Some(d) = &i.firmware_dir {
            out.push_str(&format!(
                "  firmware: {} file(s) in {}\n",
                i.firmware.len(),
                d.display()
            ));
        }
    }
    out
}
