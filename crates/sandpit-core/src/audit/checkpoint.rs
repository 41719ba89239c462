//! Signed checkpoints of the audit chain, in the C2SP formats: a
//! [tlog-checkpoint](https://c2sp.org/tlog-checkpoint) body inside a
//! [signed note](https://c2sp.org/signed-note), signed with Ed25519.
//!
//! A checkpoint says "the chain of `origin` had `size` records and record
//! `size` hashed to `head`". Kept away from the host, it anchors the chain:
//! a log that no longer holds that head at that size was truncated, emptied
//! or rewritten, however consistent it is with itself.
//!
//! ```text
//! sandpit/5f1c2a9b03d4e6f7                                  origin
//! 1000                                                       size (decimal)
//! 3q2+7w3q2+7w3q2+7w3q2+7w3q2+7w3q2+7w3q0=                   base64 of the head hash
//!                                                            blank line
//! — sandpit-5f1c2a9b03d4e6f7 AbCdEf...                       base64(key ID || signature)
//! ```
//!
//! The signature covers the body (every line up to and including the last
//! `\n` before the blank line). The key ID is the first 4 bytes of
//! `SHA-256(key name || 0x0A || 0x01 || public key)`; verifiers hold the key
//! as a "vkey": `<name>+<key ID, 8 hex digits>+<base64(0x01 || public key)>`.
//!
//! Pure: no files, no clock.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ring::signature::{Ed25519KeyPair, KeyPair as _, UnparsedPublicKey, ED25519};
use sha2::{Digest, Sha256};

use super::Hash;

/// The signature type byte of Ed25519 in signed notes.
pub const ALG_ED25519: u8 = 0x01;
/// What starts each signature line: U+2014 EM DASH, then a space.
const SIG_PREFIX: &str = "\u{2014} ";
/// At most this many signature lines (as Go's `note.Open`).
const MAX_SIGNATURES: usize = 100;
/// Longest note accepted. A checkpoint is a few hundred bytes.
pub const MAX_NOTE_BYTES: usize = 64 * 1024;
/// Length of an Ed25519 seed and public key.
pub const KEY_BYTES: usize = 32;

/// Why a key, a note or a checkpoint was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    /// Not a well-formed note, checkpoint or key: what is wrong with it.
    #[error("malformed {what}: {reason}")]
    Malformed { what: &'static str, reason: String },
    /// No signature line by the verifier's key (its name and key ID).
    #[error("no signature by key {name}+{id}: signed by {found}")]
    NotSigned { name: String, id: String, found: String },
    /// A signature line by the verifier's key that does not verify: the text was altered or forged.
    #[error("the signature by key {name}+{id} does not verify: the note was altered or not signed by this key")]
    BadSignature { name: String, id: String },
}

fn malformed(what: &'static str, reason: impl Into<String>) -> NoteError {
    NoteError::Malformed { what, reason: reason.into() }
}

/// Whether `name` may name a key: non-empty, no Unicode space, no `+`.
pub fn valid_key_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if let Some(c) = name.chars().find(|c| c.is_whitespace() || *c == '+' || c.is_control()) {
        return Err(format!("'{name}' contains {c:?}; a key name has no spaces, '+' or control characters"));
    }
    Ok(())
}

/// Whether `origin` may be a checkpoint's first line: non-empty, printable.
pub fn valid_origin(origin: &str) -> Result<(), String> {
    if origin.is_empty() {
        return Err("must not be empty".into());
    }
    if let Some(c) = origin.chars().find(|c| c.is_control()) {
        return Err(format!("contains the control character {c:?}"));
    }
    Ok(())
}

/// The key ID of an Ed25519 key of that name.
pub fn key_id(name: &str, public: &[u8; KEY_BYTES]) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([b'\n', ALG_ED25519]);
    h.update(public);
    let d = h.finalize();
    [d[0], d[1], d[2], d[3]]
}

/// A signer: an Ed25519 key pair and the name it signs under.
pub struct SigningKey {
    name: String,
    pair: Ed25519KeyPair,
    verifier: VerifierKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the seed.
        f.debug_struct("SigningKey").field("verifier", &self.verifier.to_string()).finish()
    }
}

