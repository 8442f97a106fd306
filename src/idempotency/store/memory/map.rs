//! A shard's records by key, each found with a hash computed once per store call: the same
//! keyed SipHash picks the shard and the slot, and is kept in the slot so that growing the
//! table hashes no key again.

use std::sync::Arc;

use hashbrown::HashTable;

use super::Record;

/// What a slot of the table takes: the slot and its control byte.
pub(super) const SLOT_BYTES: usize = std::mem::size_of::<Slot>() + 1;

/// A record with its key and the key's hash.
struct Slot {
    hash: u64,
    key: Arc<str>,
    record: Record,
}

#[derive(Default)]
pub(super) struct Map {
    table: HashTable<Slot>,
}

impl Map {
    fn matching(hash: u64, key: &str) -> impl Fn(&Slot) -> bool + '_ {
        move |s| s.hash == hash && *s.key == *key
    }

    pub(super) fn len(&self) -> usize {
        self.table.len()
    }

    pub(super) fn get(&self, hash: u64, key: &str) -> Option<&Record> {
        self.get_key_value(hash, key).map(|(_, r)| r)
    }

    /// The record and the map's own allocation of its key.
    pub(super) fn get_mut(&mut self, hash: u64, key: &str) -> Option<(&Arc<str>, &mut Record)> {
        self.table
            .find_mut(hash, Self::matching(hash, key))
            .map(|s| (&s.key, &mut s.record))
    }

    /// The record and the map's own allocation of its key.
    pub(super) fn get_key_value(&self, hash: u64, key: &str) -> Option<(&Arc<str>, &Record)> {
        self.table
            .find(hash, Self::matching(hash, key))
            .map(|s| (&s.key, &s.record))
    }

    pub(super) fn remove(&mut self, hash: u64, key: &str) -> Option<Record> {
        let found = self
            .table
            .find_entry(hash, Self::matching(hash, key))
            .ok()?;
        Some(found.remove().0.record)
    }

    /// Puts `record` under `key`, replacing a record held under it.
    pub(super) fn insert(&mut self, hash: u64, key: Arc<str>, record: Record) {
        match self
            .table
            .entry(hash, Self::matching(hash, &key), |s| s.hash)
        {
            hashbrown::hash_table::Entry::Occupied(mut o) => o.get_mut().record = record,
            hashbrown::hash_table::Entry::Vacant(v) => {
                v.insert(Slot { hash, key, record });
            }
        }
    }

    /// Keeps the records `keep` says yes to (given each key's hash and record).
    pub(super) fn retain(&mut self, mut keep: impl FnMut(u64, &Record) -> bool) {
        self.table.retain(|s| keep(s.hash, &s.record));
    }
}
