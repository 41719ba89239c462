//! Who is calling. Callers prove who they are with a bearer token (config
//! keeps only its SHA-256) or a client certificate (its subject is mapped to
//! an identity, a [`Caller`]); what each role may do is declared per RPC in
//! [`crate::api::auth`].
//!
//! # Certificate subjects
//!
//! A client certificate maps to the identity whose `cert_subject` is its
//! exact subject. Both sides are parsed into a [`DistinguishedName`]: a
//! sequence of RDNs, each a set of attributes (type by OID, value as text).
//! Nothing is compared as display text, so a CN whose value reads
//! `dave, O=ONS` is one attribute and never the two of `CN=dave, O=ONS`.
//!
//! `cert_subject` is an RFC 4514 string: `,` between RDNs, `+` between the
//! attributes of a multi-valued RDN, types by name (case-insensitive, see
//! [`ATTRIBUTE_TYPES`]) or dotted OID. In values, `\` escapes `,` `+` `"` `\`
//! `<` `>` `;` `#` `=` and space, and `\XX` is a byte in hex (bytes that
//! together are UTF-8). Spaces around `,` `+` and `=` are ignored (so
//! `CN=alice, O=ONS` is fine); spaces inside a value are kept, and a leading
//! or trailing space in a value must be escaped (`\ `). Refused at config
//! load: quoted values, `#hex` (BER) values, empty values, unescaped `"` `;`
//! `<` `>`, unknown type names, an attribute twice in one RDN.
//!
//! Certificate values are read from their DER string types: UTF8String,
//! PrintableString, IA5String, NumericString, VisibleString (each only with
//! the characters its type allows), BMPString (UCS-2) and UniversalString
//! (UCS-4). A value that is not valid text in its type, or of any other type
//! (TeletexString, whose character set is ambiguous; non-strings), means the
//! certificate maps to no identity.
//!
//! Equality: the same number of RDNs, and RDN by RDN the same attributes.
//! Inside one RDN order does not matter (an RDN is a SET in X.501); every
//! other difference does: an attribute more or less (a repeated `O=` or
//! `OU=` too), RDNs grouped differently, and values compare exactly (case,
//! spaces and Unicode form as encoded).
//!
//! Order. A `cert_subject` matches a certificate whose RDNs are encoded in
//! the order written (how `openssl x509 -noout -subject` and x509-parser
//! print a subject: `CN=alice, O=ONS` for a certificate encoded CN then O)
//! or in exactly the reverse order (how RFC 4514 writes a name, as
//! `openssl -nameopt RFC2253`, LDAP, Go and Java print it: `CN=alice, O=ONS`
//! for a certificate encoded O then CN). Operators copy subjects from both
//! kinds of tool, and the two are mirror images, never a reshuffle. This is
//! safe: reversing changes no attribute, value or RDN grouping, so only a
//! certificate carrying exactly the configured RDNs can match; and config
//! refuses two identities whose subjects are equal or each other's reverse,
//! so a certificate matches at most one identity. Any other order does not
//! match. What it gives up: a name and its mirror image are different X.500
//! names and one `cert_subject` accepts both; a CA that could issue both
//! mirror images of the same attributes to different holders must not be
//! trusted as `tls.client_ca` (CAs encode subjects in one fixed order).

use std::collections::HashMap;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::config::IdentityConfig;
pub use sandpit_core::auth::{Caller, Role};

/// Credentials to callers.
#[derive(Debug, Clone, Default)]
pub struct Identities {
    by_hash: HashMap<[u8; 32], Caller>,
    by_subject: HashMap<DistinguishedName, Caller>,
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

impl Identities {
    pub fn from_config(ids: &[IdentityConfig]) -> Identities {
        let mut out = Identities::default();
        for id in ids {
            let caller = Caller {
                name: id.name.clone(),
                team: id.team.clone(),
                roles: id.roles.clone(),
                functions: id.functions.clone(),
                role: None,
                source: String::new(),
            };
            let mut h = [0u8; 32];
            // Config validation already checked the hex.
            if let Some(hash) = &id.token_sha256 {
                if hex::decode_to_slice(hash.to_ascii_lowercase(), &mut h).is_ok() {
                    out.by_hash.insert(h, caller.clone());
                }
            }
            if let Some(subject) = &id.cert_subject {
                // Config validation already parsed it; an unparsed one maps nothing.
                match subject.parse::<DistinguishedName>() {
                    Ok(dn) => {
                        out.by_subject.insert(dn, caller);
                    }
                    Err(e) => tracing::error!(identity = %id.name, "cert_subject ignored: {e}"),
                }
            }
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty() && self.by_subject.is_empty()
    }

    pub fn insert(&mut self, token: &str, caller: Caller) {
        self.by_hash.insert(Sha256::digest(token.as_bytes()).into(), caller);
    }

    /// The caller a bearer token belongs to.
    pub fn by_token(&self, token: &str) -> Option<&Caller> {
        let h: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.by_hash.get(&h)
    }

    /// The caller a verified client certificate (DER) belongs to: the
    /// identity whose `cert_subject` is its subject, in the order encoded or
    /// reversed (see the module docs); else why not.
    pub fn by_certificate(&self, der: &[u8]) -> Result<&Caller, &'static str> {
        let subject = DistinguishedName::from_certificate(der)?;
        let written = self.by_subject.get(&subject);
        let reversed = self.by_subject.get(&subject.reversed());
        match (written, reversed) {
            // Config refuses subjects that are each other's reverse; a palindrome finds one entry twice.
            (Some(a), Some(b)) if !std::ptr::eq(a, b) => Err("client certificate subject matches two identities"),
            (Some(c), _) | (None, Some(c)) => Ok(c),
            (None, None) => {
                tracing::info!(%subject, "client certificate subject matches no identity's cert_subject");
                Err("client certificate subject matches no identity's cert_subject")
            }
        }
    }
}

/// Attribute type names `cert_subject` accepts (case-insensitive) and
/// their OIDs; the first name is the one printed.
pub const ATTRIBUTE_TYPES: &[(&[&str], &[u64])] = &[
    (&["CN", "commonName"], &[2, 5, 4, 3]),
    (&["SN", "surname"], &[2, 5, 4, 4]),
    (&["serialNumber"], &[2, 5, 4, 5]),
    (&["C", "countryName"], &[2, 5, 4, 6]),
    (&["L", "localityName"], &[2, 5, 4, 7]),
    (&["ST", "stateOrProvinceName"], &[2, 5, 4, 8]),
    (&["STREET", "streetAddress"], &[2, 5, 4, 9]),
    (&["O", "organizationName"], &[2, 5, 4, 10]),
    (&["OU", "organizationalUnitName"], &[2, 5, 4, 11]),
    (&["title"], &[2, 5, 4, 12]),
    (&["businessCategory"], &[2, 5, 4, 15]),
    (&["postalCode"], &[2, 5, 4, 17]),
    (&["name"], &[2, 5, 4, 41]),
    (&["GN", "givenName"], &[2, 5, 4, 42]),
    (&["initials"], &[2, 5, 4, 43]),
    (&["generationQualifier"], &[2, 5, 4, 44]),
    (&["dnQualifier"], &[2, 5, 4, 46]),
    (&["pseudonym"], &[2, 5, 4, 65]),
    (&["organizationIdentifier"], &[2, 5, 4, 97]),
    (&["UID", "userId"], &[0, 9, 2342, 19200300, 100, 1, 1]),
    (&["DC", "domainComponent"], &[0, 9, 2342, 19200300, 100, 1, 25]),
    (&["emailAddress", "E", "Email"], &[1, 2, 840, 113549, 1, 9, 1]),
];

/// One attribute: its type (the DER content octets of its OID) and value.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Attribute {
    oid: Vec<u8>,
    value: String,
}

