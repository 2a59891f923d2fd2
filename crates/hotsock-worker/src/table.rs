//! The table handle the SDK gives apps: one API over a shared-memory
//! segment (`scope = "local"`, this server's workers) or the cluster's
//! Redis (`scope = "cluster"`, every node), so the same app code runs on
//! one node or many.

use crate::cluster_table::ClusterTable;
use hotsock_table::{Row, TableError, Value};

/// A table declared in the config (`[tables.NAME]`). Every operation is
/// atomic on its row; see [`Table::scope`] for where the rows live.
#[derive(Debug)]
pub struct Table {
    backend: Backend,
}

#[derive(Debug)]
enum Backend {
    Shared(hotsock_table::Table),
    Cluster(Box<ClusterTable>),
}

/// Where a table's rows live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Shared memory of this server's workers: an operation costs
    /// nanoseconds.
    Local,
    /// The cluster's Redis, the same rows on every node: an operation is a
    /// Redis round trip (the calling handler blocks for it) and fails with
    /// [`TableError::Unavailable`] while Redis cannot be reached.
    Cluster,
}

impl Table {
    pub(crate) fn shared(table: hotsock_table::Table) -> Table {
        Table { backend: Backend::Shared(table) }
    }

    pub(crate) fn cluster(table: ClusterTable) -> Table {
        Table { backend: Backend::Cluster(Box::new(table)) }
    }

    /// The table's name (`[tables.NAME]`).
    pub fn name(&self) -> &str {
        match &self.backend {
            Backend::Shared(t) => t.name(),
            Backend::Cluster(t) => t.name(),
        }
    }

    /// Where the rows live.
    pub fn scope(&self) -> Scope {
        match &self.backend {
            Backend::Shared(_) => Scope::Local,
            Backend::Cluster(_) => Scope::Cluster,
        }
    }

    /// The capacity in rows (`rows` in the config).
    pub fn capacity(&self) -> u32 {
        match &self.backend {
            Backend::Shared(t) => t.capacity(),
            Backend::Cluster(t) => t.capacity(),
        }
    }

    /// Rows in use (0 when a cluster table's Redis cannot be reached).
    pub fn len(&self) -> usize {
        match &self.backend {
            Backend::Shared(t) => t.len(),
            Backend::Cluster(t) => t.len().unwrap_or(0),
        }
    }

    /// Whether no row is in use.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads a row.
    pub fn get(&self, key: &str) -> Result<Option<Row>, TableError> {
        match &self.backend {
            Backend::Shared(t) => t.get(key),
            Backend::Cluster(t) => t.get(key),
        }
    }

    /// Sets columns of a row, creating it (other columns zero or empty) if
    /// the key is new. Every value is checked before anything is written.
    pub fn set(&self, key: &str, values: &[(&str, Value)]) -> Result<(), TableError> {
        match &self.backend {
            Backend::Shared(t) => t.set(key, values),
            Backend::Cluster(t) => t.set(key, values),
        }
    }

    /// Creates the row if `key` is new (`true`); writes nothing and returns
    /// `false` if it exists. Of two inserts of one key, exactly one wins.
    pub fn insert(&self, key: &str, values: &[(&str, Value)]) -> Result<bool, TableError> {
        match &self.backend {
            Backend::Shared(t) => t.insert(key, values),
            Backend::Cluster(t) => t.insert(key, values),
        }
    }

    /// Adds `delta` to an `i64` column (creating the row at 0); the new value.
    pub fn incr(&self, key: &str, column: &str, delta: i64) -> Result<i64, TableError> {
        match &self.backend {
            Backend::Shared(t) => t.incr(key, column, delta),
            Backend::Cluster(t) => t.incr(key, column, delta),
        }
    }

    /// Adds `delta` to an `f64` column (creating the row at 0.0).
    pub fn incr_float(&self, key: &str, column: &str, delta: f64) -> Result<f64, TableError> {
        match &self.backend {
            Backend::Shared(t) => t.incr_float(key, column, delta),
            Backend::Cluster(t) => t.incr_float(key, column, delta),
        }
    }

    /// Sets `column` to `new` if it holds `expected`; creates no row.
    pub fn compare_and_set(&self, key: &str, column: &str, expected: &Value, new: &Value) -> Result<bool, TableError> {
        match &self.backend {
            Backend::Shared(t) => t.compare_and_set(key, column, expected, new),
            Backend::Cluster(t) => t.compare_and_set(key, column, expected, new),
        }
    }

    /// Deletes a row; whether it existed.
    pub fn delete(&self, key: &str) -> Result<bool, TableError> {
        match &self.backend {
            Backend::Shared(t) => t.delete(key),
            Backend::Cluster(t) => t.delete(key),
        }
    }

    /// Every row, each consistent on its own (a cluster table's rows are
    /// read in one pipeline; empty when its Redis cannot be reached: use
    /// [`Table::try_iter`] to tell).
    pub fn iter(&self) -> Vec<(String, Row)> {
        self.try_iter().unwrap_or_default()
    }

    /// [`Table::iter`], with a cluster table's Redis failure as an error.
    pub fn try_iter(&self) -> Result<Vec<(String, Row)>, TableError> {
        match &self.backend {
            Backend::Shared(t) => Ok(t.iter()),
            Backend::Cluster(t) => t.iter(),
        }
    }
}
