//! A chunked slab with generational ids.
//!
//! Entries live in fixed-size chunks so that growing never moves existing entries (no large
//! reallocation pause at a million nodes) and the unused tail is at most one chunk. Freed slots
//! are reused; each slot's generation is bumped on free, so an [`Id`] kept across a removal is
//! recognised as stale instead of silently naming the slot's next occupant.

use alloc::vec::Vec;

use crate::error::{XsError, XsResult};

/// "No entry" in a link field.
pub(crate) const NIL: u32 = u32::MAX;

const CHUNK_BITS: u32 = 10;
const CHUNK_LEN: usize = 1 << CHUNK_BITS;
const CHUNK_MASK: u32 = (1 << CHUNK_BITS) - 1;

/// A slot index plus the generation it had when the id was handed out.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub(crate) struct Id {
    pub(crate) index: u32,
    pub(crate) generation: u32,
}

/// How a slot stores its entry and generation. Most entries use [`Tagged`]; nodes, the
/// bulk of the store, keep the generation inside the node where it fits in padding, so that
/// a node slot is no larger than a node.
pub(crate) trait Slot {
    type Value;
    /// An empty slot of generation `generation`.
    fn vacant(generation: u32) -> Self;
    /// The slot's current generation.
    fn generation(&self) -> u32;
    /// Stores `value` in an empty slot, keeping the slot's generation.
    fn fill(&mut self, value: Self::Value);
    /// Takes the entry out, leaving the slot empty with its generation bumped.
    fn take(&mut self) -> Option<Self::Value>;
    fn get(&self) -> Option<&Self::Value>;
    fn get_mut(&mut self) -> Option<&mut Self::Value>;
}

/// A slot that keeps its generation beside an optional entry.
#[derive(Debug)]
pub(crate) struct Tagged<T> {
    generation: u32,
    value: Option<T>,
}

impl<T> Slot for Tagged<T> {
    type Value = T;

    fn vacant(generation: u32) -> Self {
        Tagged {
            generation,
            value: None,
        }
    }

    fn generation(&self) -> u32 {
        self.generation
    }

    fn fill(&mut self, value: T) {
        self.value = Some(value);
    }

    fn take(&mut self) -> Option<T> {
        let value = self.value.take()?;
        self.generation = self.generation.wrapping_add(1);
        Some(value)
    }

    fn get(&self) -> Option<&T> {
        self.value.as_ref()
    }

    fn get_mut(&mut self) -> Option<&mut T> {
        self.value.as_mut()
    }
}

/// The slab.
#[derive(Debug)]
pub(crate) struct Arena<S: Slot> {
    chunks: Vec<Vec<S>>,
    free: Vec<u32>,
    live: usize,
}

/// A slab of entries without their own generation field.
pub(crate) type Slab<T> = Arena<Tagged<T>>;

impl<S: Slot> Default for Arena<S> {
    fn default() -> Self {
        Arena {
            chunks: Vec::new(),
            free: Vec::new(),
            live: 0,
        }
    }
}

fn split(index: u32) -> (usize, usize) {
    (
        (index >> CHUNK_BITS) as usize,
        (index & CHUNK_MASK) as usize,
    )
}

impl<S: Slot> Arena<S> {
    fn slot(&self, index: u32) -> Option<&S> {
        let (chunk, offset) = split(index);
        self.chunks.get(chunk)?.get(offset)
    }

    fn slot_mut(&mut self, index: u32) -> Option<&mut S> {
        let (chunk, offset) = split(index);
        self.chunks.get_mut(chunk)?.get_mut(offset)
    }

    /// Stores `value` and returns its id. `ENOMEM` once `u32` indices run out.
    pub(crate) fn insert(&mut self, value: S::Value) -> XsResult<Id> {
        if let Some(index) = self.free.pop() {
            let slot = self.slot_mut(index).ok_or(XsError::Io)?;
            slot.fill(value);
            let generation = slot.generation();
            self.live = self.live.saturating_add(1);
            return Ok(Id { index, generation });
        }
        let needs_chunk = self.chunks.last().is_none_or(|c| c.len() >= CHUNK_LEN);
        if needs_chunk {
            self.chunks.push(Vec::with_capacity(CHUNK_LEN));
        }
        let chunk_index = self.chunks.len().saturating_sub(1);
        let chunk = self.chunks.last_mut().ok_or(XsError::NoMem)?;
        let index = chunk_index
            .checked_mul(CHUNK_LEN)
            .and_then(|base| base.checked_add(chunk.len()))
            .and_then(|i| u32::try_from(i).ok())
            .filter(|&i| i != NIL)
            .ok_or(XsError::NoMem)?;
        let mut slot = S::vacant(0);
        slot.fill(value);
        chunk.push(slot);
        self.live = self.live.saturating_add(1);
        Ok(Id {
            index,
            generation: 0,
        })
    }

