//! The flow table: which TCP connection a segment belongs to, in which direction.
//!
//! Bounded: it holds at most `capacity` flows. Slots are created lazily and reused, so a
//! worker in steady state allocates nothing when flows come and go. The slot payload is
//! generic so the table is tested without sockets.

use std::fmt;
use std::hash::BuildHasher;
use std::net::SocketAddr;

use foldhash::fast::RandomState;
use hashbrown::HashTable;

/// A TCP connection as the appliance sees it: who opened it and to whom.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub client: SocketAddr,
    pub server: SocketAddr,
}

impl FlowKey {
    /// The same connection seen from the other end.
    fn reversed(self) -> FlowKey {
        FlowKey {
            client: self.server,
            server: self.client,
        }
    }
}

impl fmt::Display for FlowKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {}", self.client, self.server)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    ClientToServer,
    ServerToClient,
}

/// A handle to a slot; the generation makes a handle to a reused slot invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowId {
    pub index: u32,
    pub generation: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableFull {
    pub capacity: usize,
}

impl fmt::Display for TableFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "flow table full ({} flows)", self.capacity)
    }
}

struct Slot<T> {
    key: Option<FlowKey>,
    generation: u32,
    value: T,
}

pub struct FlowTable<T> {
    /// Each flow under both of its keys (as sent by the client, and by the server), so a
    /// segment either way is found with one hash and one probe. An entry is the slot's
    /// number and the key's direction (`slot << 1 | 1` for server to client); the key
    /// itself lives once, in the slot. Four bytes an entry instead of 72: the index is
    /// reserved for `capacity` flows up front, and key-sized entries scattered by the hash
    /// made every one of its pages resident (about 2.4 KB per flow at 2,000 of 16,384).
    index: HashTable<u32>,
    hasher: RandomState,
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
    capacity: usize,
}

fn entry(index: u32, direction: Direction) -> u32 {
    index << 1 | u32::from(direction == Direction::ServerToClient)
}

fn direction_of(entry: u32) -> Direction {
    if entry & 1 == 1 {
        Direction::ServerToClient
    } else {
        Direction::ClientToServer
    }
}

impl<T> FlowTable<T> {
    pub fn with_capacity(capacity: usize) -> Self {
        FlowTable {
            index: HashTable::with_capacity(2 * capacity),
            hasher: RandomState::default(),
            slots: Vec::with_capacity(capacity),
            free: Vec::with_capacity(capacity),
            capacity,
        }
    }

    /// The key an index entry stands for: its slot's key, seen from its direction.
    fn key_of_entry(slots: &[Slot<T>], entry: u32) -> Option<FlowKey> {
        let key = slots[(entry >> 1) as usize].key?;
        Some(match direction_of(entry) {
            Direction::ClientToServer => key,
            Direction::ServerToClient => key.reversed(),
        })
    }

    fn find(&self, seen: &FlowKey) -> Option<u32> {
        let hash = self.hasher.hash_one(seen);
        self.index
            .find(hash, |&e| Self::key_of_entry(&self.slots, e).as_ref() == Some(seen))
            .copied()
    }

    fn add_entry(&mut self, seen: FlowKey, entry: u32) {
        let hash = self.hasher.hash_one(seen);
        let (hasher, slots) = (&self.hasher, &self.slots);
        // Rehashing (never, below capacity) re-derives each entry's key from its slot.
        self.index.insert_unique(hash, entry, |&e| {
            Self::key_of_entry(slots, e).map_or(0, |k| hasher.hash_one(k))
        });
    }

