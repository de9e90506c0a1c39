//! The slot state word: `lap << 32 | phase << 16 | owner`.

use std::cmp::Ordering as Cmp;

use super::RingError;

pub(super) const FREE: u16 = 0;
pub(super) const WRITING: u16 = 1;
pub(super) const READY: u16 = 2;
pub(super) const READING: u16 = 3;
pub(super) const TOMB: u16 = 4;
pub(super) const RESCUED: u16 = 5;

/// A decoded state word.
#[derive(Clone, Copy, Debug)]
pub(super) struct State {
    pub(super) lap: u32,
    pub(super) phase: u16,
    pub(super) owner: u16,
}

pub(super) fn encode(lap: u32, phase: u16, owner: u16) -> u64 {
    (u64::from(lap) << 32) | (u64::from(phase) << 16) | u64::from(owner)
}

pub(super) fn decode(word: u64) -> Result<State, RingError> {
    let phase = (word >> 16) as u16;
    if phase > RESCUED {
        return Err(RingError::Corrupt {
            what: "unknown slot phase",
            value: word,
        });
    }
    Ok(State {
        lap: (word >> 32) as u32,
        phase,
        owner: word as u16,
    })
}

/// Compares laps that may have wrapped around `u32`.
pub(super) fn lap_cmp(a: u32, b: u32) -> Cmp {
    (a.wrapping_sub(b) as i32).cmp(&0)
}
