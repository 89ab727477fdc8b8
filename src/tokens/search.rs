//! The console's account search: a trigram index in memory of each account's appid and names,
//! so that a keystroke in the search box reads neither the store nor every account.
//!
//! Each account is a document: its appid and its names (`nick_name`, `user_name`,
//! `principal_name`), lowercased once when they are taken. Every run of three characters of a
//! field is a trigram — characters, not bytes: a Chinese name is three bytes a character — and
//! each trigram keeps the sorted ids of the documents that hold it. A query of three characters
//! or more looks up its trigrams: the documents in all of their lists are the candidates, and
//! each candidate is checked for the query as a substring of one field, so that trigrams met in
//! another order, or across two fields, never find an account. A query of one or two characters
//! has no trigram: it is checked against every document, in memory (one or two characters match
//! many accounts anyway: a hex digit is in nearly every appid).
//!
//! Memory: about 360 bytes an account (34 MiB for 100k accounts with Chinese names, 390 bytes
//! for 20k), measured by `memory_for_100k_accounts` in the tests: 135 for the postings' ids
//! (the appid's 16 trigrams and the `gh_` id's 13 are most of them), 70 to 95 for the trigram
//! table, 90 for the document (its lowercased names, about 65), 22 for the appid → document map.
//! Ids are `u32`, half an appid, and a trigram that one account holds keeps its id inline
//! (`postings.rs`).

mod postings;

use crate::AppId;
use postings::{DocId, Gram, Postings};
use std::collections::HashMap;

/// Joins a document's fields: names from WeChat never hold it, and it is taken out of them.
const SEP: char = '\0';

/// The index. Not thread-safe on its own: `InfoIndex` keeps it behind a lock.
#[derive(Default)]
pub(super) struct Search {
    ids: HashMap<AppId, DocId>,
    /// Freed places are reused, so that ids stay dense.
    docs: Vec<Option<Doc>>,
    free: Vec<DocId>,
    postings: Postings,
}

struct Doc {
    appid: AppId,
    /// The names, lowercased, joined by [`SEP`]; empty for an account without info yet.
    names: Box<str>,
}

impl Doc {
    /// Whether `q` (lowercase) is in the appid or in one of the names.
    fn contains(&self, q: &str) -> bool {
        self.appid.as_str().contains(q) || self.names.split(SEP).any(|field| field.contains(q))
    }
}

impl Search {
    /// Indexes `appid` with `names` (any case), replacing what it had. Unchanged names (the
    /// daily pass, mostly) change nothing.
    pub fn put(&mut self, appid: &AppId, names: [Option<&str>; 3]) {
        let names = joined(names);
        let id = self.place(appid);
        let Some(doc) = self.docs[id as usize].as_mut() else { return };
        if doc.names == names {
            return;
        }
        // The appid's trigrams stay whatever the names: only the names' own change.
        let own = trigrams_of(&appid.as_str());
        let (was, now) = (trigrams_of(&doc.names), trigrams_of(&names));
        doc.names = names;
        let only = |grams: &[Gram], not: &[Gram]| -> Vec<Gram> {
            grams.iter().copied().filter(|g| not.binary_search(g).is_err() && own.binary_search(g).is_err()).collect()
        };
        for gram in only(&was, &now) {
            self.postings.remove(gram, id);
        }
        for gram in only(&now, &was) {
            self.postings.add(gram, id);
        }
    }

    /// Indexes `appid` with no names unless it is indexed already: an authorizer whose info has
    /// not been fetched is still found by its appid.
    pub fn hold(&mut self, appid: &AppId) {
        self.place(appid);
    }

    /// The document of `appid`, made with no names if it has none.
    fn place(&mut self, appid: &AppId) -> DocId {
        if let Some(id) = self.ids.get(appid) {
            return *id;
        }
        let doc = Doc { appid: *appid, names: "".into() };
        let id = match self.free.pop() {
            Some(id) => {
                self.docs[id as usize] = Some(doc);
                id
            }
            None => {
                self.docs.push(Some(doc));
                (self.docs.len() - 1) as DocId
            }
        };
        self.ids.insert(*appid, id);
        for gram in trigrams_of(&appid.as_str()) {
            self.postings.add(gram, id);
        }
        id
    }

    pub fn remove(&mut self, appid: &AppId) {
        let Some(id) = self.ids.remove(appid) else { return };
        let Some(doc) = self.docs[id as usize].take() else { return };
        let mut grams = trigrams_of(&doc.appid.as_str());
        grams.extend(trigrams_of(&doc.names));
        grams.sort_unstable();
        grams.dedup();
        for gram in grams {
            self.postings.remove(gram, id);
        }
        self.free.push(id);
    }

    /// The appids whose appid or one of whose names contains `q` (any case), in appid order.
    pub fn find(&self, q: &str) -> Vec<AppId> {
        let q = q.to_lowercase();
        let mut found: Vec<AppId> = match self.candidates(&q) {
            Some(ids) => ids
                .into_iter()
                .filter_map(|id| self.docs[id as usize].as_ref())
                .filter(|d| d.contains(&q))
                .map(|d| d.appid)
                .collect(),
            None => self.docs.iter().flatten().filter(|d| d.contains(&q)).map(|d| d.appid).collect(),
        };
        found.sort_unstable();
        found
    }

    /// The documents holding every trigram of `q`, or `None` when `q` is too short to have one.
    fn candidates(&self, q: &str) -> Option<Vec<DocId>> {
        let grams = trigrams_of(q);
        let mut lists = Vec::with_capacity(grams.len());
        for gram in &grams {
            match self.postings.get(*gram) {
                Some(ids) => lists.push(ids),
                None => return Some(Vec::new()),
            }
        }
        // The rarest first: it bounds the candidates, and the others are only searched.
        lists.sort_by_key(|ids| ids.len());
        let (rarest, rest) = lists.split_first()?;
        Some(rarest.iter().copied().filter(|id| rest.iter().all(|ids| ids.binary_search(id).is_ok())).collect())
    }

    /// Gives back what the start-up load left spare.
    pub fn shrink(&mut self) {
        self.postings.shrink();
    }
}

/// The names as a document keeps them: lowercased, without [`SEP`], the empty ones left out.
fn joined(names: [Option<&str>; 3]) -> Box<str> {
    let fields: Vec<String> =
        names.into_iter().flatten().map(|n| n.replace(SEP, "").to_lowercase()).filter(|n| !n.is_empty()).collect();
    fields.join(&SEP.to_string()).into()
}

/// Every trigram of every field of `text` (fields split at [`SEP`]), hashed, sorted, each once.
fn trigrams_of(text: &str) -> Vec<Gram> {
    let mut grams = Vec::new();
    for field in text.split(SEP) {
        let chars: Vec<char> = field.chars().collect();
        grams.extend(chars.windows(3).map(|w| {
            // 21 bits a character, then Fibonacci hashing's high half.
            let packed = (u64::from(w[0]) << 42) | (u64::from(w[1]) << 21) | u64::from(w[2]);
            (packed.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as Gram
        }));
    }
    grams.sort_unstable();
    grams.dedup();
    grams
}

#[cfg(test)]
mod tests;
