//! The first error this consumer saw per message id, kept until the message is settled, in a
//! bounded map (the oldest entries go first): a dead letter carries it beside the last error.

use std::{
    collections::{HashMap, VecDeque},
    sync::Mutex,
};

/// The most ids remembered.
pub(crate) const CAPACITY: usize = 10_000;

/// An error kept at most this long (bytes, cut at a character boundary).
const MAX_ERROR_LEN: usize = 1_000;

#[derive(Default)]
pub(crate) struct FirstErrors {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// id -> (insertion number, first error).
    map: HashMap<String, (u64, String)>,
    /// Insertion order; entries whose number no longer matches the map's are stale.
    order: VecDeque<(u64, String)>,
    next: u64,
}

impl FirstErrors {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Remembers `error` for `id` unless an earlier one is kept.
    pub(crate) fn remember(&self, id: &str, error: &str) {
        let mut inner = self.lock();
        if inner.map.contains_key(id) {
            return;
        }
        let n = inner.next;
        inner.next += 1;
        inner.map.insert(id.to_owned(), (n, cut(error).to_owned()));
        inner.order.push_back((n, id.to_owned()));
        while inner.map.len() > CAPACITY {
            let Some((n, old)) = inner.order.pop_front() else {
                break;
            };
            if inner.map.get(&old).is_some_and(|(m, _)| *m == n) {
                inner.map.remove(&old);
            }
        }
        // Stale entries (settled ids) must not grow the queue without bound.
        if inner.order.len() > 2 * CAPACITY.max(inner.map.len()) {
            let Inner { map, order, .. } = &mut *inner;
            order.retain(|(n, id)| map.get(id).is_some_and(|(m, _)| m == n));
        }
    }

    /// Forgets `id`, returning its first error.
    pub(crate) fn take(&self, id: &str) -> Option<String> {
        self.lock().map.remove(id).map(|(_, e)| e)
    }

    #[cfg(test)]
    fn len(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.map.len(), inner.order.len())
    }
}

fn cut(s: &str) -> &str {
    crate::message::cut(s, MAX_ERROR_LEN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_first_and_stays_bounded() {
        let f = FirstErrors::default();
        f.remember("a", "first");
        f.remember("a", "second");
        assert_eq!(f.take("a").as_deref(), Some("first"));
        assert_eq!(f.take("a"), None);
        for i in 0..CAPACITY + 10 {
            f.remember(&i.to_string(), "e");
        }
        assert_eq!(f.len().0, CAPACITY);
        assert_eq!(f.take("0"), None, "the oldest went first");
        assert!(f.take(&(CAPACITY + 9).to_string()).is_some());
        // Settling many ids leaves no unbounded queue behind.
        for i in 0..5 * CAPACITY {
            let id = format!("x{i}");
            f.remember(&id, "e");
            f.take(&id);
        }
        assert!(f.len().1 <= 2 * CAPACITY + 1);
        assert_eq!(cut(&"é".repeat(700)).len(), 1000);
    }
}
