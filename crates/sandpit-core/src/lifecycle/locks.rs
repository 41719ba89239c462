//! One async lock per sandbox id, so that create, extend, delete, expiry and
//! reconcile never act on the same sandbox at once while unrelated sandboxes
//! proceed in parallel.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::OwnedMutexGuard;

/// Prune dead entries once the map holds this many.
const PRUNE_AT: usize = 1024;

#[derive(Default)]
pub struct KeyedLocks {
    map: Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
}

impl KeyedLocks {
    pub async fn lock(&self, key: &str) -> OwnedMutexGuard<()> {
        self.entry(key).lock_owned().await
    }

    /// The lock of `key` if nobody holds it, without waiting.
    pub fn try_lock(&self, key: &str) -> Option<OwnedMutexGuard<()>> {
        self.entry(key).try_lock_owned().ok()
    }

    fn entry(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= PRUNE_AT {
            map.retain(|_, w| w.strong_count() > 0);
        }
        match map.get(key).and_then(Weak::upgrade) {
            Some(l) => l,
            None => {
                let l = Arc::new(tokio::sync::Mutex::new(()));
                map.insert(key.to_string(), Arc::downgrade(&l));
                l
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn same_key_serialises_other_keys_do_not() {
        let locks = Arc::new(KeyedLocks::default());
        let g = locks.lock("a").await;
        let _other = tokio::time::timeout(Duration::from_millis(50), locks.lock("b")).await.expect("b is free");
        assert!(tokio::time::timeout(Duration::from_millis(50), locks.lock("a")).await.is_err());
        drop(g);
        tokio::time::timeout(Duration::from_millis(50), locks.lock("a")).await.expect("a is free again");
    }

    #[tokio::test]
    async fn try_lock_takes_only_a_free_lock() {
        let locks = KeyedLocks::default();
        let g = locks.try_lock("a").expect("a is free");
        assert!(locks.try_lock("a").is_none(), "a is held");
        assert!(locks.try_lock("b").is_some());
        drop(g);
        assert!(locks.try_lock("a").is_some(), "a is free again");
    }
}
