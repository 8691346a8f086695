//! The hermetic sprig functions available to templates, implemented with
//! Go's semantics (argument order, byte offsets, `%v` printing).
//!
//! Written here because no crate offers sprig for the Go-template engine we
//! use. The set covers every function the real Talos trees use
//! (`regexReplaceAll`, `replace`, `trimPrefix`, `substr`) plus the common
//! string helpers of sprig's hermetic map. A function that sprig has but this
//! list lacks is a parse error naming it, never a silent empty string.
//!
//! Invariant: like Go's reflection-based calls, string parameters accept only
//! strings; a missing variable (`<no value>`) passed to one is an error, as it
//! is in Go.

use std::collections::BTreeMap;
use std::sync::Arc;

use gotmpl::{FuncMap, TemplateError, Value};
use regex::Regex;

type R = Result<Value, TemplateError>;

fn fail(name: &str, msg: impl std::fmt::Display) -> TemplateError {
    TemplateError::Exec(format!("error calling {name}: {msg}"))
}

fn arity(name: &str, args: &[Value], n: usize) -> Result<(), TemplateError> {
    if args.len() == n {
        Ok(())
    } else {
        Err(TemplateError::Exec(format!(
            "wrong number of args for {name}: want {n} got {}",
            args.len()
        )))
    }
}

fn string<'a>(name: &str, v: &'a Value) -> Result<&'a str, TemplateError> {
    match v {
        Value::String(s) => Ok(s),
        Value::Nil => Err(fail(name, "invalid value; expected string")),
        other => Err(fail(
            name,
            format!(
                "wrong type for value; expected string; got {}",
                other.type_name()
            ),
        )),
    }
}

fn int(name: &str, v: &Value) -> Result<i64, TemplateError> {
    match v {
        Value::Int(i) => Ok(*i),
        Value::Uint(u) => i64::try_from(*u).map_err(|_| fail(name, "integer overflow")),
        other => Err(fail(
            name,
            format!(
                "wrong type for value; expected int; got {}",
                other.type_name()
            ),
        )),
    }
}

fn s(v: impl Into<Arc<str>>) -> Value {
    Value::String(v.into())
}

fn regex(name: &str, pattern: &str) -> Result<Regex, TemplateError> {
    Regex::new(pattern).map_err(|e| fail(name, e))
}

/// sprig's `empty`: nil, false, 0, "" and empty collections.
fn is_empty(v: &Value) -> bool {
    !gotmpl::is_true(v)
}

