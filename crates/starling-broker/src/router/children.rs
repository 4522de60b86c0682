//! The children of a trie node, by topic level. Most nodes have a handful: those are kept in a
//! small vector and found by comparing bytes, which costs less per publish than hashing the
//! level; a node with many children (a level fanning out to many devices) switches to a hash
//! map, whose keyed hasher also keeps a subscriber choosing level names from making lookups
//! slow.

use std::collections::HashMap;

/// Children up to this many stay in the vector.
const FEW: usize = 8;

/// A node's children by level.
#[derive(Debug)]
pub(super) enum Children<N> {
    Few(Vec<(Box<[u8]>, N)>),
    Many(HashMap<Box<[u8]>, N>),
}

impl<N> Default for Children<N> {
    fn default() -> Self {
        Self::Few(Vec::new())
    }
}

impl<N: Default> Children<N> {
    /// The child for `level`, made if there is none (always `Some`).
    pub(super) fn get_or_default(&mut self, level: &[u8]) -> Option<&mut N> {
        if self.get(level).is_none() {
            match self {
                Self::Few(v) if v.len() < FEW => v.push((level.into(), N::default())),
                Self::Few(v) => {
                    let mut m: HashMap<_, _> = std::mem::take(v).into_iter().collect();
                    m.insert(level.into(), N::default());
                    *self = Self::Many(m);
                }
                Self::Many(m) => {
                    m.insert(level.into(), N::default());
                }
            }
        }
        self.get_mut(level)
    }
}

impl<N> Children<N> {
    pub(super) fn get(&self, level: &[u8]) -> Option<&N> {
        match self {
            Self::Few(v) => v.iter().find(|(k, _)| &**k == level).map(|(_, n)| n),
            Self::Many(m) => m.get(level),
        }
    }

    pub(super) fn get_mut(&mut self, level: &[u8]) -> Option<&mut N> {
        match self {
            Self::Few(v) => v.iter_mut().find(|(k, _)| &**k == level).map(|(_, n)| n),
            Self::Many(m) => m.get_mut(level),
        }
    }

    pub(super) fn remove(&mut self, level: &[u8]) -> Option<N> {
        match self {
            Self::Few(v) => {
                let i = v.iter().position(|(k, _)| &**k == level)?;
                Some(v.swap_remove(i).1)
            }
            Self::Many(m) => m.remove(level),
        }
    }

    pub(super) fn len(&self) -> usize {
        match self {
            Self::Few(v) => v.len(),
            Self::Many(m) => m.len(),
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes every child out.
    pub(super) fn drain(&mut self) -> Vec<N> {
        match std::mem::take(self) {
            Self::Few(v) => v.into_iter().map(|(_, n)| n).collect(),
            Self::Many(m) => m.into_values().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn few_then_many_with_the_same_answers() {
        let mut c: Children<u32> = Children::default();
        for i in 0..20u32 {
            *c.get_or_default(format!("l{i}").as_bytes()).unwrap() = i;
            assert_eq!(c.len(), i as usize + 1);
            assert_eq!(matches!(c, Children::Few(_)), i < FEW as u32);
        }
        for i in 0..20u32 {
            assert_eq!(c.get(format!("l{i}").as_bytes()), Some(&i));
        }
        *c.get_or_default(b"l3").unwrap() += 100;
        assert_eq!(c.get(b"l3"), Some(&103));
        assert_eq!(c.remove(b"l3"), Some(103));
        assert_eq!(c.get(b"l3"), None);
        assert_eq!(c.drain().len(), 19);
        assert!(c.is_empty());
    }
}
