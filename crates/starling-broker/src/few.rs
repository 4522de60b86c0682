//! [`FewMap`]: a map that is usually tiny. A route-table node's children by level and a
//! session's subscriptions by filter are one or a few entries for nearly every node and
//! session (a device's own topic, its one or two filters), and there are a million of them in a
//! large deployment: those entries are kept in a vector with room for exactly what it holds
//! and found by comparing keys, which costs less per lookup than hashing and far less memory
//! than a hash table's first allocation. Past [`FEW`] entries the map becomes a hash map
//! (boxed, so the small form stays the size of a vector), whose keyed hasher keeps a client
//! that chooses the keys (filters, topic levels) from making lookups slow.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};

/// Entries up to this many stay in the vector.
pub(crate) const FEW: usize = 8;

/// A map kept as a vector of at most [`FEW`] entries, then as a hash map.
#[derive(Clone, Debug)]
pub(crate) enum FewMap<K, V, S> {
    /// Up to [`FEW`] entries, in no particular order.
    Few(Vec<(K, V)>),
    /// More: never goes back to the vector (a map that was large once may be again). Boxed
    /// on purpose: the hash map's own fields would double the size of every small map.
    #[allow(clippy::box_collection)]
    Many(Box<HashMap<K, V, S>>),
}

impl<K, V, S> Default for FewMap<K, V, S> {
    fn default() -> Self {
        Self::Few(Vec::new())
    }
}

impl<K: Eq + Hash, V, S: BuildHasher + Default> FewMap<K, V, S> {
    /// The value for `key`.
    #[inline]
    pub(crate) fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        match self {
            Self::Few(v) => v.iter().find(|(k, _)| k.borrow() == key).map(|(_, x)| x),
            Self::Many(m) => m.get(key),
        }
    }

    /// The value for `key`, to change.
    pub(crate) fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        match self {
            Self::Few(v) => v
                .iter_mut()
                .find(|(k, _)| (*k).borrow() == key)
                .map(|(_, x)| x),
            Self::Many(m) => m.get_mut(key),
        }
    }

    /// Whether `key` has a value.
    pub(crate) fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        self.get(key).is_some()
    }

    /// Sets `key`'s value; the value it had.
    pub(crate) fn insert(&mut self, key: K, value: V) -> Option<V> {
        if let Some(old) = self.get_mut(&key) {
            return Some(std::mem::replace(old, value));
        }
        self.push_new(key, value);
        None
    }

    /// The value for `key`, made by `make` (under `owned()`, the key's own copy) if there is
    /// none; always `Some`.
    pub(crate) fn get_or_insert_with<Q>(
        &mut self,
        key: &Q,
        owned: impl FnOnce() -> K,
        make: impl FnOnce() -> V,
    ) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        if !self.contains_key(key) {
            self.push_new(owned(), make());
        }
        self.get_mut(key)
    }

    /// Adds an entry whose key is not in the map.
    fn push_new(&mut self, key: K, value: V) {
        match self {
            Self::Few(v) if v.len() < FEW => {
                // Room for exactly one more: most of these maps never get a second entry.
                v.reserve_exact(1);
                v.push((key, value));
            }
            Self::Few(v) => {
                let mut m: HashMap<K, V, S> =
                    HashMap::with_capacity_and_hasher(FEW * 2, S::default());
                m.extend(std::mem::take(v));
                m.insert(key, value);
                *self = Self::Many(Box::new(m));
            }
            Self::Many(m) => {
                m.insert(key, value);
            }
        }
    }

    /// Removes `key`'s entry; its value.
    pub(crate) fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        match self {
            Self::Few(v) => {
                let i = v.iter().position(|(k, _)| (*k).borrow() == key)?;
                let (_, value) = v.swap_remove(i);
                if v.is_empty() {
                    // Nothing kept for a map that was emptied.
                    *v = Vec::new();
                }
                Some(value)
            }
            Self::Many(m) => m.remove(key),
        }
    }
}