/// Go's `%q` for a string: printable characters as they are, the rest
/// escaped.
pub fn go_quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c if c.is_control() => {
                if (c as u32) <= 0xffff {
                    out.push_str(&format!("\\u{:04x}", c as u32))
                } else {
                    out.push_str(&format!("\\U{:08x}", c as u32))
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `fmt.Sprint`-style text of a value, as sprig's `toString` gives it.
fn to_text(v: &Value) -> String {
    match v {
        Value::Nil => "<nil>".to_string(),
        other => other.to_string(),
    }
}

fn indent_text(width: i64, text: &str) -> String {
    let pad = " ".repeat(width.max(0) as usize);
    format!("{pad}{}", text.replace('\n', &format!("\n{pad}")))
}

/// The function map handed to every template.
pub fn functions() -> FuncMap {
    let mut m: FuncMap = BTreeMap::new();
    let mut add = |name: &'static str, f: fn(&'static str, &[Value]) -> R| {
        m.insert(
            name.to_string(),
            Arc::new(move |args: &[Value]| f(name, args)),
        );
    };

    add("regexReplaceAll", |n, a| {
        arity(n, a, 3)?;
        let re = regex(n, string(n, &a[0])?)?;
        Ok(s(re
            .replace_all(string(n, &a[1])?, string(n, &a[2])?)
            .as_ref()))
    });
    add("regexReplaceAllLiteral", |n, a| {
        arity(n, a, 3)?;
        let re = regex(n, string(n, &a[0])?)?;
        let repl = string(n, &a[2])?;
        Ok(s(re
            .replace_all(string(n, &a[1])?, regex::NoExpand(repl))
            .as_ref()))
    });
    add("regexMatch", |n, a| {
        arity(n, a, 2)?;
        Ok(Value::Bool(
            regex(n, string(n, &a[0])?)?.is_match(string(n, &a[1])?),
        ))
    });
    add("regexFind", |n, a| {
        arity(n, a, 2)?;
        let re = regex(n, string(n, &a[0])?)?;
        Ok(s(re.find(string(n, &a[1])?).map_or("", |m| m.as_str())))
    });
    add("replace", |n, a| {
        arity(n, a, 3)?;
        let (old, new, src) = (string(n, &a[0])?, string(n, &a[1])?, string(n, &a[2])?);
        Ok(s(go_replace_all(src, old, new)))
    });
    add("trimPrefix", |n, a| {
        arity(n, a, 2)?;
        let (p, src) = (string(n, &a[0])?, string(n, &a[1])?);
        Ok(s(src.strip_prefix(p).unwrap_or(src)))
    });
    add("trimSuffix", |n, a| {
        arity(n, a, 2)?;
        let (p, src) = (string(n, &a[0])?, string(n, &a[1])?);
        Ok(s(src.strip_suffix(p).unwrap_or(src)))
    });
    add("trim", |n, a| {
        arity(n, a, 1)?;
        Ok(s(string(n, &a[0])?.trim()))
    });
    add("trimAll", |n, a| {
        arity(n, a, 2)?;
        let (cut, src) = (string(n, &a[0])?, string(n, &a[1])?);
        Ok(s(src.trim_matches(|c| cut.contains(c))))
    });
    add("upper", |n, a| {
        arity(n, a, 1)?;
        Ok(s(string(n, &a[0])?.to_uppercase()))
    });
    add("lower", |n, a| {
        arity(n, a, 1)?;
        Ok(s(string(n, &a[0])?.to_lowercase()))
    });
    add("repeat", |n, a| {
        arity(n, a, 2)?;
        let count = int(n, &a[0])?;
        let text = string(n, &a[1])?;
        if count < 0 || (count as u128) * (text.len() as u128) > 64 << 20 {
            return Err(fail(n, "repeat count out of range"));
        }
        Ok(s(text.repeat(count as usize)))
    });
    add("substr", |n, a| {
        arity(n, a, 3)?;
        let (start, end, src) = (int(n, &a[0])?, int(n, &a[1])?, string(n, &a[2])?);
        go_substr(src, start, end).map(s).ok_or_else(|| {
            fail(
                n,
                format!(
                    "slice bounds out of range [{start}:{end}] with length {}",
                    src.len()
                ),
            )
        })
    });
    add("trunc", |n, a| {
        arity(n, a, 2)?;
        let (c, src) = (int(n, &a[0])?, string(n, &a[1])?);
        let len = src.len() as i64;
        let out = if c < 0 && len + c > 0 {
            src.get((len + c) as usize..)
        } else if c >= 0 && len > c {
            src.get(..c as usize)
        } else {
            Some(src)
        };
        out.map(s)
            .ok_or_else(|| fail(n, "cut inside a UTF-8 character"))
    });
    add("nospace", |n, a| {
        arity(n, a, 1)?;
        Ok(s(string(n, &a[0])?
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect::<String>()))
    });
    add("contains", |n, a| {
        arity(n, a, 2)?;
        Ok(Value::Bool(string(n, &a[1])?.contains(string(n, &a[0])?)))
    });
    add("hasPrefix", |n, a| {
        arity(n, a, 2)?;
        Ok(Value::Bool(
            string(n, &a[1])?.starts_with(string(n, &a[0])?),
        ))
    });
    add("hasSuffix", |n, a| {
        arity(n, a, 2)?;
        Ok(Value::Bool(string(n, &a[1])?.ends_with(string(n, &a[0])?)))
    });
    add("quote", |_, a| {
        let parts: Vec<String> = a
            .iter()
            .filter(|v| !matches!(v, Value::Nil))
            .map(|v| go_quote(&to_text(v)))
            .collect();
        Ok(s(parts.join(" ")))
    });
    add("squote", |_, a| {
        let parts: Vec<String> = a
            .iter()
            .filter(|v| !matches!(v, Value::Nil))
            .map(|v| format!("'{}'", to_text(v)))
            .collect();
        Ok(s(parts.join(" ")))
    });
    add("cat", |_, a| {
        let parts: Vec<String> = a
            .iter()
            .filter(|v| !matches!(v, Value::Nil))
            .map(to_text)
            .collect();
        Ok(s(parts.join(" ")))
    });
    add("indent", |n, a| {
        arity(n, a, 2)?;
        Ok(s(indent_text(int(n, &a[0])?, string(n, &a[1])?)))
    });
    add("nindent", |n, a| {
        arity(n, a, 2)?;
        Ok(s(format!(
            "\n{}",
            indent_text(int(n, &a[0])?, string(n, &a[1])?)
        )))
    });
    add("toString", |n, a| {
        arity(n, a, 1)?;
        Ok(s(to_text(&a[0])))
    });
    add("default", |_, a| match a {
        [d] => Ok(d.clone()),
        [d, given] => Ok(if is_empty(given) {
            d.clone()
        } else {
            given.clone()
        }),
        _ => Err(TemplateError::Exec(
            "wrong number of args for default: want 1 or 2".to_string(),
        )),
    });
    add("empty", |n, a| {
        arity(n, a, 1)?;
        Ok(Value::Bool(is_empty(&a[0])))
    });
    add("splitList", |n, a| {
        arity(n, a, 2)?;
        let (sep, src) = (string(n, &a[0])?, string(n, &a[1])?);
        let parts: Vec<Value> = if sep.is_empty() {
            src.chars().map(|c| s(c.to_string())).collect()
        } else {
            src.split(sep).map(s).collect()
        };
        Ok(Value::List(parts.into()))
    });
    add("join", |n, a| {
        arity(n, a, 2)?;
        let sep = string(n, &a[0])?;
        match &a[1] {
            Value::List(items) => Ok(s(items.iter().map(to_text).collect::<Vec<_>>().join(sep))),
            other => Ok(s(to_text(other))),
        }
    });
    add("base", |n, a| {
        arity(n, a, 1)?;
        Ok(s(go_path_base(string(n, &a[0])?)))
    });
    m
}

/// `strings.Replace(src, old, new, -1)`; an empty `old` inserts `new` around
/// every character, as Go does.
fn go_replace_all(src: &str, old: &str, new: &str) -> String {
    if old.is_empty() {
        let mut out = String::from(new);
        for c in src.chars() {
            out.push(c);
            out.push_str(new);
        }
        out
    } else {
        src.replace(old, new)
    }
}

/// sprig's `substr`: byte offsets; a negative start means from 0, an end
/// past the string or negative means to the end.
fn go_substr(src: &str, start: i64, end: i64) -> Option<&str> {
    let len = src.len() as i64;
    if start < 0 {
        return src.get(..usize::try_from(end).ok()?);
    }
    if end < 0 || end > len {
        return src.get(usize::try_from(start).ok()?..);
    }
    if start > end {
        return None;
    }
    src.get(start as usize..end as usize)
}

/// `path.Base`.
fn go_path_base(p: &str) -> &str {
    if p.is_empty() {
        return ".";
    }
    let trimmed = p.trim_end_matches('/');
    if trimmed.is_empty() {
        return "/";
    }
    trimmed.rsplit('/').next().unwrap_or(trimmed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(name: &str, args: &[Value]) -> R {
        functions()[name](args)
    }

    #[test]
    fn regex_replace_all_expands_groups_like_go() {
        let out = call(
            "regexReplaceAll",
            &[s(r"(\d+)(.\d+)(\.\d+)?$"), s("6.18.45"), s("${1}")],
        )
        .unwrap();
        assert_eq!(out.to_string(), "6");
    }

    #[test]
    fn substr_follows_sprig_bounds() {
        assert_eq!(go_substr("abcdef0123", 0, 7), Some("abcdef0"));
        assert_eq!(go_substr("abc", 0, 7), Some("abc"));
        assert_eq!(go_substr("abc", -1, 2), Some("ab"));
        assert_eq!(go_substr("abc", 2, 1), None);
    }

    #[test]
    fn string_functions_reject_missing_values() {
        assert!(call("trimPrefix", &[s("v"), Value::Nil]).is_err());
        assert_eq!(
            call("trimPrefix", &[s("v"), s("v1.2")])
                .unwrap()
                .to_string(),
            "1.2"
        );
        assert_eq!(
            call("replace", &[s("_"), s("."), s("1_2_3")])
                .unwrap()
                .to_string(),
            "1.2.3"
        );
    }

    #[test]
    fn quote_escapes_like_go() {
        assert_eq!(go_quote("a\"b\n\u{1}"), "\"a\\\"b\\n\\x01\"");
    }
}
