//! HTML for the dashboard: escaping, the page frame, and how times,
//! durations and audit actions read. Every value that came from a caller
//! (titles, purposes, reasons, names) goes through [`esc`]; nothing else
//! builds markup from data.

use std::fmt::Write;
use std::time::{Duration, SystemTime};

use sandpit_core::auth::{Caller, Role};

/// Text made safe for an element's content or a quoted attribute value.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A query-string value, percent-encoded (RFC 3986 unreserved kept).
pub fn url(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            b => {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

/// `2026-11-30 09:12:03 UTC`.
pub fn time(t: SystemTime) -> String {
    let s = humantime::format_rfc3339_seconds(t).to_string();
    format!("{} UTC", s.trim_end_matches('Z').replacen('T', " ", 1))
}

/// A `<time>` element: readable text, machine-readable attribute.
pub fn time_el(t: SystemTime) -> String {
    format!("<time datetime=\"{}\">{}</time>", humantime::format_rfc3339_seconds(t), time(t))
}

/// `1h 4m 10s`: whole seconds.
pub fn left(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

/// An audit action as a person reads it: `sandpit.v1.SandboxService/CreateSandbox`
/// is "Create sandbox"; the daemon's own actions (`oom-kill`) are "Oom kill".
pub fn action(a: &str) -> String {
    let name = a.rsplit('/').next().unwrap_or(a);
    let mut words = String::new();
    for (i, c) in name.chars().enumerate() {
        if c == '-' || c == '_' {
            words.push(' ');
        } else if c.is_uppercase() && i > 0 {
            words.push(' ');
            words.extend(c.to_lowercase());
        } else if i == 0 {
            words.extend(c.to_uppercase());
        } else {
            words.push(c);
        }
    }
    words
}

/// The pages, in the order the navigation lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Active,
    Approvals,
    Register,
    Audit,
    Verification,
    None,
}

impl Nav {
    const ALL: [(Nav, &'static str, &'static str); 5] = [
        (Nav::Active, "/active", "Active experiments"),
        (Nav::Approvals, "/approvals", "Pending approvals"),
        (Nav::Register, "/register", "Register"),
        (Nav::Audit, "/audit", "Audit log"),
        (Nav::Verification, "/verification", "Verification"),
    ];

    /// The roles that may see the page: the same as the gRPC call behind it.
    pub fn roles(self) -> &'static [Role] {
        use crate::api::auth::Method;
        match self {
            Nav::Active => Method::ListActiveExperiments.roles(),
            Nav::Approvals | Nav::Register | Nav::None => Method::ListExperiments.roles(),
            Nav::Audit => Method::QueryAuditLog.roles(),
            Nav::Verification => Method::VerifyAuditLog.roles(),
        }
    }

    pub fn allows(self, caller: &Caller) -> bool {
        self.roles().iter().any(|r| caller.has(*r))
    }
}

const STYLE: &str = include_str!("style.css");

/// The stylesheet, served at `/style.css`.
pub fn stylesheet() -> &'static str {
    STYLE
}

/// A whole page: `title` (plain text), the navigation for `caller` with
/// `current` marked, and `body` (markup).
pub fn page(title: &str, caller: Option<&Caller>, current: Nav, csrf: &str, body: &str) -> String {
    let mut nav = String::new();
    if let Some(c) = caller {
        nav.push_str("<nav aria-label=\"Dashboard\"><ul>");
        for (n, href, label) in Nav::ALL {
            if !n.allows(c) {
                continue;
            }
            let here = if n == current { " aria-current=\"page\"" } else { "" };
            let _ = write!(nav, "<li><a href=\"{href}\"{here}>{label}</a></li>");
        }
        let roles: Vec<&str> = c.roles.iter().map(|r| r.as_str()).collect();
        let _ = write!(
            nav,
            "</ul><form method=\"post\" action=\"/sign-out\" class=\"who\"><span>{} ({}, {})</span>\
             <input type=\"hidden\" name=\"csrf\" value=\"{}\"><button type=\"submit\">Sign out</button></form></nav>",
            esc(&c.name),
            esc(&c.team),
            esc(&roles.join(", ")),
            esc(csrf),
        );
    }
    format!(
        "<!doctype html>\n<html lang=\"en-GB\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{t} · Sandpit</title><link rel=\"stylesheet\" href=\"/style.css\"></head>\
         <body><a class=\"skip\" href=\"#main\">Skip to content</a>\
         <header><p class=\"brand\">Sandpit <span>AI register and audit</span></p>{nav}</header>\
         <main id=\"main\"><h1>{t}</h1>{body}</main>\
         <footer><p>Read-only. Decisions are made with the <code>sandpit</code> CLI or the SDK.</p></footer>\
         </body></html>\n",
        t = esc(title),
    )
}

/// A table: `caption` (plain text), column headings, rows of cells (markup).
pub fn table(caption: &str, headings: &[&str], rows: &[Vec<String>], empty: &str) -> String {
    if rows.is_empty() {
        return format!("<p class=\"empty\">{}</p>", esc(empty));
    }
    let mut t = format!("<div class=\"scroll\"><table><caption>{}</caption><thead><tr>", esc(caption));
    for h in headings {
        let _ = write!(t, "<th scope=\"col\">{}</th>", esc(h));
    }
    t.push_str("</tr></thead><tbody>");
    for row in rows {
        t.push_str("<tr>");
        for cell in row {
            let _ = write!(t, "<td>{cell}</td>");
        }
        t.push_str("</tr>");
    }
    t.push_str("</tbody></table></div>");
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_covers_markup_and_attributes() {
        assert_eq!(
            esc("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
        assert_eq!(url("a b/c&d=é"), "a%20b%2Fc%26d%3D%C3%A9");
    }

    #[test]
    fn actions_read_as_words() {
        assert_eq!(action("sandpit.v1.SandboxService/CreateSandbox"), "Create sandbox");
        assert_eq!(action("sandpit.v1.AuditService/QueryAuditLog"), "Query audit log");
        assert_eq!(action("oom-kill"), "Oom kill");
        assert_eq!(action("dashboard-sign-in"), "Dashboard sign in");
    }

    #[test]
    fn times_and_durations() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_000_000);
        assert_eq!(time(t), "2026-11-30 00:53:20 UTC");
        assert_eq!(left(Duration::from_millis(3_725_900)), "1h 2m 5s");
    }
}