impl SigningKey {
    pub fn from_seed(name: &str, seed: &[u8; KEY_BYTES]) -> Result<SigningKey, NoteError> {
        valid_key_name(name).map_err(|r| malformed("key name", r))?;
        let pair = Ed25519KeyPair::from_seed_unchecked(seed).map_err(|e| malformed("Ed25519 seed", e.to_string()))?;
        let public: [u8; KEY_BYTES] = pair
            .public_key()
            .as_ref()
            .try_into()
            .map_err(|_| malformed("Ed25519 seed", "public key is not 32 bytes"))?;
        let verifier = VerifierKey { name: name.to_string(), id: key_id(name, &public), public };
        Ok(SigningKey { name: name.to_string(), pair, verifier })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The public half, for verifiers.
    pub fn verifier(&self) -> &VerifierKey {
        &self.verifier
    }

    /// Signs `text` (non-empty, ending in `\n`, no blank line, no control
    /// characters but `\n`): the whole note.
    pub fn sign(&self, text: &str) -> Result<String, NoteError> {
        check_text(text)?;
        let sig = self.pair.sign(text.as_bytes());
        let mut blob = Vec::with_capacity(4 + sig.as_ref().len());
        blob.extend_from_slice(&self.verifier.id);
        blob.extend_from_slice(sig.as_ref());
        Ok(format!("{text}\n{SIG_PREFIX}{} {}\n", self.name, B64.encode(blob)))
    }
}

/// A verifier key: a name, its key ID and an Ed25519 public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifierKey {
    name: String,
    id: [u8; 4],
    public: [u8; KEY_BYTES],
}

impl std::fmt::Display for VerifierKey {
    /// The vkey encoding: `<name>+<hex key ID>+<base64(0x01 || public key)>`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut key = Vec::with_capacity(1 + KEY_BYTES);
        key.push(ALG_ED25519);
        key.extend_from_slice(&self.public);
        write!(f, "{}+{}+{}", self.name, hex::encode(self.id), B64.encode(key))
    }
}

impl VerifierKey {
    /// Parses a vkey (surrounding white space ignored).
    pub fn parse(vkey: &str) -> Result<VerifierKey, NoteError> {
        let what = "verifier key";
        // The name and key ID hold no '+'; the base64 key may.
        let parts: Vec<&str> = vkey.trim().splitn(3, '+').collect();
        let [name, id_hex, key_b64] = parts[..] else {
            return Err(malformed(what, "expected <name>+<8 hex digits>+<base64 key>"));
        };
        valid_key_name(name).map_err(|r| malformed(what, format!("name: {r}")))?;
        let mut id = [0u8; 4];
        if id_hex.len() != 8 || hex::decode_to_slice(id_hex, &mut id).is_err() {
            return Err(malformed(what, format!("key ID '{id_hex}' is not 8 hex digits")));
        }
        let key = B64.decode(key_b64).map_err(|e| malformed(what, format!("key is not base64: {e}")))?;
        let public: [u8; KEY_BYTES] = match key.split_first() {
            Some((&ALG_ED25519, rest)) => {
                rest.try_into().map_err(|_| malformed(what, "an Ed25519 key has 32 bytes after the type"))?
            }
            Some((alg, _)) => return Err(malformed(what, format!("signature type {alg:#04x} is not Ed25519 (0x01)"))),
            None => return Err(malformed(what, "empty key")),
        };
        if key_id(name, &public) != id {
            return Err(malformed(what, format!("key ID {id_hex} does not match the name and key")));
        }
        Ok(VerifierKey { name: name.to_string(), id, public })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key ID, as 8 hex digits.
    pub fn id_hex(&self) -> String {
        hex::encode(self.id)
    }

    /// Verifies `note` and returns its text (the signed part). Signature
    /// lines by other keys are ignored, as the format requires.
    pub fn open<'a>(&self, note: &'a str) -> Result<&'a str, NoteError> {
        let parsed = parse_note(note)?;
        let mut found = Vec::new();
        for s in &parsed.signatures {
            if s.name != self.name || s.id != self.id {
                found.push(format!("{}+{}", s.name, hex::encode(s.id)));
                continue;
            }
            let ok = UnparsedPublicKey::new(&ED25519, &self.public).verify(parsed.text.as_bytes(), &s.signature);
            return match ok {
                Ok(()) => Ok(parsed.text),
                Err(_) => Err(NoteError::BadSignature { name: self.name.clone(), id: self.id_hex() }),
            };
        }
        Err(NoteError::NotSigned { name: self.name.clone(), id: self.id_hex(), found: found.join(", ") })
    }
}

