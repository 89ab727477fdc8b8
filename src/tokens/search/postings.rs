//! The search's postings: for each trigram, the ascending ids of the documents that hold it,
//! kept small because there are tens of them an account.
//!
//! A trigram is hashed to 32 bits: two trigrams that share a hash only add candidates, which the
//! search's substring check drops. Its entry is one `u32`: the id itself when one document holds
//! it (most of a Chinese name's trigrams are one account's), else the place of a list of two or
//! more. 9 bytes a table slot rather than the 33 of a trigram → `Vec` map.

use std::collections::HashMap;

/// A trigram, hashed.
pub(super) type Gram = u32;
/// A document's place in the search's documents; below [`LIST`].
pub(super) type DocId = u32;

/// Marks an entry that is a list's place rather than a document's id.
const LIST: u32 = 1 << 31;

#[derive(Default)]
pub(super) struct Postings {
    entries: HashMap<Gram, u32>,
    /// Lists of two ids or more, ascending; an emptied place is reused.
    lists: Vec<Vec<DocId>>,
    free: Vec<u32>,
}

impl Postings {
    /// The documents holding `gram`, ascending.
    pub fn get(&self, gram: Gram) -> Option<&[DocId]> {
        let entry = self.entries.get(&gram)?;
        Some(match entry & LIST {
            0 => std::slice::from_ref(entry),
            _ => &self.lists[(entry & !LIST) as usize],
        })
    }

    pub fn add(&mut self, gram: Gram, id: DocId) {
        debug_assert!(id < LIST, "2^31 documents");
        let Some(entry) = self.entries.get(&gram).copied() else {
            self.entries.insert(gram, id);
            return;
        };
        if entry & LIST != 0 {
            let ids = &mut self.lists[(entry & !LIST) as usize];
            // New documents take the highest id unless a place was freed: mostly a push.
            if let Err(at) = ids.binary_search(&id) {
                ids.insert(at, id);
            }
        } else if entry != id {
            let place = self.new_list(if entry < id { vec![entry, id] } else { vec![id, entry] });
            self.entries.insert(gram, place | LIST);
        }
    }

    pub fn remove(&mut self, gram: Gram, id: DocId) {
        let Some(entry) = self.entries.get(&gram).copied() else { return };
        if entry & LIST == 0 {
            if entry == id {
                self.entries.remove(&gram);
            }
            return;
        }
        let place = entry & !LIST;
        let ids = &mut self.lists[place as usize];
        if let Ok(at) = ids.binary_search(&id) {
            ids.remove(at);
        }
        if let [last] = ids[..] {
            self.lists[place as usize] = Vec::new();
            self.free.push(place);
            self.entries.insert(gram, last);
        }
    }

    /// Gives back what growing the lists one id at a time left spare: after the start-up load.
    pub fn shrink(&mut self) {
        self.lists.iter_mut().for_each(Vec::shrink_to_fit);
    }

    fn new_list(&mut self, ids: Vec<DocId>) -> u32 {
        match self.free.pop() {
            Some(place) => {
                self.lists[place as usize] = ids;
                place
            }
            None => {
                self.lists.push(ids);
                (self.lists.len() - 1) as u32
            }
        }
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// What the postings hold on the heap, in bytes: the table's slots and control bytes, the
    /// lists' places and their ids (not the allocator's rounding).
    #[cfg(test)]
    pub fn heap_bytes(&self) -> usize {
        let slots = (self.entries.capacity() * 8 / 7).next_power_of_two();
        slots * (std::mem::size_of::<(Gram, u32)>() + 1)
            + self.lists.capacity() * std::mem::size_of::<Vec<DocId>>()
            + self.lists.iter().map(|ids| ids.capacity() * 4).sum::<usize>()
            + self.free.capacity() * 4
    }
}
