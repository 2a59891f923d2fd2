//! The shared-memory segment: a memfd mapped shared, viewed as a slice of
//! `AtomicU64`. This file holds the crate's first `unsafe`.
//!
//! Why a slice of atomics: the segment is written by several processes at
//! once. Plain loads and stores racing with another process's writes would
//! be data races (undefined behaviour in Rust's model) even under a seqlock;
//! atomic loads and stores are not. So every field, strings included, is
//! stored as 64-bit words and accessed only through atomics, and everything
//! outside this file is safe code.

use std::fs::File;
use std::sync::atomic::AtomicU64;

use memmap2::MmapRaw;

use crate::TableError;

/// A mapped segment. The mapping lives as long as this value; the slice it
/// hands out borrows it.
#[derive(Debug)]
pub(crate) struct Segment {
    map: MmapRaw,
    words: usize,
}

impl Segment {
    /// Maps `words` 64-bit words of `file` (which must be that long),
    /// shared: writes are seen by every process mapping the same file.
    pub(crate) fn map(file: &File, words: usize) -> Result<Segment, TableError> {
        let bytes = words.checked_mul(8).ok_or_else(|| TableError::BadSchema("table too large".into()))?;
        let len = file.metadata()?.len();
        if len != bytes as u64 {
            return Err(TableError::SchemaMismatch(format!("segment is {len} bytes, the schema needs {bytes}")));
        }
        let map = memmap2::MmapOptions::new().len(bytes).map_raw(file)?;
        Ok(Segment { map, words })
    }

    /// The segment as atomic words.
    #[allow(unsafe_code)]
    pub(crate) fn words(&self) -> &[AtomicU64] {
        let ptr = self.map.as_mut_ptr().cast::<AtomicU64>();
        // SAFETY: the mapping is `words * 8` bytes (checked in `map`), page
        // aligned (so 8-byte aligned, as AtomicU64 needs), and stays mapped
        // while `self` lives, which the returned borrow cannot outlive.
        // AtomicU64 has the same size and bit validity as u64, so any bytes
        // in the file are valid values. Other processes write the same
        // memory concurrently, which is sound because every access in this
        // crate goes through these atomics; nothing creates a non-atomic
        // reference to the mapped bytes.
        unsafe { std::slice::from_raw_parts(ptr, self.words) }
    }
}
