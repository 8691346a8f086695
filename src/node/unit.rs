//! The boot-time service: a systemd unit that installs a module image and
//! loads its modules when the machine starts, and unloads them when it
//! stops, as Forklift's and modulus' units do: `Type=oneshot` with
//! `RemainAfterExit=yes` (the service stays "active" while the modules are
//! loaded, so stopping it unloads them), after the network is up (the
//! image may come from a registry), wanted by `multi-user.target`. The
//! image is installed under the unit's name (`--name NAME`), so stopping
//! unloads exactly its modules (`composer kmod unload --image NAME`),
//! whatever release booted.
//!
//! Invariant: every argument reaches composer exactly as given. systemd
//! reads a command line with its own rules: words split on whitespace and
//! unquoted (`"..."` with C escapes), `%` starts a specifier (`%%` is a
//! `%`), `$VAR` and `${VAR}` are replaced by the environment when the
//! command runs (`$$` is a `$`), and a lone `;` separates commands (`\;`
//! is a `;`). So `${KERNEL_FULL_VERSION}` in a reference is written
//! `$${KERNEL_FULL_VERSION}`, and composer, not systemd, replaces it. A
//! control character (a newline) cannot be carried and is refused.

use std::path::{Path, PathBuf};

/// What the unit runs.
#[derive(Debug, Clone)]
pub struct UnitOptions {
    /// The composer binary (absolute: systemd runs only absolute paths).
    pub composer: PathBuf,
    /// More arguments for `composer kmod install REF --name NAME --load`
    /// (`--param m.k=v`, `--replace-in-tree M`, `--cert FILE`, ...).
    pub install_args: Vec<String>,
    /// More arguments for `composer kmod unload --image NAME`.
    pub unload_args: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum UnitError {
    #[error("{}: not an absolute path (systemd runs only absolute paths)", .0.display())]
    Relative(PathBuf),
    #[error(
        "{what} {value:?} holds a control character (a newline?), which a unit file cannot carry"
    )]
    Control { what: &'static str, value: String },
    #[error(
        "`{0}` cannot name the unit and its image: use letters, digits, `-`, `_` and `.`, not starting with `.`"
    )]
    Name(String),
}

/// The unit's file name for `name`: `composer-kmod-<name>.service`.
pub fn unit_file_name(name: &str) -> String {
    format!("composer-kmod-{name}.service")
}

/// The text of the unit `name` that installs and loads `reference`.
pub fn unit(name: &str, reference: &str, opts: &UnitOptions) -> Result<String, UnitError> {
    // An image name (`node::check_name`) that systemd takes in a unit
    // name too (no `+`).
    if super::check_name(name).is_err() || name.contains('+') {
        return Err(UnitError::Name(name.to_string()));
    }
    if !opts.composer.is_absolute() {
        return Err(UnitError::Relative(opts.composer.clone()));
    }
    let composer = path_arg(&opts.composer)?;
    let mut start = vec![composer.clone(), "kmod".into(), "install".into()];
    start.push(quote(reference, "the reference")?);
    start.extend(["--name".into(), name.to_string(), "--load".into()]);
    for a in &opts.install_args {
        start.push(quote(a, "an install argument")?);
    }
    let mut stop = vec![composer, "kmod".into(), "unload".into()];
    stop.extend(["--image".into(), name.to_string()]);
    for a in &opts.unload_args {
        stop.push(quote(a, "an unload argument")?);
    }
    let description = setting(
        &format!("composer: kernel modules {name} from {reference}"),
        "the reference",
    )?;
    Ok(format!(
        "# Written by `composer kmod unit`: installs and loads the modules of an image at boot,\n\
         # unloads them when stopped (systemctl stop {file}).\n\
         [Unit]\n\
         Description={description}\n\
         Wants=network-online.target\n\
         After=network-online.target\n\
         \n\
         [Service]\n\
         Type=oneshot\n\
         RemainAfterExit=yes\n\
         ExecStart={start}\n\
         ExecStop={stop}\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n",
        file = unit_file_name(name),
        start = start.join(" "),
        stop = stop.join(" "),
    ))
}

fn path_arg(path: &Path) -> Result<String, UnitError> {
    quote(&path.to_string_lossy(), "the composer path")
}

/// A setting's value: `%` doubled (specifiers are expanded everywhere).
fn setting(value: &str, what: &'static str) -> Result<String, UnitError> {
    if value.chars().any(char::is_control) {
        return Err(UnitError::Control {
            what,
            value: value.to_string(),
        });
    }
    Ok(value.replace('%', "%%"))
}

/// One word of an `Exec*=` command line that systemd hands to the program
/// as `arg`, byte for byte.
pub fn quote(arg: &str, what: &'static str) -> Result<String, UnitError> {
    let escaped = setting(arg, what)?.replace('$', "$$");
    if escaped == ";" {
        return Ok("\\;".into());
    }
    let plain = !escaped.is_empty()
        && !escaped
            .chars()
            .any(|c| c.is_whitespace() || "\"'\\".contains(c));
    if plain {
        return Ok(escaped);
    }
    Ok(format!(
        "\"{}\"",
        escaped.replace('\\', "\\\\").replace('"', "\\\"")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> UnitOptions {
        UnitOptions {
            composer: "/usr/local/bin/composer".into(),
            install_args: vec![],
            unload_args: vec![],
        }
    }

    #[test]
    fn kernel_release_variable_reaches_composer_not_the_shell() {
        let u = unit(
            "hello",
            "oci-archive:/images/kmod-${KERNEL_FULL_VERSION}.tar",
            &opts(),
        )
        .unwrap();
        let start = u.lines().find(|l| l.starts_with("ExecStart=")).unwrap();
        assert_eq!(
            start,
            "ExecStart=/usr/local/bin/composer kmod install oci-archive:/images/kmod-$${KERNEL_FULL_VERSION}.tar --name hello --load"
        );
        assert!(u.contains("ExecStop=/usr/local/bin/composer kmod unload --image hello\n"));
        assert!(u.contains("Type=oneshot\nRemainAfterExit=yes\n"));
        assert!(u.contains("Wants=network-online.target\nAfter=network-online.target\n"));
        assert!(u.contains("[Install]\nWantedBy=multi-user.target\n"));
    }

    #[test]
    fn arguments_are_quoted_for_systemd() {
        assert_eq!(quote("a b", "x").unwrap(), "\"a b\"");
        assert_eq!(quote("50%", "x").unwrap(), "50%%");
        assert_eq!(quote("$HOME", "x").unwrap(), "$$HOME");
        assert_eq!(quote(";", "x").unwrap(), "\\;");
        assert_eq!(quote("", "x").unwrap(), "\"\"");
        assert_eq!(quote("q\"x\\", "x").unwrap(), "\"q\\\"x\\\\\"");
        assert_eq!(quote("it's", "x").unwrap(), "\"it's\"");
    }

    #[test]
    fn unit_refuses_what_it_cannot_write() {
        let e = unit("hello", "ref\nExecStartPre=/bin/sh", &opts()).unwrap_err();
        assert!(e.to_string().contains("control character"), "{e}");
        let mut o = opts();
        o.composer = "composer".into();
        assert!(matches!(
            unit("hello", "r", &o),
            Err(UnitError::Relative(_))
        ));
        for bad in ["a/b", ".x", "a+b", "a:b", ""] {
            assert!(
                matches!(unit(bad, "r", &opts()), Err(UnitError::Name(_))),
                "{bad}"
            );
        }
    }
}