/// A distinguished name: its RDNs in order, each a set of attributes (kept
/// sorted, so that equality is set equality inside an RDN and sequence
/// equality across RDNs). Built by parsing a `cert_subject` ([`str::parse`])
/// or from a certificate ([`DistinguishedName::from_certificate`]); printed
/// as an RFC 4514 string in its own order.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DistinguishedName {
    rdns: Vec<Vec<Attribute>>,
}

impl DistinguishedName {
    fn new(mut rdns: Vec<Vec<Attribute>>) -> DistinguishedName {
        for rdn in &mut rdns {
            rdn.sort();
        }
        DistinguishedName { rdns }
    }

    /// The same RDNs in reverse order.
    pub fn reversed(&self) -> DistinguishedName {
        DistinguishedName { rdns: self.rdns.iter().rev().cloned().collect() }
    }

    /// Whether `self` and `other` name the same subject in one of the
    /// accepted orders: as written, or reversed.
    pub fn matches(&self, other: &DistinguishedName) -> bool {
        self == other || (self.rdns.len() == other.rdns.len() && self.rdns.iter().rev().eq(other.rdns.iter()))
    }

    /// The subject of a DER certificate, in its encoded order; refused when
    /// the certificate cannot be read or a value is not valid text.
    pub fn from_certificate(der: &[u8]) -> Result<DistinguishedName, &'static str> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|_| "client certificate is not a readable X.509 certificate")?;
        DistinguishedName::from_x509_name(cert.subject())
    }

    fn from_x509_name(name: &x509_parser::x509::X509Name) -> Result<DistinguishedName, &'static str> {
        let mut rdns = Vec::new();
        for rdn in name.iter() {
            let mut attrs = Vec::new();
            for atv in rdn.iter() {
                let oid = atv.attr_type().as_bytes();
                if decode_oid(oid).is_none() {
                    return Err("client certificate subject has a malformed attribute type");
                }
                attrs.push(Attribute { oid: oid.to_vec(), value: decode_text(atv.attr_value())? });
            }
            rdns.push(attrs);
        }
        Ok(DistinguishedName::new(rdns))
    }
}

/// A DER attribute value as text, strictly by its string type.
fn decode_text(any: &x509_parser::der_parser::asn1_rs::Any) -> Result<String, &'static str> {
    use x509_parser::der_parser::asn1_rs::{Class, Tag};
    const INVALID: &str = "client certificate subject has a value that is not valid text in its string type";
    let ascii = |ok: fn(u8) -> bool| {
        any.data.iter().all(|&b| ok(b)).then(|| any.data.iter().map(|&b| char::from(b)).collect()).ok_or(INVALID)
    };
    if any.class() != Class::Universal || any.header.is_constructed() {
        return Err("client certificate subject has a value that is not a string");
    }
    match any.tag() {
        Tag::Utf8String => std::str::from_utf8(any.data).map(str::to_string).map_err(|_| INVALID),
        Tag::PrintableString => ascii(|b| b.is_ascii_alphanumeric() || b" '()+,-./:=?".contains(&b)),
        Tag::Ia5String => ascii(|b| b.is_ascii()),
        Tag::NumericString => ascii(|b| b.is_ascii_digit() || b == b' '),
        Tag::VisibleString => ascii(|b| (0x20..0x7f).contains(&b)),
        // UCS-2: no surrogates (from_u32 refuses them).
        Tag::BmpString if any.data.len().is_multiple_of(2) => any
            .data
            .chunks_exact(2)
            .map(|c| char::from_u32(u32::from(u16::from_be_bytes([c[0], c[1]]))).ok_or(INVALID))
            .collect(),
        Tag::UniversalString if any.data.len().is_multiple_of(4) => any
            .data
            .chunks_exact(4)
            .map(|c| char::from_u32(u32::from_be_bytes([c[0], c[1], c[2], c[3]])).ok_or(INVALID))
            .collect(),
        Tag::BmpString | Tag::UniversalString => Err(INVALID),
        _ => Err("client certificate subject has a value of a type other than UTF8String, PrintableString, \
                  IA5String, NumericString, VisibleString, BMPString or UniversalString"),
    }
}

/// The DER content octets of the OID `arcs`, if it is one.
fn encode_oid(arcs: &[u64]) -> Option<Vec<u8>> {
    let (&a, &b) = (arcs.first()?, arcs.get(1)?);
    if a > 2 || (a < 2 && b >= 40) {
        return None;
    }
    let mut out = Vec::new();
    for arc in std::iter::once((a * 40).checked_add(b)?).chain(arcs[2..].iter().copied()) {
        let mut groups = vec![(arc & 0x7f) as u8];
        let mut rest = arc >> 7;
        while rest > 0 {
            groups.push((rest & 0x7f) as u8 | 0x80);
            rest >>= 7;
        }
        out.extend(groups.iter().rev());
    }
    Some(out)
}

/// The arcs of DER OID content octets, if minimally encoded and each fits a u64.
fn decode_oid(bytes: &[u8]) -> Option<Vec<u64>> {
    if bytes.last()? & 0x80 != 0 {
        return None;
    }
    let mut subids = Vec::new();
    let (mut value, mut at_start) = (0u64, true);
    for &b in bytes {
        if at_start && b == 0x80 {
            return None;
        }
        value = value.checked_mul(128)? | u64::from(b & 0x7f);
        at_start = b & 0x80 == 0;
        if at_start {
            subids.push(value);
            value = 0;
        }
    }
    let first = subids[0];
    let (a, b) = match first {
        0..40 => (0, first),
        40..80 => (1, first - 40),
        _ => (2, first - 80),
    };
    Some([a, b].into_iter().chain(subids[1..].iter().copied()).collect())
}