    fn remove_entry(&mut self, seen: FlowKey) {
        let hash = self.hasher.hash_one(seen);
        let slots = &self.slots;
        if let Ok(found) = self
            .index
            .find_entry(hash, |&e| Self::key_of_entry(slots, e) == Some(seen))
        {
            found.remove();
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn len(&self) -> usize {
        self.index.len() / 2
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Finds the flow a segment from `src` to `dst` belongs to, and its direction.
    pub fn lookup(&self, src: SocketAddr, dst: SocketAddr) -> Option<(FlowId, Direction)> {
        let seen = FlowKey {
            client: src,
            server: dst,
        };
        self.find(&seen).map(|e| (self.id_of(e >> 1), direction_of(e)))
    }

    fn id_of(&self, index: u32) -> FlowId {
        FlowId {
            index,
            generation: self.slots[index as usize].generation,
        }
    }

    /// Adds a flow. A reused slot hands back its previous value for the caller to reset;
    /// `create` builds a value only when a new slot is needed.
    pub fn insert(&mut self, key: FlowKey, create: impl FnOnce() -> T) -> Result<(FlowId, &mut T), TableFull> {
        // Callers look a segment up before inserting its flow, so neither key is taken.
        debug_assert!(
            self.find(&key).is_none() && self.find(&key.reversed()).is_none(),
            "flow {key} inserted twice"
        );
        let index = if let Some(i) = self.free.pop() {
            i
        } else if self.slots.len() < self.capacity {
            self.slots.push(Slot {
                key: None,
                generation: 0,
                value: create(),
            });
            (self.slots.len() - 1) as u32
        } else {
            return Err(TableFull {
                capacity: self.capacity,
            });
        };
        self.slots[index as usize].key = Some(key);
        self.add_entry(key, entry(index, Direction::ClientToServer));
        self.add_entry(key.reversed(), entry(index, Direction::ServerToClient));
        let slot = &mut self.slots[index as usize];
        Ok((
            FlowId {
                index,
                generation: slot.generation,
            },
            &mut slot.value,
        ))
    }

    pub fn get_mut(&mut self, id: FlowId) -> Option<&mut T> {
        let slot = self.slots.get_mut(id.index as usize)?;
        (slot.key.is_some() && slot.generation == id.generation).then_some(&mut slot.value)
    }

    pub fn key(&self, id: FlowId) -> Option<FlowKey> {
        let slot = self.slots.get(id.index as usize)?;
        if slot.generation == id.generation {
            slot.key
        } else {
            None
        }
    }

    /// Removes a flow; its slot (and value) is kept for reuse.
    pub fn remove(&mut self, id: FlowId) -> bool {
        let Some(slot) = self.slots.get_mut(id.index as usize) else {
            return false;
        };
        if slot.generation != id.generation {
            return false;
        }
        let Some(key) = slot.key else {
            return false;
        };
        slot.generation = slot.generation.wrapping_add(1);
        // The entries are found through the slot's key: remove them before it goes.
        self.remove_entry(key);
        self.remove_entry(key.reversed());
        self.slots[id.index as usize].key = None;
        self.free.push(id.index);
        true
    }

    /// Live flows, for status queries and shutdown.
    pub fn iter(&self) -> impl Iterator<Item = (FlowId, FlowKey, &T)> {
        self.slots.iter().enumerate().filter_map(|(i, s)| {
            s.key.map(|k| {
                (
                    FlowId {
                        index: i as u32,
                        generation: s.generation,
                    },
                    k,
                    &s.value,
                )
            })
        })
    }

    /// Live flows, to change in place (timers' sweeps).
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (FlowId, &mut T)> {
        self.slots
            .iter_mut()
            .enumerate()
            .filter(|(_, s)| s.key.is_some())
            .map(|(i, s)| {
                (
                    FlowId {
                        index: i as u32,
                        generation: s.generation,
                    },
                    &mut s.value,
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn key(c: &str, s: &str) -> FlowKey {
        FlowKey {
            client: addr(c),
            server: addr(s),
        }
    }

    #[test]
    fn finds_both_directions() {
        let mut t = FlowTable::with_capacity(4);
        let (id, _) = t.insert(key("198.18.0.1:40000", "198.18.0.2:443"), || 0u32).unwrap();
        assert_eq!(
            t.lookup(addr("198.18.0.1:40000"), addr("198.18.0.2:443")),
            Some((id, Direction::ClientToServer))
        );
        assert_eq!(
            t.lookup(addr("198.18.0.2:443"), addr("198.18.0.1:40000")),
            Some((id, Direction::ServerToClient))
        );
        assert_eq!(t.lookup(addr("198.18.0.1:40001"), addr("198.18.0.2:443")), None);
        assert_eq!(t.lookup(addr("[2001:db8::1]:40000"), addr("[2001:db8::2]:443")), None);
    }

    #[test]
    fn is_bounded_and_reuses_slots() {
        let mut t = FlowTable::with_capacity(2);
        let mut created = 0;
        let (a, _) = t
            .insert(key("1.1.1.1:1", "2.2.2.2:443"), || {
                created += 1;
                0u8
            })
            .unwrap();
        t.insert(key("1.1.1.1:2", "2.2.2.2:443"), || {
            created += 1;
            0u8
        })
        .unwrap();
        assert_eq!(
            t.insert(key("1.1.1.1:3", "2.2.2.2:443"), || 0u8).unwrap_err(),
            TableFull { capacity: 2 }
        );
        *t.get_mut(a).unwrap() = 7;
        assert!(t.remove(a));
        assert!(!t.remove(a), "a stale handle removes nothing");
        assert!(t.get_mut(a).is_none(), "a stale handle reads nothing");
        let (c, value) = t
            .insert(key("1.1.1.1:3", "2.2.2.2:443"), || unreachable!("slot is reused"))
            .unwrap();
        assert_eq!(*value, 7, "the reused slot hands back its old value to reset");
        assert_eq!(c.index, a.index);
        assert_ne!(c.generation, a.generation);
        assert_eq!(created, 2);
        assert_eq!(t.len(), 2);
        assert_eq!(t.iter().count(), 2);
    }

    #[test]
    fn key_of_removed_flow_is_gone() {
        let mut t = FlowTable::with_capacity(1);
        let k = key("[2001:db8::1]:5", "[2001:db8::2]:443");
        let (id, _) = t.insert(k, || ()).unwrap();
        assert_eq!(t.key(id), Some(k));
        t.remove(id);
        assert_eq!(t.key(id), None);
        assert!(t.is_empty());
        // Both of its keys are gone.
        assert_eq!(t.lookup(k.client, k.server), None);
        assert_eq!(t.lookup(k.server, k.client), None);
    }
}
