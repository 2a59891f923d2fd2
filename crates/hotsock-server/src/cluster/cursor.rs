//! Where a node is in one log: the decision, without I/O, of whether an
//! entry is the next one, one seen already, or one past a gap to read back
//! from the stream first.

/// What to do with an entry `(epoch, seq)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The next one (or, with a jump, the first one after a gap that
    /// cannot be filled: `lost` entries were skipped).
    Deliver { lost: u64 },
    /// Delivered already.
    Duplicate,
    /// Entries `after + 1 .. seq` are missing: read them back, then this.
    Gap { after: u64 },
}

/// The last entry delivered from a log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Cursor {
    /// The log's run (`None`: nothing known yet).
    pub(crate) epoch: Option<u64>,
    /// The last sequence number delivered in that run.
    pub(crate) head: u64,
}

impl Cursor {
    /// A cursor at the log's head: what was appended before is history.
    pub(crate) fn at(epoch: u64, head: u64) -> Cursor {
        Cursor { epoch: Some(epoch), head }
    }

    /// Decides on `(epoch, seq)` and, when it is to be delivered, moves
    /// past it. `jump` (used for what a read-back returns first) accepts a
    /// gap that can no longer be filled.
    pub(crate) fn accept(&mut self, epoch: u64, seq: u64, jump: bool) -> Verdict {
        let head = if self.epoch == Some(epoch) { self.head } else { 0 };
        if self.epoch == Some(epoch) && seq <= head {
            return Verdict::Duplicate;
        }
        if seq != head + 1 && !jump {
            // A new run of the log starts at 1: anything later means the
            // node missed its beginning.
            return Verdict::Gap { after: head };
        }
        *self = Cursor { epoch: Some(epoch), head: seq };
        Verdict::Deliver { lost: seq - head - 1 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_duplicates_and_gaps() {
        let mut cursor = Cursor::at(9, 3);
        assert_eq!(cursor.accept(9, 4, false), Verdict::Deliver { lost: 0 });
        assert_eq!(cursor.accept(9, 4, false), Verdict::Duplicate);
        assert_eq!(cursor.accept(9, 2, false), Verdict::Duplicate);
        assert_eq!(cursor.accept(9, 7, false), Verdict::Gap { after: 4 });
        assert_eq!(cursor.head, 4, "a gap does not move the cursor");
        assert_eq!(cursor.accept(9, 5, false), Verdict::Deliver { lost: 0 });
        assert_eq!(cursor.accept(9, 8, true), Verdict::Deliver { lost: 2 });
    }

    #[test]
    fn a_new_epoch_starts_at_one() {
        let mut cursor = Cursor::at(9, 50);
        assert_eq!(cursor.accept(10, 1, false), Verdict::Deliver { lost: 0 });
        assert_eq!(cursor, Cursor::at(10, 1));
        let mut cursor = Cursor::at(9, 50);
        assert_eq!(cursor.accept(11, 3, false), Verdict::Gap { after: 0 });
        assert_eq!(cursor.accept(11, 1, false), Verdict::Deliver { lost: 0 });
        let mut fresh = Cursor::default();
        assert_eq!(fresh.accept(5, 1, false), Verdict::Deliver { lost: 0 });
    }
}