impl std::fmt::Display for DistinguishedName {
    /// RFC 4514 string syntax, in this name's own order, `, ` and ` + `
    /// between parts; control characters escaped as hex (so a log line stays one line).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, rdn) in self.rdns.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            for (j, attr) in rdn.iter().enumerate() {
                if j > 0 {
                    f.write_str(" + ")?;
                }
                let known = ATTRIBUTE_TYPES.iter().find(|(_, arcs)| encode_oid(arcs).as_ref() == Some(&attr.oid));
                match (known, decode_oid(&attr.oid)) {
                    (Some((names, _)), _) => f.write_str(names[0])?,
                    (None, Some(arcs)) => {
                        let arcs: Vec<String> = arcs.iter().map(u64::to_string).collect();
                        f.write_str(&arcs.join("."))?
                    }
                    (None, None) => write!(f, "?{}", hex::encode(&attr.oid))?,
                }
                f.write_str("=")?;
                let last = attr.value.chars().count().saturating_sub(1);
                for (k, c) in attr.value.chars().enumerate() {
                    match c {
                        '"' | '+' | ',' | ';' | '<' | '>' | '\\' => write!(f, "\\{c}")?,
                        '#' if k == 0 => f.write_str("\\#")?,
                        ' ' if k == 0 || k == last => f.write_str("\\ ")?,
                        c if c.is_control() => {
                            for b in c.encode_utf8(&mut [0; 4]).bytes() {
                                write!(f, "\\{b:02X}")?;
                            }
                        }
                        c => write!(f, "{c}")?,
                    }
                }
            }
        }
        Ok(())
    }
}

impl std::str::FromStr for DistinguishedName {
    type Err = String;

    /// Parses a `cert_subject` (see the module docs for the syntax).
    fn from_str(s: &str) -> Result<DistinguishedName, String> {
        if s.trim_matches(' ').is_empty() {
            return Err("a subject needs at least one attribute, such as CN=alice, O=ONS".into());
        }
        let mut p = DnParser { s, pos: 0 };
        let mut rdns = Vec::new();
        let mut rdn = Vec::new();
        loop {
            rdn.push(p.attribute()?);
            match p.bump() {
                Some('+') => {}
                Some(',') => rdns.push(std::mem::take(&mut rdn)),
                _ => break,
            }
        }
        rdns.push(rdn);
        let dn = DistinguishedName::new(rdns);
        for rdn in &dn.rdns {
            if let Some(w) = rdn.windows(2).find(|w| w[0] == w[1]) {
                let once = DistinguishedName { rdns: vec![vec![w[0].clone()]] };
                return Err(format!("'{once}' is given twice in one RDN"));
            }
        }
        Ok(dn)
    }
}

/// An RFC 4514 string being parsed: `pos` is a byte offset into `s`.
struct DnParser<'a> {
    s: &'a str,
    pos: usize,
}

impl DnParser<'_> {
    fn peek(&self) -> Option<char> {
        self.s[self.pos..].chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn skip_spaces(&mut self) {
        while self.peek() == Some(' ') {
            self.pos += 1;
        }
    }

    /// Where byte offset `pos` is, for messages: a character count from 1.
    fn at(&self, pos: usize) -> String {
        format!("at character {}", self.s[..pos].chars().count() + 1)
    }

    /// `type = value`, with optional spaces around either; stops before
    /// the `,` or `+` that ends it.
    fn attribute(&mut self) -> Result<Attribute, String> {
        self.skip_spaces();
        let start = self.pos;
        while self.peek().is_some_and(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.') {
            self.pos += 1;
        }
        let name = &self.s[start..self.pos];
        if name.is_empty() {
            return Err(match self.peek() {
                None => "ends where an attribute (such as CN=alice) should be".into(),
                Some(c) => format!("expected an attribute type such as CN {}, found '{c}'", self.at(self.pos)),
            });
        }
        self.skip_spaces();
        if self.bump() != Some('=') {
            return Err(format!("expected '=' after '{name}'"));
        }
        let oid = attribute_type(name)?;
        self.skip_spaces();
        let value = self.value(name)?;
        Ok(Attribute { oid, value })
    }

    /// A value up to an unescaped `,` `+` or the end, unescaped; trailing
    /// unescaped spaces dropped.
    fn value(&mut self, name: &str) -> Result<String, String> {
        let mut bytes = Vec::new();
        let mut trailing_spaces = 0;
        let first = self.pos;
        while let Some(c) = self.peek() {
            if c == ',' || c == '+' {
                break;
            }
            let here = self.pos;
            self.pos += c.len_utf8();
            match c {
                '\\' => {
                    trailing_spaces = 0;
                    match self.bump() {
                        Some(e @ ('"' | '+' | ',' | ';' | '<' | '>' | '\\' | ' ' | '#' | '=')) => bytes.push(e as u8),
                        Some(h) if h.is_ascii_hexdigit() => {
                            let pair = self.bump().filter(char::is_ascii_hexdigit).map(|l| format!("{h}{l}"));
                            let byte = pair.and_then(|p| u8::from_str_radix(&p, 16).ok());
                            bytes.push(byte.ok_or_else(|| format!("'\\{h}' {} needs two hex digits", self.at(here)))?);
                        }
                        Some(e) => {
                            return Err(format!(
                                "'\\{e}' {} is not an escape (escape , + \" \\ < > ; # = and space, \
                                 or give a byte as two hex digits)",
                                self.at(here)
                            ))
                        }
                        None => return Err("ends with a lone '\\'".into()),
                    }
                }
                '#' if here == first => {
                    return Err(format!(
                        "the value of {name} is in #hex (BER) form, which is not supported; write it as text \
                         (escape a leading # as \\#)"
                    ))
                }
                '"' => {
                    return Err(format!("'\"' {}: quoted values are not supported; escape '\"' as \\\"", self.at(here)))
                }
                ';' => {
                    return Err(format!(
                        "';' {}: separate RDNs with ',' (escape a ';' in a value as \\;)",
                        self.at(here)
                    ))
                }
                '<' | '>' | '\0' => return Err(format!("'{}' {} must be escaped", c.escape_default(), self.at(here))),
                ' ' => {
                    trailing_spaces += 1;
                    bytes.push(b' ');
                }
                c => {
                    trailing_spaces = 0;
                    bytes.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                }
            }
        }
        bytes.truncate(bytes.len() - trailing_spaces);
        if bytes.is_empty() {
            return Err(format!("{name} has an empty value"));
        }
        String::from_utf8(bytes).map_err(|_| format!("the value of {name} has escaped bytes that are not UTF-8"))
    }
}

