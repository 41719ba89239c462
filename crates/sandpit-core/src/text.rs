//! Text that came from someone else, made safe to show. Titles, reasons,
//! ids and paths are written by callers, and a terminal acts on what it is
//! sent: a newline can forge an audit line, an escape sequence can clear the
//! screen or retitle the window, a direction override can reorder what the
//! reader sees. Whatever is shown to a person goes through [`shown`].

use std::borrow::Cow;

/// Unicode bidirectional formatting characters: shown raw they reorder the
/// text around them (the "Trojan Source" trick).
pub fn is_direction_control(c: char) -> bool {
    matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}' | '\u{061c}')
}

/// Whether `c` must never reach a terminal raw.
fn unsafe_char(c: char) -> bool {
    c.is_control() || is_direction_control(c)
}

/// `s` with every control character (newlines, tabs, escape, DEL, the C1
/// range) and direction control written as an escape (`\n`, `\u{1b}`), so
/// that one field is always shown as one inert run of text.
pub fn shown(s: &str) -> Cow<'_, str> {
    if !s.chars().any(unsafe_char) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if unsafe_char(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// A JSON document (as serde_json writes it, which escapes C0 controls
/// inside strings) with the controls it leaves raw (DEL, C1, direction
/// controls) written as `\uXXXX` escapes too. Outside strings serde_json
/// writes only spaces and newlines, which are kept: the result is the same
/// JSON value, safe on a terminal.
pub fn json_safe(json: String) -> String {
    if !json.chars().any(|c| c != '\n' && unsafe_char(c)) {
        return json;
    }
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        if c != '\n' && unsafe_char(c) {
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn fields_show_as_one_inert_line() {
        assert!(matches!(shown("plain title"), Cow::Borrowed(_)));
        let forged = "ok\n     7  2026-11-29T00:00:00Z  amir  approver  ApproveExperiment";
        assert!(!shown(forged).contains('\n'));
        assert_eq!(shown("a\x1b[2Jb\tc\r\u{9b}d"), "a\\u{1b}[2Jb\\tc\\r\\u{9b}d");
        assert_eq!(shown("\u{202e}txt.exe"), "\\u{202e}txt.exe");
        assert_eq!(shown("café ✓"), "café ✓", "printable text is untouched");
    }

    #[test]
    fn json_stays_the_same_value_without_raw_controls() {
        let v = serde_json::json!({"title": "a\u{7f}b\u{9b}c\u{202e}d\ne\u{1b}"});
        let text = json_safe(serde_json::to_string_pretty(&v).unwrap());
        assert!(!text.chars().any(|c| c != '\n' && unsafe_char(c)), "{text}");
        assert_eq!(serde_json::from_str::<serde_json::Value>(&text).unwrap(), v);
    }

    proptest! {
        #[test]
        fn nothing_unsafe_survives(s in any::<String>()) {
            let out = shown(&s);
            prop_assert!(!out.chars().any(unsafe_char));
            prop_assert!(!out.contains('\n'));
            let v = serde_json::json!({ "s": s });
            let text = json_safe(serde_json::to_string_pretty(&v).unwrap());
            prop_assert!(!text.chars().any(|c| c != '\n' && unsafe_char(c)));
            prop_assert_eq!(serde_json::from_str::<serde_json::Value>(&text).unwrap(), v);
        }
    }
}
