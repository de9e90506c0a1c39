//! Crash recovery: a dead owner's slots become tombstones (puts) or
//! rescued items (gets); see the module docs of `ring.rs`.

use std::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};

use super::state::{READING, RESCUED, TOMB, WRITING, decode, encode};
use super::{Owner, Recovered, Ring, RingError, wake};

impl Ring {
    /// Recovers every slot the dead `owner` held: its puts in progress
    /// become tombstones, its gets in progress go back to the front of the
    /// queue. Never blocks.
    ///
    /// Call it once the owner's process is certainly gone, and before its
    /// id is handed out again; one call per death, from one thread.
    ///
    /// # Errors
    /// [`RingError::BadOwner`]; [`RingError::Corrupt`] when a slot's state
    /// is unreadable (every readable slot is still recovered).
    pub fn recover(&self, dead: Owner) -> Result<Recovered, RingError> {
        self.check_owner(dead)?;
        let h = self.mem.header();
        let mut rec = Recovered::default();
        let mut corrupt = None;
        for idx in 0..self.geometry.slots as usize {
            let st = &self.mem.slot(idx).state;
            let word = st.load(SeqCst);
            let s = match decode(word) {
                Ok(s) => s,
                Err(e) => {
                    corrupt = Some(e);
                    continue;
                }
            };
            if s.owner != dead.0 {
                continue;
            }
            // The owner is dead, so only a contract breach can make these
            // exchanges fail; then the slot is left as it is.
            if s.phase == WRITING {
                if st
                    .compare_exchange(word, encode(s.lap, TOMB, 0), SeqCst, Relaxed)
                    .is_ok()
                {
                    self.uncommit(dead, s.lap, idx);
                    rec.tombstoned += 1;
                }
            } else if s.phase == READING
                && st
                    .compare_exchange(word, encode(s.lap, RESCUED, 0), SeqCst, Relaxed)
                    .is_ok()
            {
                rec.requeued += 1;
            }
        }
        // Always, even with nothing rescued here: the dead owner may have
        // been a getter that cleared the hint before its second scan.
        h.meta.0.rescue_hint.store(1, SeqCst);
        if rec != Recovered::default() {
            wake::notify(&h.not_empty.0);
            wake::notify(&h.joined.0);
        }
        match corrupt {
            Some(e) => Err(e),
            None => Ok(rec),
        }
    }

    /// Removes a dead producer's count for the put at (`lap`, `idx`), if
    /// its commit got that far.
    fn uncommit(&self, dead: Owner, lap: u32, idx: usize) {
        let cell = self.mem.owner(usize::from(dead.0));
        let word = cell.load(Acquire);
        let pos = self.position32(lap, idx);
        if word as u32 == pos {
            let count = ((word >> 32) as u32).wrapping_sub(1);
            cell.store(
                u64::from(count) << 32 | u64::from(pos ^ 0x8000_0000),
                Release,
            );
        }
    }
}
