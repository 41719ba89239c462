//! Helpers shared by the property tests (of this crate and, with the
//! `testing` feature, of others): inputs a hostile or careless client or
//! operator might send, and edits of TOML files.

use proptest::prelude::*;

/// Strings that stress validation: valid-looking identifiers, arbitrary
/// unicode, control characters and NUL, whitespace only, and huge ones.
pub fn nasty_string() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-zA-Z0-9._-]{1,12}",
        2 => any::<String>(),
        1 => "[\\x00-\\x1f\\x7f ]{0,6}",
        1 => "[ \t\r\n]{0,4}",
        1 => prop::sample::select(vec![
            "OFFICIAL", "official_sensitive", " Official-Sensitive ", "SECRET", "TOP SECRET", "RESTRICTED",
            "low", "MEDIUM", " high", "0", "-1", "18446744073709551616", "../../etc/passwd", "a\u{0}b",
            "\u{202e}lanoitcurts", "e\u{301}", "\u{1F600}", "",
        ]).prop_map(String::from),
        1 => (prop::sample::select(vec!["a", "\u{e9}", "\u{1F600}", " "]), 100usize..20_000)
            .prop_map(|(s, n)| s.repeat(n)),
    ]
}

/// Small lists of [`nasty_string`], sometimes long ones.
pub fn nasty_list() -> impl Strategy<Value = Vec<String>> {
    prop_oneof![
        4 => prop::collection::vec(nasty_string(), 0..4),
        1 => prop::collection::vec("[a-z]{1,3}", 60..70),
    ]
}

/// Mostly values from `valid`, sometimes a [`nasty_string`]: so that a case
/// with several fields gets past the first one often enough.
pub fn mostly(valid: impl Strategy<Value = String> + 'static) -> impl Strategy<Value = String> {
    prop_oneof![3 => valid, 1 => nasty_string()]
}

/// A TOML basic string holding `s`.
pub fn quoted(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// TOML values, well and badly typed, that operators (or accidents) put in files.
pub fn toml_value() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "\"\"", "0", "-1", "1", "0.0", "-0.0", "1e309", "nan", "inf", "-inf", "0.5", "1024.5",
            "9223372036854775807", "18446744073709551616", "true", "false", "[]", "[\"\"]", "[\"a b\"]",
            "[1, 2]", "{}", "{ mode = \"open\" }", "1979-05-27T07:32:00Z", "\"0s\"", "\"1ns\"", "\"10m\"",
            "\"100y\"", "\"101y\"", "\"10000y\"", "\"300000000000y\"", "\"584942417355y\"", "\"5XB\"",
            "\"6MiB\"", "\"1\"", "\"18446744073709551615\"", "\"99999999999GiB\"", "\"open\"",
            "\"allowlist\"", "\"isolated\"", "\"none\"", "\"bridge\"", "\"SECRET\"", "\"TOP-SECRET\"",
            "\"official-sensitive\"", "\"RESTRICTED\"", "65", "64", "65536", "\"UK\"", "\"US\"",
            "\"census-sample\"", "\"169.254.169.254\"", "\"::1\"", "\"exa mple.com\"",
        ]).prop_map(String::from),
        1 => nasty_string().prop_map(|s| quoted(&s)),
        1 => any::<i64>().prop_map(|n| n.to_string()),
        1 => (any::<u64>(), prop::sample::select(vec!["s", "m", "h", "d", "w", "y", "ns", "ms", ""]))
            .prop_map(|(n, u)| format!("\"{n}{u}\"")),
    ]
}

/// One edit of a TOML file, as line or character surgery.
#[derive(Debug, Clone)]
pub enum Edit {
    /// Set every `key = ...` line of this key to the value (TOML).
    Set(&'static str, String),
    DeleteLine(usize),
    DuplicateLine(usize),
    /// Replace the value of the n-th `key = value` line.
    ReplaceValue(usize, String),
    InsertLine(usize, String),
    /// Cut the file short at that character.
    Truncate(usize),
    ReplaceChar(usize, char),
}

/// `content` with `edit` made; indices wrap around.
pub fn apply(content: &str, edit: &Edit) -> String {
    let mut lines: Vec<String> = content.lines().map(String::from).collect();
    let at = |i: usize, len: usize| if len == 0 { 0 } else { i % len };
    match edit {
        Edit::Set(key, v) => {
            for line in lines.iter_mut().filter(|l| l.split(" = ").next() == Some(*key)) {
                *line = format!("{key} = {v}");
            }
        }
        Edit::DeleteLine(i) if !lines.is_empty() => {
            lines.remove(at(*i, lines.len()));
        }
        Edit::DuplicateLine(i) if !lines.is_empty() => {
            let n = at(*i, lines.len());
            lines.insert(n, lines[n].clone());
        }
        Edit::ReplaceValue(i, v) => {
            let assignments: Vec<usize> = (0..lines.len()).filter(|n| lines[*n].contains(" = ")).collect();
            if !assignments.is_empty() {
                let n = assignments[at(*i, assignments.len())];
                let key = lines[n].split(" = ").next().unwrap_or_default().to_string();
                lines[n] = format!("{key} = {v}");
            }
        }
        Edit::InsertLine(i, l) => {
            let n = at(*i, lines.len() + 1);
            lines.insert(n, l.clone());
        }
        Edit::Truncate(i) => {
            let chars: Vec<char> = content.chars().collect();
            return chars[..at(*i, chars.len() + 1)].iter().collect();
        }
        Edit::ReplaceChar(i, c) => {
            let mut chars: Vec<char> = content.chars().collect();
            if !chars.is_empty() {
                let n = at(*i, chars.len());
                chars[n] = *c;
            }
            return chars.into_iter().collect();
        }
        _ => {}
    }
    lines.join("\n") + "\n"
}

/// Edits of a file: `set` (key-aware values) and `line` (lines to insert)
/// from the caller, the rest generic.
pub fn edit(
    set: impl Strategy<Value = Edit> + 'static,
    line: impl Strategy<Value = String> + 'static,
) -> impl Strategy<Value = Edit> {
    let i = any::<usize>();
    prop_oneof![
        6 => set,
        1 => i.prop_map(Edit::DeleteLine),
        1 => i.prop_map(Edit::DuplicateLine),
        4 => (i, toml_value()).prop_map(|(i, v)| Edit::ReplaceValue(i, v)),
        2 => (i, line).prop_map(|(i, l)| Edit::InsertLine(i, l)),
        1 => i.prop_map(Edit::Truncate),
        1 => (i, prop_oneof![any::<char>(), prop::sample::select(vec!['"', '=', '[', ']', '\n', '#', '\0'])])
            .prop_map(|(i, c)| Edit::ReplaceChar(i, c)),
    ]
}