/// The OID of an attribute type given by name or as a dotted OID.
fn attribute_type(name: &str) -> Result<Vec<u8>, String> {
    if name.starts_with(|c: char| c.is_ascii_digit()) {
        let arcs: Option<Vec<u64>> = name
            .split('.')
            .map(|a| {
                let canonical =
                    !a.is_empty() && (a == "0" || !a.starts_with('0')) && a.bytes().all(|b| b.is_ascii_digit());
                canonical.then(|| a.parse().ok()).flatten()
            })
            .collect();
        return arcs.and_then(|a| encode_oid(&a)).ok_or_else(|| {
            format!("'{name}' is not a dotted OID (such as 2.5.4.3: no leading zeros, first arc 0, 1 or 2)")
        });
    }
    ATTRIBUTE_TYPES
        .iter()
        .find(|(names, _)| {
            name.starts_with(|c: char| c.is_ascii_alphabetic()) && names.iter().any(|n| n.eq_ignore_ascii_case(name))
        })
        .and_then(|(_, arcs)| encode_oid(arcs))
        .ok_or_else(|| {
            let known: Vec<&str> = ATTRIBUTE_TYPES.iter().map(|(names, _)| names[0]).collect();
            format!("unknown attribute type '{name}'; use one of {} or a dotted OID such as 2.5.4.3", known.join(", "))
        })
}

/// Reads the local token from `data_dir`, creating it (mode 0600) if absent.
/// Used only when no identities are configured, so that a user on the same
/// machine can drive the daemon with no set-up.
pub fn local_token(data_dir: &Path) -> std::io::Result<String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;

    let path = data_dir.join(crate::config::LOCAL_TOKEN_FILE);
    if let Ok(t) = std::fs::read_to_string(&path) {
        let t = t.trim().to_string();
        if !t.is_empty() {
            return Ok(t);
        }
    }
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| std::io::Error::other(e.to_string()))?;
    let token = hex::encode(bytes);
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&path)?;
    f.write_all(token.as_bytes())?;
    f.write_all(b"\n")?;
    Ok(token)
}

