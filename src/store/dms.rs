//! The dm pairs the writer knows to be set up (both `convs` rows) and clear (no block).

use std::collections::HashSet;

use rusqlite::{params, Connection};

use super::users::Users;

/// Most dm pairs remembered: at 16 bytes or so a pair in a `HashSet<u64>`, about 8 MiB.
const KNOWN_DMS_MAX: usize = 1 << 19;

/// The dm conversations whose two `convs` rows the writer knows exist, with no block
/// between the two, as pairs of user indexes, so that a running conversation's sends cost
/// no `INSERT OR IGNORE` and no block check at all. A block forgets its pair.
///
/// Losing an entry only costs that statement again, so the set is simply emptied when it
/// grows past [`KNOWN_DMS_MAX`]. What it must never hold is a pair whose rows were rolled
/// back: pairs added in the open transaction are listed and dropped on rollback.
#[derive(Default)]
pub(crate) struct KnownDms {
    pairs: HashSet<u64>,
    added: Vec<u64>,
}

impl KnownDms {
    /// Makes sure both users (`a` and `b`, user indexes; equal for a note to self) have a
    /// `convs` row for `conv`.
    pub(crate) fn ensure(
        &mut self,
        conn: &Connection,
        users: &Users,
        a: u32,
        b: u32,
        conv: &str,
    ) -> rusqlite::Result<()> {
        let key = pair(a, b);
        if self.pairs.contains(&key) {
            return Ok(());
        }
        let mut insert =
            conn.prepare_cached("INSERT OR IGNORE INTO convs(uid, conv) VALUES (?1, ?2)")?;
        insert.execute(params![users.uid(a), conv])?;
        if a != b {
            insert.execute(params![users.uid(b), conv])?;
        }
        self.pairs.insert(key);
        self.added.push(key);
        Ok(())
    }

    /// Whether a message between `a` and `b` went through since the last block between
    /// them, so no block check is needed.
    pub(crate) fn known(&self, a: u32, b: u32) -> bool {
        self.pairs.contains(&pair(a, b))
    }

    /// A block between `a` and `b`: their next send checks again. Rolling it back only
    /// costs that check.
    pub(crate) fn forget(&mut self, a: u32, b: u32) {
        self.pairs.remove(&pair(a, b));
    }

    pub(crate) fn commit(&mut self) {
        self.added.clear();
        if self.pairs.len() > KNOWN_DMS_MAX {
            self.pairs = HashSet::new();
        }
    }

    pub(crate) fn rollback(&mut self) {
        for key in self.added.drain(..) {
            self.pairs.remove(&key);
        }
    }
}

fn pair(a: u32, b: u32) -> u64 {
    (u64::from(a.min(b)) << 32) | u64::from(a.max(b))
}