/// One signature line, not yet verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteSignature {
    pub name: String,
    pub id: [u8; 4],
    pub signature: Vec<u8>,
}

/// A note split into its text and signature lines, nothing verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note<'a> {
    /// The signed text: every line up to and including the last `\n` before the blank line.
    pub text: &'a str,
    pub signatures: Vec<NoteSignature>,
}

/// No ASCII control character but `\n`.
fn check_chars(what: &'static str, s: &str) -> Result<(), NoteError> {
    match s.char_indices().find(|(_, c)| c.is_ascii_control() && *c != '\n') {
        Some((i, c)) => Err(malformed(what, format!("control character {c:?} at byte {i}"))),
        None => Ok(()),
    }
}

fn check_text(text: &str) -> Result<(), NoteError> {
    let what = "note text";
    if text.is_empty() || !text.ends_with('\n') {
        return Err(malformed(what, "must be non-empty and end with a newline"));
    }
    if text.contains("\n\n") {
        return Err(malformed(what, "must not contain a blank line"));
    }
    check_chars(what, text)
}

/// Splits a signed note; checks its syntax, not its signatures.
pub fn parse_note(note: &str) -> Result<Note<'_>, NoteError> {
    let what = "note";
    if note.len() > MAX_NOTE_BYTES {
        return Err(malformed(what, format!("{} bytes, more than {MAX_NOTE_BYTES}", note.len())));
    }
    check_chars(what, note)?;
    // The signatures follow the last blank line.
    let Some(split) = note.rfind("\n\n") else {
        return Err(malformed(what, "no blank line between the text and the signatures"));
    };
    let (text, sigs) = (&note[..split + 1], &note[split + 2..]);
    if sigs.is_empty() {
        return Err(malformed(what, "no signature lines"));
    }
    if !sigs.ends_with('\n') {
        return Err(malformed(what, "the last signature line does not end with a newline"));
    }
    let mut signatures = Vec::new();
    for (n, line) in sigs[..sigs.len() - 1].split('\n').enumerate() {
        let n = n + 1;
        let Some(rest) = line.strip_prefix(SIG_PREFIX) else {
            return Err(malformed(what, format!("signature line {n} does not start with an em dash and a space")));
        };
        let Some((name, b64)) = rest.split_once(' ') else {
            return Err(malformed(what, format!("signature line {n} is not '— <name> <base64>'")));
        };
        valid_key_name(name).map_err(|r| malformed(what, format!("signature line {n}: key name {r}")))?;
        let blob = B64.decode(b64).map_err(|e| malformed(what, format!("signature line {n} is not base64 ({e})")))?;
        if blob.len() < 5 {
            return Err(malformed(what, format!("signature line {n} is too short for a key ID and a signature")));
        }
        if signatures.len() == MAX_SIGNATURES {
            return Err(malformed(what, format!("more than {MAX_SIGNATURES} signatures")));
        }
        signatures.push(NoteSignature {
            name: name.to_string(),
            id: [blob[0], blob[1], blob[2], blob[3]],
            signature: blob[4..].to_vec(),
        });
    }
    Ok(Note { text, signatures })
}

/// A checkpoint of the audit chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Names the log: unique per daemon's data (e.g. `sandpit/<instance id>`).
    pub origin: String,
    /// Records in the chain.
    pub size: u64,
    /// The hash of record `size` (32 zero bytes for an empty chain).
    pub head: Hash,
}

impl Checkpoint {
    /// The note text: origin, size and base64 head, one line each.
    pub fn body(&self) -> String {
        format!("{}\n{}\n{}\n", self.origin, self.size, B64.encode(self.head))
    }

    /// Parses a checkpoint body. Extension lines after the head are allowed
    /// (and covered by the signature) but carry nothing Sandpit reads.
    pub fn parse(text: &str) -> Result<Checkpoint, NoteError> {
        let what = "checkpoint";
        let Some(body) = text.strip_suffix('\n') else {
            return Err(malformed(what, "does not end with a newline"));
        };
        let mut lines = body.split('\n');
        let origin = lines.next().unwrap_or_default();
        valid_origin(origin).map_err(|r| malformed(what, format!("origin line {r}")))?;
        let size_line = lines.next().ok_or_else(|| malformed(what, "no size line"))?;
        let canonical = size_line == "0" || (!size_line.starts_with('0') && !size_line.is_empty());
        let size: u64 = match size_line.parse() {
            Ok(s) if canonical && size_line.bytes().all(|b| b.is_ascii_digit()) => s,
            _ => return Err(malformed(what, format!("size line '{size_line}' is not a decimal number"))),
        };
        let head_line = lines.next().ok_or_else(|| malformed(what, "no head hash line"))?;
        let head: Hash = B64
            .decode(head_line)
            .ok()
            .and_then(|h| h.try_into().ok())
            .filter(|h: &Hash| B64.encode(h) == head_line)
            .ok_or_else(|| malformed(what, format!("head line '{head_line}' is not the base64 of 32 bytes")))?;
        if lines.any(str::is_empty) {
            return Err(malformed(what, "empty extension line"));
        }
        Ok(Checkpoint { origin: origin.to_string(), size, head })
    }