/// The identity the local token grants: every role, in team `local`, signing
/// for no particular function (its own team's experiments it cannot sign off).
pub fn local_caller() -> Caller {
    Caller {
        name: "local".into(),
        team: "local".into(),
        roles: vec![Role::Requester, Role::Operator, Role::Approver, Role::Auditor],
        functions: Vec::new(),
        role: None,
        source: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_subjects_map_to_identities() {
        let cfg = IdentityConfig {
            name: "alice".into(),
            team: "a".into(),
            roles: vec![Role::Requester],
            token_sha256: Some(sha256_hex(b"secret")),
            cert_subject: Some("CN=alice, O=ONS".into()),
            functions: vec![],
        };
        let ids = Identities::from_config(&[cfg]);
        assert_eq!(ids.by_token("secret").unwrap().name, "alice");
        assert!(ids.by_token("Secret").is_none());
        assert!(ids.by_token("").is_none());
        assert_eq!(ids.by_certificate(&cert(&[(CN_, "alice"), (O_, "ONS")])).unwrap().name, "alice");
        assert!(ids.by_certificate(&cert(&[(CN_, "alice")])).is_err());
        assert_eq!(
            ids.by_certificate(b"not a certificate"),
            Err("client certificate is not a readable X.509 certificate")
        );
    }

    // ---- distinguished names

    use proptest::prelude::*;
    use rcgen::{CertificateParams, DnType, DnValue, KeyPair};

    const CN: &[u64] = &[2, 5, 4, 3];
    const O: &[u64] = &[2, 5, 4, 10];
    const OU: &[u64] = &[2, 5, 4, 11];
    const UID: &[u64] = &[0, 9, 2342, 19200300, 100, 1, 1];
    const CN_: DnType = DnType::CommonName;
    const O_: DnType = DnType::OrganizationName;
    const OU_: DnType = DnType::OrganizationalUnitName;

    fn dn(s: &str) -> DistinguishedName {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    /// A name from RDNs of (OID arcs, value).
    fn rdns(rdns: &[&[(&[u64], &str)]]) -> DistinguishedName {
        let attr = |(arcs, v): &(&[u64], &str)| Attribute { oid: encode_oid(arcs).unwrap(), value: v.to_string() };
        DistinguishedName::new(rdns.iter().map(|r| r.iter().map(attr).collect()).collect())
    }

    fn key() -> &'static KeyPair {
        static KEY: std::sync::OnceLock<KeyPair> = std::sync::OnceLock::new();
        KEY.get_or_init(|| KeyPair::generate().unwrap())
    }

    /// A self-signed DER certificate whose subject holds `subject`, one
    /// attribute per RDN, encoded in this order.
    fn cert_with(subject: &[(DnType, DnValue)]) -> Vec<u8> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        for (ty, value) in subject {
            params.distinguished_name.push(ty.clone(), value.clone());
        }
        params.self_signed(key()).unwrap().der().to_vec()
    }

    /// As [`cert_with`], every value a UTF8String.
    fn cert(subject: &[(DnType, &str)]) -> Vec<u8> {
        cert_with(&subject.iter().map(|(t, v)| (t.clone(), DnValue::Utf8String(v.to_string()))).collect::<Vec<_>>())
    }

    /// `der` with `from` replaced by `to` (same length) in the subject and,
    /// self-signed, the issuer. The signature no longer verifies, which
    /// reading the subject ignores.
    fn patched(der: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
        let at: Vec<usize> = (0..=der.len() - from.len()).filter(|&i| &der[i..i + from.len()] == from).collect();
        assert_eq!(at.len(), 2, "{from:?} in the subject and the issuer");
        let mut out = der.to_vec();
        for i in at {
            out[i..i + to.len()].copy_from_slice(to);
        }
        out
    }

    /// Identities of these names, by these `cert_subject`s.
    fn identities(subjects: &[(&str, &str)]) -> Identities {
        let ids: Vec<IdentityConfig> = subjects
            .iter()
            .map(|(name, subject)| IdentityConfig {
                name: name.to_string(),
                team: "t".into(),
                roles: vec![Role::Requester],
                token_sha256: None,
                cert_subject: Some(subject.to_string()),
                functions: vec![],
            })
            .collect();
        Identities::from_config(&ids)
    }

    fn who(ids: &Identities, der: &[u8]) -> Result<String, &'static str> {
        ids.by_certificate(der).map(|c| c.name.clone())
    }

    fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let n = content.len();
        let mut out = vec![tag];
        match n {
            0..128 => out.push(n as u8),
            128..256 => out.extend([0x81, n as u8]),
            _ => out.extend([0x82, (n >> 8) as u8, n as u8]),
        }
        out.extend_from_slice(content);
        out
    }

    /// An attribute to encode: OID arcs, value tag, value octets.
    type RawAttribute<'a> = (&'a [u64], u8, &'a [u8]);

    /// The subject read from a DER Name built here, from its RDNs (rcgen
    /// writes one attribute per RDN only).
    fn from_name(rdns: &[&[RawAttribute]]) -> Result<DistinguishedName, &'static str> {
        use x509_parser::prelude::FromDer;
        let rdns: Vec<u8> = rdns
            .iter()
            .flat_map(|rdn| {
                let atvs: Vec<u8> = rdn
                    .iter()
                    .flat_map(|(arcs, tag, v)| {
                        tlv(0x30, &[tlv(0x06, &encode_oid(arcs).unwrap()), tlv(*tag, v)].concat())
                    })
                    .collect();
                tlv(0x31, &atvs)
            })
            .collect();
        let der = tlv(0x30, &rdns);
        let (rest, name) = x509_parser::x509::X509Name::from_der(&der).unwrap();
        assert!(rest.is_empty());
        DistinguishedName::from_x509_name(&name)
    }

    const UTF8: u8 = 0x0c;
    const PRINTABLE: u8 = 0x13;

    #[test]
    fn subjects_parse_into_typed_attributes() {
        let want = rdns(&[&[(CN, "alice")], &[(O, "ONS")]]);
        for s in [
            "CN=alice, O=ONS",
            "CN=alice,O=ONS",
            "  CN = alice ,  O =ONS  ",
            "cn=alice, o=ONS",
            "commonName=alice, organizationName=ONS",
            "2.5.4.3=alice, 2.5.4.10=ONS",
        ] {
            assert_eq!(dn(s), want, "{s}");
        }
        // Interior spaces and '=' are part of a value; a '#' past the first character too.
        assert_eq!(dn("CN=Alice  Smith"), rdns(&[&[(CN, "Alice  Smith")]]));
        assert_eq!(dn("CN=a=b, O=x#1"), rdns(&[&[(CN, "a=b")], &[(O, "x#1")]]));
        // Values are case-sensitive; order is part of the parsed name.
        assert_ne!(dn("CN=alice"), dn("CN=Alice"));
        assert_ne!(dn("CN=alice, O=ONS"), dn("O=ONS, CN=alice"));
        assert_eq!(dn("CN=alice, O=ONS").to_string(), "CN=alice, O=ONS");
        assert_eq!(
            dn("uid=a1, 1.3.6.1.4.1.99999.1=x, E=a@b").to_string(),
            "UID=a1, 1.3.6.1.4.1.99999.1=x, emailAddress=a@b"
        );
    }

    #[test]
    fn escapes_in_values() {
        let one = rdns(&[&[(CN, "dave, O=ONS")]]);
        for s in [r"CN=dave\, O=ONS", r"CN=dave\2C O=ONS", r"CN=dave\2c O\3dONS", r"CN=dave\, O\=ONS"] {
            assert_eq!(dn(s), one, "{s}");
        }
        for (s, value) in [
            (r"CN=a\+b", "a+b"),
            (r#"CN=\"q\""#, "\"q\""),
            (r"CN=back\\slash", "back\\slash"),
            (r"CN=\<x\>\;", "<x>;"),
            (r"CN=\#1", "#1"),
            (r"CN=\ a\ ", " a "),
            (r"CN=a\  ", "a "),
            ("CN=a  ", "a"),
            (r"CN=caf\C3\A9", "caf\u{e9}"),
            ("CN=caf\u{e9}", "caf\u{e9}"),
            (r"CN=\E2\82\AC1", "\u{20ac}1"),
            (r"CN=a\00b", "a\u{0}b"),
        ] {
            assert_eq!(dn(s), rdns(&[&[(CN, value)]]), "{s}");
            assert_eq!(dn(&dn(s).to_string()), dn(s), "{s} printed as {}", dn(s));
        }
        assert_eq!(dn(r"CN=dave\, O=ONS").to_string(), r"CN=dave\, O=ONS");
    }

    #[test]
    fn bad_subjects_are_refused_with_a_reason() {
        for (s, why) in [
            ("", "at least one attribute"),
            ("   ", "at least one attribute"),
            ("alice", "expected '=' after 'alice'"),
            ("C N=x", "expected '=' after 'C'"),
            ("CN", "expected '=' after 'CN'"),
            ("CN=", "CN has an empty value"),
            ("CN=  , O=ONS", "CN has an empty value"),
            ("=alice", "expected an attribute type such as CN at character 1, found '='"),
            ("CN=alice,", "ends where an attribute"),
            ("CN=alice+", "ends where an attribute"),
            (",CN=alice", "expected an attribute type"),
            ("CN=alice,,O=ONS", "expected an attribute type such as CN at character 10"),
            ("CN=alice;O=ONS", "separate RDNs with ','"),
            ("CN=\"alice\"", "quoted values are not supported"),
            ("CN=#616c696365", "#hex (BER)"),
            ("CN= #616c696365", "#hex (BER)"),
            ("CN=a<b", "'<' at character 5 must be escaped"),
            ("CN=a>b", "must be escaped"),
            ("CN=a\u{0}b", "must be escaped"),
            ("CN=a\\", "lone '\\'"),
            ("CN=a\\zz", "is not an escape"),
            ("CN=a\\4", "needs two hex digits"),
            ("CN=a\\4g", "needs two hex digits"),
            ("CN=\\C3", "not UTF-8"),
            ("CN=\\FF\\FE", "not UTF-8"),
            ("XX=alice", "unknown attribute type 'XX'"),
            ("OID.2.5.4.3=alice", "unknown attribute type"),
            ("3.1=x", "not a dotted OID"),
            ("1.40=x", "not a dotted OID"),
            ("2.05.4=x", "not a dotted OID"),
            ("2.5..4=x", "not a dotted OID"),
            ("2.5.4.3.=x", "not a dotted OID"),
            ("2=x", "not a dotted OID"),
            ("2.5.4.99999999999999999999=x", "not a dotted OID"),
            ("CN=alice+CN=alice", "'CN=alice' is given twice in one RDN"),
            ("CN=alice + cn=alice, O=ONS", "given twice in one RDN"),
        ] {
            match s.parse::<DistinguishedName>() {
                Ok(d) => panic!("{s:?} was accepted as {d:?}"),
                Err(e) => assert!(e.contains(why), "{s:?}: {e:?} should say {why:?}"),
            }
        }
    }

    #[test]
    fn oids_encode_and_decode() {
        for arcs in [&[2u64, 5, 4, 3][..], &[0, 9, 2342, 19200300, 100, 1, 25], &[2, 999, 1], &[1, 39, u64::MAX]] {
            assert_eq!(decode_oid(&encode_oid(arcs).unwrap()).as_deref(), Some(arcs));
        }
        assert_eq!(encode_oid(&[2, 5, 4, 3]).unwrap(), [0x55, 0x04, 0x03]);
        assert_eq!(encode_oid(&[1, 2, 840, 113549]).unwrap(), [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d]);
        // Not minimal, unterminated, empty, too big for a u64: not OIDs to compare.
        for bad in [
            &[0x55, 0x80, 0x04][..],
            &[0x55, 0x84],
            &[],
            &[0x55, 0x82, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00],
        ] {
            assert_eq!(decode_oid(bad), None, "{bad:02x?}");
        }
    }

    #[test]
    fn multi_valued_rdns_compare_as_sets() {
        assert_eq!(dn("CN=alice+UID=a1, O=ONS"), dn("UID=a1 + CN=alice, O=ONS"));
        assert_ne!(dn("CN=alice+UID=a1, O=ONS"), dn("CN=alice, UID=a1, O=ONS"));
        assert_ne!(dn("CN=alice+UID=a1, O=ONS"), dn("CN=alice+UID=a1+O=ONS"));
        let ids = identities(&[("alice", "UID=a1+CN=alice, O=ONS")]);
        let alice = |order: bool| {
            let rdn: &[RawAttribute] = if order {
                &[(CN, UTF8, b"alice"), (UID, UTF8, b"a1")]
            } else {
                &[(UID, UTF8, b"a1"), (CN, UTF8, b"alice")]
            };
            from_name(&[rdn, &[(O, UTF8, b"ONS")]]).unwrap()
        };
        for order in [true, false] {
            let subject = alice(order);
            assert!(dn("UID=a1+CN=alice, O=ONS").matches(&subject));
            assert!(dn("O=ONS, CN=alice+UID=a1").matches(&subject), "reversed RDNs, each one whole");
            assert_eq!(ids.by_subject.get(&subject).map(|c| c.name.as_str()), Some("alice"));
        }
        let split = from_name(&[&[(CN, UTF8, b"alice")], &[(UID, UTF8, b"a1")], &[(O, UTF8, b"ONS")]]).unwrap();
        assert!(!dn("UID=a1+CN=alice, O=ONS").matches(&split));
        let merged = from_name(&[&[(CN, UTF8, b"alice"), (UID, UTF8, b"a1"), (O, UTF8, b"ONS")]]).unwrap();
        assert!(!dn("UID=a1+CN=alice, O=ONS").matches(&merged));
        // The same attribute twice in one RDN is not the same as once.
        let twice = from_name(&[&[(CN, UTF8, b"alice"), (CN, UTF8, b"alice")]]).unwrap();
        assert!(!dn("CN=alice").matches(&twice));
    }

    #[test]
    fn repeated_and_extra_attributes_do_not_match() {
        // rcgen keeps one value per DnType; a custom type with O's OID repeats O.
        let o_again = DnType::CustomDnType(O.to_vec());
        let ids = identities(&[("dave", "CN=dave, O=ONS"), ("twice", "CN=dave, O=ONS, O=ONS")]);
        assert_eq!(who(&ids, &cert(&[(CN_, "dave"), (O_, "ONS")])), Ok("dave".into()));
        assert_eq!(who(&ids, &cert(&[(CN_, "dave"), (O_, "ONS"), (o_again.clone(), "ONS")])), Ok("twice".into()));
        let ids = identities(&[("dave", "CN=dave, O=ONS")]);
        let refused = Err("client certificate subject matches no identity's cert_subject");
        assert_eq!(who(&ids, &cert(&[(CN_, "dave"), (O_, "ONS"), (o_again, "ONS")])), refused);
        assert_eq!(who(&ids, &cert(&[(CN_, "dave"), (OU_, "x"), (O_, "ONS")])), refused);
        assert_eq!(who(&ids, &cert(&[(CN_, "dave")])), refused);
        assert_eq!(who(&ids, &cert(&[(O_, "ONS")])), refused);
        assert_eq!(who(&ids, &cert(&[])), refused);
    }

    /// The reported attack: a certificate whose only attribute is the CN
    /// `dave, O=ONS` was taken for the identity `CN=dave, O=ONS`.
    #[test]
    fn a_cn_holding_separators_is_one_attribute() {
        let forged = cert(&[(CN_, "dave, O=ONS")]);
        assert_eq!(DistinguishedName::from_certificate(&forged).unwrap(), rdns(&[&[(CN, "dave, O=ONS")]]));
        let ids = identities(&[("dave", "CN=dave, O=ONS")]);
        assert_eq!(who(&ids, &forged), Err("client certificate subject matches no identity's cert_subject"));
        for forged in [
            cert(&[(CN_, "dave+O=ONS")]),
            cert(&[(O_, "ONS, CN=dave")]),
            cert(&[(CN_, "dave"), (O_, "ONS, OU=x")]),
            cert(&[(CN_, "dave,O=ONS")]),
        ] {
            assert!(who(&ids, &forged).is_err());
        }
        // Written with the comma escaped, that single CN is an identity of its own.
        let ids = identities(&[("dave", "CN=dave, O=ONS"), ("odd", r"CN=dave\, O=ONS")]);
        assert_eq!(who(&ids, &forged), Ok("odd".into()));
        assert_eq!(who(&ids, &cert(&[(CN_, "dave"), (O_, "ONS")])), Ok("dave".into()));
        // A multi-valued RDN is not two RDNs.
        let ids = identities(&[("dave", "CN=dave+O=ONS")]);
        assert!(who(&ids, &cert(&[(CN_, "dave"), (O_, "ONS")])).is_err());
    }

    #[test]
    fn only_the_written_or_reversed_order_matches() {
        let ids = identities(&[("a", "CN=a, OU=x, O=ONS")]);
        let attrs = [(CN_, "a"), (OU_, "x"), (O_, "ONS")];
        for order in [[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]] {
            let subject: Vec<(DnType, &str)> = order.iter().map(|&i| attrs[i].clone()).collect();
            let expected = if order == [0, 1, 2] || order == [2, 1, 0] { Ok("a".to_string()) } else { Err(()) };
            assert_eq!(who(&ids, &cert(&subject)).map_err(|_| ()), expected, "{order:?}");
        }
        // One RDN, or a palindrome: the two orders are one.
        let ids = identities(&[("p", "OU=x, CN=a, OU=x")]);
        assert_eq!(
            who(
                &ids,
                &cert_with(&[
                    (OU_, DnValue::Utf8String("x".into())),
                    (CN_, DnValue::Utf8String("a".into())),
                    (DnType::CustomDnType(OU.to_vec()), DnValue::Utf8String("x".into())),
                ])
            ),
            Ok("p".into())
        );
    }

    #[test]
    fn values_compare_exactly() {
        let ids = identities(&[("zoe", "CN=Zo\u{eb}, O=ONS")]);
        assert_eq!(who(&ids, &cert(&[(CN_, "Zo\u{eb}"), (O_, "ONS")])), Ok("zoe".into()));
        for cn in ["zo\u{eb}", "ZO\u{cb}", "Zoe\u{308}", "Zo\u{eb} ", " Zo\u{eb}", "Zo\u{eb}\u{0}"] {
            assert!(who(&ids, &cert(&[(CN_, cn), (O_, "ONS")])).is_err(), "{cn:?}");
        }
        assert!(who(&ids, &cert(&[(CN_, "Zo\u{eb}"), (O_, "ons")])).is_err());
    }

    #[test]
    fn certificate_values_are_text_of_their_string_type() {
        let ids = identities(&[("zoe", "CN=Zo\u{eb}, O=ONS"), ("dave", "CN=dave, O=ONS")]);
        let with_cn = |v: DnValue| cert_with(&[(CN_, v), (O_, DnValue::Utf8String("ONS".into()))]);
        assert_eq!(who(&ids, &with_cn(DnValue::PrintableString("dave".try_into().unwrap()))), Ok("dave".into()));
        assert_eq!(who(&ids, &with_cn(DnValue::Ia5String("dave".try_into().unwrap()))), Ok("dave".into()));
        assert_eq!(who(&ids, &with_cn(DnValue::BmpString("Zo\u{eb}".try_into().unwrap()))), Ok("zoe".into()));
        assert_eq!(who(&ids, &with_cn(DnValue::UniversalString("Zo\u{eb}".try_into().unwrap()))), Ok("zoe".into()));
        // T.61 is refused whatever it holds: its character set is ambiguous.
        let teletex = with_cn(DnValue::TeletexString("dave".try_into().unwrap()));
        assert!(who(&ids, &teletex).unwrap_err().contains("type other than UTF8String"));

        // Bytes that are not text in their type: never a lossy match.
        const INVALID: &str = "client certificate subject has a value that is not valid text in its string type";
        let invalid = Err(INVALID);
        let utf8 = with_cn(DnValue::Utf8String("dave\u{1}\u{1}".into()));
        assert_eq!(who(&ids, &utf8), Err("client certificate subject matches no identity's cert_subject"));
        assert_eq!(who(&ids, &patched(&utf8, b"dave\x01\x01", b"dave\xc3\x28")), invalid);
        assert_eq!(who(&ids, &patched(&utf8, b"dave\x01\x01", b"dave\xff\xfe")), invalid);
        let printable = with_cn(DnValue::PrintableString("dave:::".try_into().unwrap()));
        assert_eq!(who(&ids, &patched(&printable, b"dave:::", b"dave@@@")), invalid);
        assert_eq!(who(&ids, &patched(&printable, b"dave:::", b"dave\xc3\xa9:")), invalid);

        // The rest, in names built here.
        let cn = |tag: u8, v: &[u8]| from_name(&[&[(CN, tag, v)]]);
        let text = |s: &str| Ok(rdns(&[&[(CN, s)]]));
        assert_eq!(cn(0x12, b"12 34"), text("12 34"));
        assert_eq!(cn(0x12, b"12a"), Err(INVALID));
        assert_eq!(cn(0x1a, b"a b~"), text("a b~"));
        assert_eq!(cn(0x1a, b"a\tb"), Err(INVALID));
        assert_eq!(cn(0x16, b"a@b"), text("a@b"));
        assert_eq!(cn(0x16, b"a\x80"), Err(INVALID));
        assert_eq!(cn(PRINTABLE, b"A-z 0'()+,./:=?"), text("A-z 0'()+,./:=?"));
        assert_eq!(cn(0x1e, &[0, b'a', 0xd8, 0x3d]), Err(INVALID), "a surrogate is not UCS-2");
        assert_eq!(cn(0x1e, &[0, b'a', 0]), Err(INVALID));
        assert_eq!(cn(0x1c, &[0, 0x11, 0, 0]), Err(INVALID), "beyond U+10FFFF");
        assert_eq!(cn(0x1c, &[0, 0, 0]), Err(INVALID));
        assert_eq!(cn(0x1c, &[0, 1, 0xf6, 0x00]), text("\u{1f600}"));
        assert_eq!(cn(UTF8, b""), text(""));
        for (tag, why) in
            [(0x02, "type other than"), (0x14, "type other than"), (0x80, "not a string"), (0x2c, "not a string")]
        {
            assert!(cn(tag, b"dave").unwrap_err().contains(why), "tag {tag:#x}");
        }
    }

    #[test]
    fn attribute_types_by_name_or_oid() {
        let custom = DnType::CustomDnType(vec![1, 3, 6, 1, 4, 1, 99999, 1]);
        let uid = DnType::CustomDnType(UID.to_vec());
        let email = DnType::CustomDnType(vec![1, 2, 840, 113549, 1, 9, 1]);
        let der = cert_with(&[
            (uid, DnValue::Utf8String("a1".into())),
            (custom, DnValue::Utf8String("x".into())),
            (email, DnValue::Ia5String("a@b.example".try_into().unwrap())),
        ]);
        for subject in [
            "UID=a1, 1.3.6.1.4.1.99999.1=x, emailAddress=a@b.example",
            "userId=a1, 1.3.6.1.4.1.99999.1=x, E=a@b.example",
            "0.9.2342.19200300.100.1.1=a1, 1.3.6.1.4.1.99999.1=x, 1.2.840.113549.1.9.1=a@b.example",
            "Email=a@b.example, 1.3.6.1.4.1.99999.1=x, uid=a1",
        ] {
            assert_eq!(who(&identities(&[("u", subject)]), &der), Ok("u".into()), "{subject}");
        }
        for subject in ["UID=a1, 1.3.6.1.4.1.99999.2=x, E=a@b.example", "DC=a1, 1.3.6.1.4.1.99999.1=x, E=a@b.example"] {
            assert!(who(&identities(&[("u", subject)]), &der).is_err(), "{subject}");
        }
        // Every name in the table parses to its own OID, whatever the case.
        for (names, arcs) in ATTRIBUTE_TYPES {
            for name in *names {
                for n in [name.to_string(), name.to_ascii_lowercase(), name.to_ascii_uppercase()] {
                    assert_eq!(dn(&format!("{n}=v")), rdns(&[&[(arcs, "v")]]), "{n}");
                }
            }
        }
    }

    // ---- property tests

    fn any_type() -> impl Strategy<Value = Vec<u64>> {
        prop_oneof![
            3 => prop::sample::select(ATTRIBUTE_TYPES.iter().map(|(_, arcs)| arcs.to_vec()).collect::<Vec<_>>()),
            1 => (0u64..=2, 0u64..40, prop::collection::vec(any::<u64>(), 0..4))
                .prop_map(|(a, b, rest)| [a, b].into_iter().chain(rest).collect()),
        ]
    }

    fn any_value() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => "[a-zA-Z0-9 ,+=#;<>\"\\\\.-]{1,16}",
            1 => "[ \\\\#,+]{1,6}",
            1 => any::<String>(),
            1 => "[\\x00-\\x1f\\x7f\u{80}-\u{9f} ]{1,4}",
            1 => "\\PC{1,12}",
        ]
        .prop_filter("a value", |v| !v.is_empty())
    }

    fn any_dn() -> impl Strategy<Value = DistinguishedName> {
        prop::collection::vec(prop::collection::vec((any_type(), any_value()), 1..4), 1..5)
            .prop_map(|rdns| {
                DistinguishedName::new(
                    rdns.into_iter()
                        .map(|r| {
                            r.into_iter().map(|(t, value)| Attribute { oid: encode_oid(&t).unwrap(), value }).collect()
                        })
                        .collect(),
                )
            })
            .prop_filter("no attribute twice in one RDN", |d| d.rdns.iter().all(|r| r.windows(2).all(|w| w[0] != w[1])))
    }

    /// `d` written with `spaces` (cycled) around every `=`, `,` and `+`, and
    /// the attributes of each RDN rotated by `turn`.
    fn written(d: &DistinguishedName, spaces: &[usize], turn: usize) -> String {
        let mut sp = spaces.iter().cycle().map(|n| " ".repeat(*n));
        let mut out = String::new();
        for (i, rdn) in d.rdns.iter().enumerate() {
            if i > 0 {
                out += &format!("{},{}", sp.next().unwrap(), sp.next().unwrap());
            }
            let mut rdn = rdn.clone();
            let len = rdn.len();
            rdn.rotate_left(turn % len);
            for (j, a) in rdn.into_iter().enumerate() {
                if j > 0 {
                    out += &format!("{}+{}", sp.next().unwrap(), sp.next().unwrap());
                }
                let one = DistinguishedName { rdns: vec![vec![a]] }.to_string();
                let (ty, value) = one.split_once('=').unwrap();
                out += &format!("{ty}{}={}{value}", sp.next().unwrap(), sp.next().unwrap());
            }
        }
        out
    }

    proptest! {
        /// Any name printed with correct escaping parses back to the same
        /// attributes, however it is spaced and its RDNs' attributes ordered.
        #[test]
        fn printed_subjects_parse_back(d in any_dn(), spaces in prop::collection::vec(0usize..3, 1..8), turn in 0usize..3) {
            let s = d.to_string();
            prop_assert_eq!(s.parse::<DistinguishedName>(), Ok(d.clone()), "{}", s);
            prop_assert!(!s.contains(|c: char| c.is_control()), "{}", s);
            let w = written(&d, &spaces, turn);
            prop_assert_eq!(w.parse::<DistinguishedName>(), Ok(d), "{}", w);
        }

        /// Any string: refused, or parsed into a name that prints and parses
        /// back to itself. Never a panic.
        #[test]
        fn any_string_parses_or_is_refused(s in prop_oneof![
            "[a-zA-Z0-9 ,+=#;<>\"\\\\.]{0,24}",
            "(CN|O|OU|2\\.5\\.4\\.3) ?= ?[a-z ,+\\\\0-9A-F#]{0,10}(, ?(O|OU|C|UID) ?= ?[a-z ,+\\\\0-9A-F#]{0,10}){0,3}",
            sandpit_core::testing::nasty_string(),
        ]) {
            if let Ok(d) = s.parse::<DistinguishedName>() {
                prop_assert_eq!(d.to_string().parse::<DistinguishedName>(), Ok(d.clone()), "{} -> {}", s, d);
                prop_assert!(d.rdns.iter().flatten().all(|a| !a.value.is_empty()));
            }
        }

        /// Reordered RDNs match only as written or exactly reversed; the
        /// order of attributes inside an RDN never matters.
        #[test]
        fn only_two_orders_match(
            (d, shuffled) in prop::collection::vec(any_value(), 2..6).prop_flat_map(|values| {
                let d = DistinguishedName::new(values.iter().map(|v| vec![Attribute { oid: encode_oid(CN).unwrap(), value: v.clone() }]).collect());
                (Just(d.clone()), Just(d.rdns).prop_shuffle())
            }),
        ) {
            let other = DistinguishedName::new(shuffled);
            let expected = other == d || other == d.reversed();
            prop_assert_eq!(d.matches(&other), expected);
            prop_assert_eq!(other.matches(&d), expected);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// A certificate whose one attribute's value holds a whole name,
        /// escaped or not, is never the identity of that name.
        #[test]
        fn a_value_holding_separators_is_never_a_longer_name(d in any_dn().prop_filter("two attributes or more", |d| d.rdns.iter().flatten().count() > 1)) {
            let ids = identities(&[("victim", &d.to_string())]);
            let naive: Vec<String> = d.rdns.iter().flatten().map(|a| a.value.clone()).collect();
            let printed = d.to_string();
            let after_type = printed.split_once('=').unwrap().1.to_string();
            for value in [naive.join(", "), naive.join(",O="), printed, after_type] {
                for ty in [CN_, O_] {
                    let forged = cert(&[(ty, value.as_str())]);
                    prop_assert!(ids.by_certificate(&forged).is_err(), "{:?} taken for {}", value, d);
                }
            }
        }
    }

    #[test]
    fn local_token_is_private_and_stable() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let t1 = local_token(dir.path()).unwrap();
        let t2 = local_token(dir.path()).unwrap();
        assert_eq!(t1, t2);
        assert_eq!(t1.len(), 64);
        let mode = std::fs::metadata(dir.path().join("local-token")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
