//! A trie node's children by level name, shared by the subscription index
//! (`trie.rs`) and the retained store (`retained.rs`). PERF: most nodes of a
//! large index or store have one child (`site/area7/dev123456/temp`: the
//! device level), where a hash table's smallest allocation holds 4 entries
//! plus control bytes; up to `SMALL_MAX` children live in an exactly sized
//! vector instead, scanned linearly.

use hashbrown::HashMap;

/// More children than this and a node switches to a hash table.
const SMALL_MAX: usize = 8;

#[derive(Debug)]
pub(crate) enum Children<N> {
    Small(Vec<(Box<str>, N)>),
    Map(HashMap<Box<str>, N>),
}

impl<N> Default for Children<N> {
    fn default() -> Self {
        Children::Small(Vec::new())
    }
}

impl<N> Children<N> {
    pub(crate) fn len(&self) -> usize {
        match self {
            Children::Small(v) => v.len(),
            Children::Map(m) => m.len(),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    #[inline]
    pub(crate) fn get(&self, name: &str) -> Option<&N> {
        match self {
            Children::Small(v) => v.iter().find(|(n, _)| &**n == name).map(|(_, c)| c),
            Children::Map(m) => m.get(name),
        }
    }

    pub(crate) fn get_mut(&mut self, name: &str) -> Option<&mut N> {
        match self {
            Children::Small(v) => v.iter_mut().find(|(n, _)| &**n == name).map(|(_, c)| c),
            Children::Map(m) => m.get_mut(name),
        }
    }

    /// The child `name`, made empty if missing.
    pub(crate) fn get_or_insert(&mut self, name: &str) -> &mut N
    where
        N: Default,
    {
        if let Children::Small(v) = self {
            if v.len() >= SMALL_MAX && !v.iter().any(|(n, _)| &**n == name) {
                let map: HashMap<Box<str>, N> = std::mem::take(v).into_iter().collect();
                *self = Children::Map(map);
            }
        }
        match self {
            Children::Small(v) => {
                let i = match v.iter().position(|(n, _)| &**n == name) {
                    Some(i) => i,
                    None => {
                        // Exact growth: the point is not to over-allocate.
                        v.reserve_exact(1);
                        v.push((name.into(), N::default()));
                        v.len() - 1
                    }
                };
                &mut v[i].1
            }
            // PERF: `entry_ref` allocates the key only when the child is new.
            Children::Map(m) => m.entry_ref(name).or_default(),
        }
    }

    /// Removes the child `name`, giving back memory as the node shrinks.
    pub(crate) fn remove(&mut self, name: &str) {
        match self {
            Children::Small(v) => {
                if let Some(i) = v.iter().position(|(n, _)| &**n == name) {
                    v.swap_remove(i);
                    v.shrink_to_fit();
                }
            }
            Children::Map(m) => {
                m.remove(name);
                if m.len() <= SMALL_MAX / 2 {
                    let small: Vec<_> = m.drain().collect();
                    *self = Children::Small(small);
                } else if m.capacity() > 4 * m.len() {
                    m.shrink_to_fit();
                }
            }
        }
    }

    pub(crate) fn iter(&self) -> Box<dyn Iterator<Item = (&str, &N)> + '_> {
        match self {
            Children::Small(v) => Box::new(v.iter().map(|(n, c)| (&**n, c))),
            Children::Map(m) => Box::new(m.iter().map(|(n, c)| (&**n, c))),
        }
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &N> {
        self.iter().map(|(_, c)| c)
    }

    /// Every child, leaving none (for iterative drops).
    pub(crate) fn take_all(&mut self) -> Vec<N> {
        match std::mem::take(self) {
            Children::Small(v) => v.into_iter().map(|(_, c)| c).collect(),
            Children::Map(m) => m.into_values().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_into_a_map_and_shrinks_back_keeping_every_child() {
        let mut c: Children<u32> = Children::default();
        for i in 0..20u32 {
            *c.get_or_insert(&i.to_string()) = i;
        }
        assert!(matches!(c, Children::Map(_)));
        for i in 0..20u32 {
            assert_eq!(c.get(&i.to_string()), Some(&i));
        }
        for i in 0..17u32 {
            c.remove(&i.to_string());
        }
        assert!(matches!(c, Children::Small(_)));
        assert_eq!(c.len(), 3);
        assert_eq!(c.get("18"), Some(&18));
        assert_eq!(c.get("3"), None);
        let mut all = c.take_all();
        all.sort_unstable();
        assert_eq!(all, [17, 18, 19]);
        assert!(c.is_empty());
    }
}