    /// Removes and returns the entry at `index`, making every id for it stale.
    pub(crate) fn remove(&mut self, index: u32) -> Option<S::Value> {
        let value = self.slot_mut(index)?.take()?;
        self.free.push(index);
        self.live = self.live.saturating_sub(1);
        Some(value)
    }

    /// The entry at `index`, if occupied.
    pub(crate) fn get(&self, index: u32) -> Option<&S::Value> {
        self.slot(index)?.get()
    }

    /// The entry at `index`, if occupied.
    pub(crate) fn get_mut(&mut self, index: u32) -> Option<&mut S::Value> {
        self.slot_mut(index)?.get_mut()
    }

    /// The entry named by `id`, if it is still the same entry.
    pub(crate) fn get_id(&self, id: Id) -> Option<&S::Value> {
        let slot = self.slot(id.index)?;
        if slot.generation() != id.generation {
            return None;
        }
        slot.get()
    }

    /// The entry named by `id`, if it is still the same entry.
    pub(crate) fn get_id_mut(&mut self, id: Id) -> Option<&mut S::Value> {
        let slot = self.slot_mut(id.index)?;
        if slot.generation() != id.generation {
            return None;
        }
        slot.get_mut()
    }

    /// The current id of the entry at `index`, if occupied.
    pub(crate) fn id_at(&self, index: u32) -> Option<Id> {
        let slot = self.slot(index)?;
        slot.get().map(|_| Id {
            index,
            generation: slot.generation(),
        })
    }

    /// Number of occupied slots.
    pub(crate) fn len(&self) -> usize {
        self.live
    }

    /// Heap bytes held by the slab itself (slots and free list), not by the entries' own
    /// allocations.
    pub(crate) fn heap_bytes(&self) -> usize {
        let slots = self
            .chunks
            .iter()
            .map(|c| c.capacity())
            .fold(0usize, usize::saturating_add);
        slots
            .saturating_mul(core::mem::size_of::<S>())
            .saturating_add(
                self.free
                    .capacity()
                    .saturating_mul(core::mem::size_of::<u32>()),
            )
            .saturating_add(
                self.chunks
                    .capacity()
                    .saturating_mul(core::mem::size_of::<Vec<S>>()),
            )
    }

    /// Occupied entries with their indices.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u32, &S::Value)> {
        self.chunks.iter().enumerate().flat_map(|(c, chunk)| {
            chunk.iter().enumerate().filter_map(move |(o, slot)| {
                let index = c
                    .checked_mul(CHUNK_LEN)
                    .and_then(|b| b.checked_add(o))
                    .and_then(|i| u32::try_from(i).ok())?;
                slot.get().map(|v| (index, v))
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_go_stale_on_remove_and_slots_are_reused() {
        let mut a: Slab<i32> = Arena::default();
        let x = a.insert(1).unwrap();
        let y = a.insert(2).unwrap();
        assert_eq!(a.get_id(x), Some(&1));
        assert_eq!(a.remove(x.index), Some(1));
        assert_eq!(a.get_id(x), None);
        assert_eq!(a.remove(x.index), None);
        let z = a.insert(3).unwrap();
        assert_eq!(z.index, x.index);
        assert_ne!(z.generation, x.generation);
        assert_eq!(a.get_id(z), Some(&3));
        assert_eq!(a.get_id(y), Some(&2));
        assert_eq!(a.len(), 2);
        assert_eq!(a.id_at(z.index), Some(z));
    }

    #[test]
    fn spans_chunks() {
        let mut a: Slab<u32> = Arena::default();
        let ids: Vec<Id> = (0..3000u32).map(|i| a.insert(i).unwrap()).collect();
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(a.get_id(*id), Some(&(i as u32)));
        }
        assert_eq!(a.iter().count(), 3000);
        assert!(a.heap_bytes() >= 3000 * core::mem::size_of::<Tagged<u32>>());
    }
}
