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

#[derive(Debug)]
struct Slot<T> {
    generation: u32,
    value: Option<T>,
}

/// The slab.
#[derive(Debug)]
pub(crate) struct Arena<T> {
    chunks: Vec<Vec<Slot<T>>>,
    free: Vec<u32>,
    live: usize,
}

impl<T> Default for Arena<T> {
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

impl<T> Arena<T> {
    fn slot(&self, index: u32) -> Option<&Slot<T>> {
        let (chunk, offset) = split(index);
        self.chunks.get(chunk)?.get(offset)
    }

    fn slot_mut(&mut self, index: u32) -> Option<&mut Slot<T>> {
        let (chunk, offset) = split(index);
        self.chunks.get_mut(chunk)?.get_mut(offset)
    }

    /// Stores `value` and returns its id. `ENOMEM` once `u32` indices run out.
    pub(crate) fn insert(&mut self, value: T) -> XsResult<Id> {
        if let Some(index) = self.free.pop() {
            if let Some(slot) = self.slot_mut(index) {
                slot.value = Some(value);
                let generation = slot.generation;
                self.live = self.live.saturating_add(1);
                return Ok(Id { index, generation });
            }
            return Err(XsError::Io);
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
        chunk.push(Slot {
            generation: 0,
            value: Some(value),
        });
        self.live = self.live.saturating_add(1);
        Ok(Id {
            index,
            generation: 0,
        })
    }

    /// Removes and returns the entry at `index`, making every id for it stale.
    pub(crate) fn remove(&mut self, index: u32) -> Option<T> {
        let slot = self.slot_mut(index)?;
        let value = slot.value.take()?;
        slot.generation = slot.generation.wrapping_add(1);
        self.free.push(index);
        self.live = self.live.saturating_sub(1);
        Some(value)
    }

    /// The entry at `index`, if occupied.
    pub(crate) fn get(&self, index: u32) -> Option<&T> {
        self.slot(index)?.value.as_ref()
    }

    /// The entry at `index`, if occupied.
    pub(crate) fn get_mut(&mut self, index: u32) -> Option<&mut T> {
        self.slot_mut(index)?.value.as_mut()
    }

    /// The entry named by `id`, if it is still the same entry.
    pub(crate) fn get_id(&self, id: Id) -> Option<&T> {
        let slot = self.slot(id.index)?;
        if slot.generation != id.generation {
            return None;
        }
        slot.value.as_ref()
    }

    /// The entry named by `id`, if it is still the same entry.
    pub(crate) fn get_id_mut(&mut self, id: Id) -> Option<&mut T> {
        let slot = self.slot_mut(id.index)?;
        if slot.generation != id.generation {
            return None;
        }
        slot.value.as_mut()
    }

    /// The current id of the entry at `index`, if occupied.
    pub(crate) fn id_at(&self, index: u32) -> Option<Id> {
        let slot = self.slot(index)?;
        slot.value.as_ref().map(|_| Id {
            index,
            generation: slot.generation,
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
            .saturating_mul(core::mem::size_of::<Slot<T>>())
            .saturating_add(
                self.free
                    .capacity()
                    .saturating_mul(core::mem::size_of::<u32>()),
            )
            .saturating_add(
                self.chunks
                    .capacity()
                    .saturating_mul(core::mem::size_of::<Vec<Slot<T>>>()),
            )
    }

    /// Occupied entries with their indices.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u32, &T)> {
        self.chunks.iter().enumerate().flat_map(|(c, chunk)| {
            chunk.iter().enumerate().filter_map(move |(o, slot)| {
                let index = c
                    .checked_mul(CHUNK_LEN)
                    .and_then(|b| b.checked_add(o))
                    .and_then(|i| u32::try_from(i).ok())?;
                slot.value.as_ref().map(|v| (index, v))
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_go_stale_on_remove_and_slots_are_reused() {
        let mut a = Arena::default();
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
        let mut a = Arena::default();
        let ids: Vec<Id> = (0..3000u32).map(|i| a.insert(i).unwrap()).collect();
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(a.get_id(*id), Some(&(i as u32)));
        }
        assert_eq!(a.iter().count(), 3000);
        assert!(a.heap_bytes() >= 3000 * core::mem::size_of::<Slot<u32>>());
    }
}
