//! Dashboard sessions: in memory (a restart signs everyone out), keyed by
//! the SHA-256 of the cookie's value so the table holds no usable secret,
//! bounded in number, each expiring a fixed time after sign-in.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sandpit_core::auth::Caller;
use sha2::{Digest, Sha256};

/// Sessions at once; past it, expired ones are dropped, then sign-ins refused.
const MAX_SESSIONS: usize = 10_000;

struct Session {
    caller: Caller,
    expires: Instant,
    /// Sent back by the sign-out form.
    csrf: String,
}

pub struct Sessions {
    ttl: Duration,
    open: Mutex<HashMap<[u8; 32], Session>>,
}

fn key(cookie: &str) -> [u8; 32] {
    Sha256::digest(cookie.as_bytes()).into()
}

fn random_hex<const N: usize>() -> String {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).expect("the OS random source");
    hex::encode(bytes)
}

impl Sessions {
    pub fn new(ttl: Duration) -> Sessions {
        Sessions { ttl, open: Mutex::new(HashMap::new()) }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// A new session for `caller`: the cookie value (256 random bits), or
    /// None when the table is full of live sessions.
    pub fn open(&self, caller: Caller) -> Option<String> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.len() >= MAX_SESSIONS {
            let now = Instant::now();
            open.retain(|_, s| s.expires > now);
            if open.len() >= MAX_SESSIONS {
                return None;
            }
        }
        let cookie = random_hex::<32>();
        open.insert(key(&cookie), Session { caller, expires: Instant::now() + self.ttl, csrf: random_hex::<16>() });
        Some(cookie)
    }

    /// The caller and sign-out token of a live session.
    pub fn get(&self, cookie: &str) -> Option<(Caller, String)> {
        let k = key(cookie);
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        match open.get(&k) {
            Some(s) if s.expires > Instant::now() => Some((s.caller.clone(), s.csrf.clone())),
            Some(_) => {
                open.remove(&k);
                None
            }
            None => None,
        }
    }

    pub fn close(&self, cookie: &str) {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).remove(&key(cookie));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller() -> Caller {
        Caller {
            name: "ada".into(),
            team: "alg".into(),
            roles: vec![],
            functions: vec![],
            role: None,
            source: String::new(),
        }
    }

    #[test]
    fn a_session_lives_until_it_expires_or_is_closed() {
        let s = Sessions::new(Duration::from_millis(50));
        let a = s.open(caller()).unwrap();
        let b = s.open(caller()).unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        assert_eq!(s.get(&a).unwrap().0.name, "ada");
        assert!(s.get("not-a-session").is_none());
        s.close(&a);
        assert!(s.get(&a).is_none() && s.get(&b).is_some());
        std::thread::sleep(Duration::from_millis(60));
        assert!(s.get(&b).is_none(), "expired");
    }
}