    /// The signed note of this checkpoint.
    pub fn sign(&self, key: &SigningKey) -> Result<String, NoteError> {
        key.sign(&self.body())
    }

    /// Verifies `note` with `key` and reads the checkpoint in it.
    pub fn open(note: &str, key: &VerifierKey) -> Result<Checkpoint, NoteError> {
        Checkpoint::parse(key.open(note)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 8032 test 1's key pair: a fixed vector for the key and key ID encodings.
    const SEED: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
    const PUBLIC: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";

    fn seed(s: &str) -> [u8; KEY_BYTES] {
        let mut b = [0u8; KEY_BYTES];
        hex::decode_to_slice(s, &mut b).unwrap();
        b
    }

    fn key(name: &str) -> SigningKey {
        SigningKey::from_seed(name, &seed(SEED)).unwrap()
    }

    fn checkpoint() -> Checkpoint {
        Checkpoint { origin: "sandpit/0123456789abcdef".into(), size: 1000, head: [0xab; 32] }
    }

    #[test]
    fn keys_encode_as_the_format_says() {
        let k = key("sandpit-test");
        let v = k.verifier();
        assert_eq!(hex::encode(v.public), PUBLIC, "the RFC 8032 public key");
        // Key ID: SHA-256(name || 0x0A || 0x01 || public key)[:4], computed independently.
        let mut h = Sha256::new();
        h.update(b"sandpit-test\n\x01");
        h.update(seed(PUBLIC));
        assert_eq!(v.id_hex(), hex::encode(&h.finalize()[..4]));
        let vkey = v.to_string();
        let mut key_bytes = vec![0x01];
        key_bytes.extend_from_slice(&seed(PUBLIC));
        assert_eq!(vkey, format!("sandpit-test+{}+{}", v.id_hex(), B64.encode(key_bytes)));
        assert!(vkey.matches('+').count() > 2, "this key's base64 holds a '+' too: {vkey}");
        assert_eq!(VerifierKey::parse(&format!("  {vkey}\n")).unwrap(), *v);
        assert!(format!("{k:?}").contains(&vkey) && !format!("{k:?}").contains(SEED), "Debug never shows the seed");
    }

    #[test]
    fn a_signed_checkpoint_round_trips_and_has_the_format() {
        let k = key("sandpit-test");
        let cp = checkpoint();
        let note = cp.sign(&k).unwrap();
        let expected_body = format!("sandpit/0123456789abcdef\n1000\n{}\n", B64.encode([0xab; 32]));
        assert_eq!(cp.body(), expected_body);
        let (body, sigs) = note.split_at(expected_body.len());
        assert_eq!(body, expected_body);
        let line = sigs.strip_prefix("\n\u{2014} sandpit-test ").expect("blank line, em dash, space, key name");
        let blob = B64.decode(line.strip_suffix('\n').unwrap()).unwrap();
        assert_eq!(blob.len(), 4 + 64);
        assert_eq!(hex::encode(&blob[..4]), k.verifier().id_hex());
        // The signature is over the body, checked with ring directly.
        UnparsedPublicKey::new(&ED25519, &seed(PUBLIC)).verify(expected_body.as_bytes(), &blob[4..]).unwrap();
        // Ed25519 is deterministic: the same key and checkpoint sign the same note.
        assert_eq!(cp.sign(&k).unwrap(), note);
        assert_eq!(Checkpoint::open(&note, k.verifier()).unwrap(), cp);
        let empty = Checkpoint { size: 0, head: [0; 32], ..cp };
        assert_eq!(Checkpoint::open(&empty.sign(&k).unwrap(), k.verifier()).unwrap(), empty);
    }

    #[test]
    fn changing_any_byte_fails() {
        let k = key("sandpit-test");
        let note = checkpoint().sign(&k).unwrap();
        let bytes = note.as_bytes();
        for i in 0..bytes.len() {
            for flip in [0x01u8, 0x20, 0x80] {
                let mut b = bytes.to_vec();
                b[i] ^= flip;
                let Ok(altered) = String::from_utf8(b) else { continue };
                assert!(
                    Checkpoint::open(&altered, k.verifier()).is_err(),
                    "byte {i} ^ {flip:#x} still verifies: {altered:?}"
                );
            }
        }
        // Dropped or added lines, too.
        let lines: Vec<&str> = note.split_inclusive('\n').collect();
        for skip in 0..lines.len() {
            let shorter: String = lines.iter().enumerate().filter(|(i, _)| *i != skip).map(|(_, l)| *l).collect();
            assert!(Checkpoint::open(&shorter, k.verifier()).is_err(), "without line {skip}");
        }
        let longer = note.replacen('\n', "\nextra\n", 3);
        assert!(Checkpoint::open(&longer, k.verifier()).is_err());
    }

    #[test]
    fn a_changed_checkpoint_resigned_by_another_key_fails() {
        let k = key("sandpit-test");
        let forged = Checkpoint { size: 999, ..checkpoint() };
        let other = SigningKey::from_seed("sandpit-test", &[7; 32]).unwrap();
        let e = Checkpoint::open(&forged.sign(&other).unwrap(), k.verifier()).unwrap_err();
        // Same name, another key: another key ID, so no signature by ours.
        assert!(matches!(e, NoteError::NotSigned { .. }), "{e}");
        // Our key ID on someone else's signature: a bad signature.
        let mut note = forged.sign(&other).unwrap();
        let line_start = note.rfind('\u{2014}').unwrap();
        let b64 = note[line_start..].split(' ').nth(2).unwrap().trim_end().to_string();
        let mut blob = B64.decode(&b64).unwrap();
        blob[..4].copy_from_slice(&k.verifier().id);
        note = note.replace(&b64, &B64.encode(blob));
        let e = Checkpoint::open(&note, k.verifier()).unwrap_err();
        assert!(matches!(e, NoteError::BadSignature { .. }), "{e}");
        assert!(e.to_string().contains("does not verify"), "{e}");
    }

    #[test]
    fn the_wrong_key_name_or_key_id_fails() {
        let k = key("sandpit-test");
        let note = checkpoint().sign(&k).unwrap();
        // The same public key under another name has another key ID.
        let renamed = key("sandpit-other");
        let e = Checkpoint::open(&note, renamed.verifier()).unwrap_err();
        assert!(matches!(e, NoteError::NotSigned { .. }), "{e}");
        assert!(e.to_string().contains("signed by sandpit-test+"), "{e}");
        // A vkey whose ID does not match its name and key is refused outright.
        let v = k.verifier().to_string();
        let id = k.verifier().id_hex();
        let wrong_id = v.replace(&id, "00000000");
        let e = VerifierKey::parse(&wrong_id).unwrap_err();
        assert!(e.to_string().contains("does not match"), "{e}");
        let wrong_name = v.replace("sandpit-test", "sandpit-tess");
        assert!(VerifierKey::parse(&wrong_name).is_err());
        // A note whose signature line claims another name, same key ID and signature.
        let relabelled = note.replace("\u{2014} sandpit-test ", "\u{2014} sandpit-tess ");
        assert!(matches!(Checkpoint::open(&relabelled, k.verifier()), Err(NoteError::NotSigned { .. })));
    }

    #[test]
    fn other_signers_are_ignored() {
        let k = key("sandpit-test");
        let witness = SigningKey::from_seed("witness.example", &[9; 32]).unwrap();
        let body = checkpoint().body();
        let ours = k.sign(&body).unwrap();
        let theirs = witness.sign(&body).unwrap();
        let both = format!("{}{}", theirs, &ours[body.len() + 1..]);
        assert_eq!(Checkpoint::open(&both, k.verifier()).unwrap(), checkpoint());
        assert_eq!(Checkpoint::open(&both, witness.verifier()).unwrap(), checkpoint());
        assert_eq!(parse_note(&both).unwrap().signatures.len(), 2);
    }

    #[test]
    fn malformed_notes_are_refused_with_a_reason() {
        let k = key("sandpit-test");
        let note = checkpoint().sign(&k).unwrap();
        let sig_line = &note[note.rfind('\u{2014}').unwrap()..];
        let body = checkpoint().body();
        let cases: Vec<(String, &str)> = vec![
            (String::new(), "no blank line"),
            (body.clone(), "no blank line"),
            (format!("{body}\n"), "no signature lines"),
            (note.trim_end().to_string(), "does not end with a newline"),
            (note.replace('\u{2014}', "-"), "em dash"),
            (note.replace("\u{2014} ", "\u{2014}"), "em dash"),
            (format!("{body}\n\u{2014} sandpit-test\n"), "is not '— <name> <base64>'"),
            (format!("{body}\n\u{2014} sandpit-test !!!!\n"), "not base64"),
            (format!("{body}\n\u{2014} sandpit-test AAAA\n"), "too short"),
            (format!("{body}\n\u{2014} sandpit+test {}", sig_line.split(' ').nth(2).unwrap()), "key name"),
            (note.replace('\n', "\r\n"), "control character"),
            (format!("{}{}", note, sig_line.repeat(100)), "more than 100"),
            (format!("{body}\n{}", "x".repeat(MAX_NOTE_BYTES)), "more than"),
        ];
        for (text, reason) in cases {
            let e = Checkpoint::open(&text, k.verifier()).unwrap_err();
            assert!(matches!(e, NoteError::Malformed { .. }), "{text:?}: {e}");
            assert!(e.to_string().contains(reason), "{text:?}: '{e}' should say '{reason}'");
        }
    }

    #[test]
    fn malformed_checkpoint_bodies_are_refused_with_a_reason() {
        let k = key("sandpit-test");
        let head = B64.encode([1u8; 32]);
        let cases = [
            ("\n1\nAAAA\n".to_string(), "origin line"),
            ("o\n".to_string(), "no size line"),
            ("o\n1\n".to_string(), "no head hash line"),
            (format!("o\n01\n{head}\n"), "not a decimal"),
            (format!("o\n-1\n{head}\n"), "not a decimal"),
            (format!("o\n+1\n{head}\n"), "not a decimal"),
            (format!("o\n18446744073709551616\n{head}\n"), "not a decimal"),
            ("o\n1\nAAAA\n".to_string(), "base64 of 32 bytes"),
            (format!("o\n1\n{}\n", head.trim_end_matches('=')), "base64 of 32 bytes"),
            (format!("o\n1\n{}\n", B64.encode([1u8; 48])), "base64 of 32 bytes"),
        ];
        for (body, reason) in cases {
            let e = Checkpoint::parse(&body).unwrap_err();
            assert!(e.to_string().contains(reason), "{body:?}: '{e}' should say '{reason}'");
            // Signed or not, a bad body is refused.
            if let Ok(note) = k.sign(&body) {
                assert!(Checkpoint::open(&note, k.verifier()).is_err(), "{body:?}");
            }
        }
        let with_extension = format!("o\n7\n{head}\nsome extension\n");
        let cp = Checkpoint::open(&k.sign(&with_extension).unwrap(), k.verifier()).unwrap();
        assert_eq!((cp.origin.as_str(), cp.size, cp.head), ("o", 7, [1u8; 32]));
    }

    #[test]
    fn bad_names_texts_and_keys_are_refused() {
        for name in ["", "a b", "a+b", "a\tb", "a\u{00a0}b"] {
            assert!(SigningKey::from_seed(name, &[1; 32]).is_err(), "{name:?}");
        }
        let k = key("k");
        for text in ["", "no newline", "a\n\nb\n", "bell\u{7}\n"] {
            assert!(k.sign(text).is_err(), "{text:?}");
        }
        let v = k.verifier().to_string();
        let (name_id, b64) = v.rsplit_once('+').unwrap();
        let mut other_alg = B64.decode(b64).unwrap();
        other_alg[0] = 0x02;
        for bad in [
            "k".to_string(),
            format!("{v}+x"),
            format!("{name_id}+{}", B64.encode(&B64.decode(b64).unwrap()[..20])),
            format!("{name_id}+{}", B64.encode(other_alg)),
            format!("{name_id}+%%%"),
            v.replacen('+', "+zz", 1),
        ] {
            assert!(VerifierKey::parse(&bad).is_err(), "{bad}");
        }
        assert!(valid_origin("sandpit/x").is_ok() && valid_origin("a\nb").is_err() && valid_origin("").is_err());
    }
}