impl<K, V, S> FewMap<K, V, S> {
    /// Number of entries.
    pub(crate) fn len(&self) -> usize {
        match self {
            Self::Few(v) => v.len(),
            Self::Many(m) => m.len(),
        }
    }

    /// Whether it has no entry.
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every entry, in no particular order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        let (few, many) = match self {
            Self::Few(v) => (Some(v.iter().map(|(k, x)| (k, x))), None),
            Self::Many(m) => (None, Some(m.iter())),
        };
        few.into_iter().flatten().chain(many.into_iter().flatten())
    }

    /// Every key, in no particular order.
    pub(crate) fn keys(&self) -> impl Iterator<Item = &K> {
        self.iter().map(|(k, _)| k)
    }

    /// Takes every value out, leaving the map empty (and without memory).
    pub(crate) fn drain_values(&mut self) -> Vec<V> {
        match std::mem::take(self) {
            Self::Few(v) => v.into_iter().map(|(_, x)| x).collect(),
            Self::Many(m) => m.into_values().collect(),
        }
    }

    /// Removes every entry and gives its memory back.
    pub(crate) fn clear(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::hash_map::RandomState;

    use super::*;

    type Map = FewMap<Box<[u8]>, u32, RandomState>;

    fn key(i: u32) -> Box<[u8]> {
        format!("l{i}").into_bytes().into()
    }

    #[test]
    fn few_then_many_with_the_same_answers() {
        let mut m = Map::default();
        for i in 0..20u32 {
            assert_eq!(m.insert(key(i), i), None);
            assert_eq!(m.len(), i as usize + 1);
            assert_eq!(matches!(m, FewMap::Few(_)), i < FEW as u32);
        }
        for i in 0..20u32 {
            assert_eq!(m.get(&*key(i)), Some(&i));
        }
        assert_eq!(m.insert(key(3), 103), Some(3));
        *m.get_or_insert_with(b"l4".as_slice(), || key(4), || 0)
            .unwrap() += 100;
        assert_eq!(m.get(b"l4".as_slice()), Some(&104));
        assert_eq!(
            *m.get_or_insert_with(b"new".as_slice(), || b"new".as_slice().into(), || 7)
                .unwrap(),
            7
        );
        assert_eq!(m.remove(b"l3".as_slice()), Some(103));
        assert_eq!(m.get(b"l3".as_slice()), None);
        assert!(!m.contains_key(b"l3".as_slice()));
        let mut keys: Vec<_> = m.keys().cloned().collect();
        keys.sort();
        assert_eq!(keys.len(), 20);
        assert_eq!(m.iter().count(), 20);
        assert_eq!(m.drain_values().len(), 20);
        assert!(m.is_empty());
        assert!(matches!(m, FewMap::Few(ref v) if v.capacity() == 0));
    }

    #[test]
    fn a_small_map_holds_room_for_what_it_has_only() {
        let mut m = Map::default();
        assert!(matches!(m, FewMap::Few(ref v) if v.capacity() == 0));
        m.insert(key(1), 1);
        // A vector's first push would make room for four.
        assert!(matches!(m, FewMap::Few(ref v) if v.capacity() == 1));
        m.insert(key(2), 2);
        assert!(matches!(m, FewMap::Few(ref v) if v.capacity() == 2));
        assert_eq!(m.remove(b"l1".as_slice()), Some(1));
        assert_eq!(m.remove(b"l1".as_slice()), None);
        assert_eq!(m.remove(b"l2".as_slice()), Some(2));
        assert!(
            matches!(m, FewMap::Few(ref v) if v.capacity() == 0),
            "emptied: no memory kept"
        );
        m.insert(key(5), 5);
        m.clear();
        assert!(m.is_empty() && matches!(m, FewMap::Few(ref v) if v.capacity() == 0));
        // The small form is the size of a vector.
        assert_eq!(size_of::<Map>(), size_of::<Vec<(Box<[u8]>, u32)>>());
    }
}
