//! What a caller asks the ledger to do: a `Tx` of `Op`s, applied together
//! or not at all, and the `TxId` of its audit row.
//!
//! Ops carry before-images (`expect_*`, `PartitionExpect`) that the ledger
//! checks as preconditions, as the transaction requests of WO 2005/036358
//! paragraph 0156 do. Applying them is `store::apply`'s job.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::partition::{PartitionExpect, PartitionPatch, PartitionRecord};
use crate::pool::PoolKind;
use crate::resource::{Owner, ResourceKind, Resources};

/// The id of a committed transaction: its row in the audit log. Ids
/// increase with commit order and are never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TxId(pub u64);

/// What a committed transaction did that its caller needs back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// Its audit row.
    pub id: TxId,
    /// The values it took from pools (`Op::TakeFromPool`), in op order.
    pub taken: Vec<crate::lineage::Taken>,
}

impl fmt::Display for TxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A transaction: ops applied atomically, recorded as one audit row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tx {
    /// Who asks (a user, "broodd", "reconcile").
    pub actor: String,
    /// Why, for the audit log.
    pub reason: String,
    /// The changes, applied in order; a later op sees earlier ones.
    pub ops: Vec<Op>,
}

impl Tx {
    /// A transaction of `ops` by `actor` for `reason`.
    pub fn new(actor: impl Into<String>, reason: impl Into<String>, ops: Vec<Op>) -> Tx {
        Tx {
            actor: actor.into(),
            reason: reason.into(),
            ops,
        }
    }
}

/// One change inside a transaction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// Move `amount` of `kind` from one owner to another. `expect_from` and
    /// `expect_to` are before-images: when `Some`, the owner's current
    /// amount must equal them or the whole Tx fails with
    /// `LedgerError::Precondition`.
    Move {
        /// The resource.
        kind: ResourceKind,
        /// The owner that gives.
        from: Owner,
        /// The owner that receives.
        to: Owner,
        /// How much.
        amount: u64,
        /// What `from` must hold before the move.
        expect_from: Option<u64>,
        /// What `to` must hold before the move.
        expect_to: Option<u64>,
    },
    /// Insert a partition; its name must be unique (`LedgerError::NameTaken`)
    /// and its `parent`, if any, must exist (`NoSuchPartition`). The ledger
    /// sets `created_at`, `updated_at` and `generation` (1).
    InsertPartition(PartitionRecord),
    /// Change fields of a partition. `expect` holds before-images that must
    /// match (`Precondition` on mismatch); run-state and stage changes are
    /// checked with `transition` and must not leave a template running
    /// (`LedgerError::Transition`; see `PartitionPatch::apply_to`).
    UpdatePartition {
        /// The partition.
        uuid: Uuid,
        /// Before-images.
        expect: PartitionExpect,
        /// The changes.
        set: PartitionPatch,
    },
    /// Delete a partition; refused while it holds any resource
    /// (`LedgerError::StillHolds`) or pool item (`StillHoldsPoolItems`:
    /// put an `Op::ReturnToPool` before it), or while partitions name it as
    /// their parent (`HasDescendants`).
    DeletePartition {
        /// The partition.
        uuid: Uuid,
        /// Before-images.
        expect: PartitionExpect,
    },
    /// Set the host's capacity; `available` gains or loses the difference.
    /// Refused (`LedgerError::CapacityInUse`) if `available` would go negative.
    SetCapacity {
        /// The new capacity.
        capacity: Resources,
        /// The capacity there must be before, if `Some`.
        expect: Option<Resources>,
    },
    /// Create a pool of `values`, handed out in this order. The name is
    /// 1-64 characters of `[a-z0-9_.-]`; the values are 1 to 65536 distinct
    /// strings of 1-256 bytes (`InvalidOp` otherwise). `PoolExists` if the
    /// name is taken.
    CreatePool {
        /// Unique name.
        name: String,
        /// What the values are.
        kind: PoolKind,
        /// broodd's details, opaque to the ledger.
        meta: serde_json::Value,
        /// The values.
        values: Vec<String>,
    },
    /// Delete a pool and its values; refused (`PoolInUse`) while any value
    /// is held.
    DeletePool {
        /// The pool.
        name: String,
    },
    /// Give `holder` the value `value` if it is free (`ValueTaken` if held,
    /// `NotInPool` if absent) or, with `None`, the free value first in
    /// insertion order (`PoolExhausted` if none is). The audit record names
    /// the value chosen; read it back with `items_held_by`.
    TakeFromPool {
        /// The pool.
        pool: String,
        /// The partition that takes the value.
        holder: Uuid,
        /// The value wanted, or `None` for any.
        value: Option<String>,
    },
    /// Free every value `holder` holds in `pool`, or in every pool with
    /// `None`. Holding nothing is not an error.
    ReturnToPool {
        /// The partition that gives its values back.
        holder: Uuid,
        /// The pool, or `None` for all.
        pool: Option<String>,
    },
    /// A change to networks, I/O partitions or channels (`network.rs`).
    Net(crate::network::NetOp),
    /// A change to service pools, their members and services
    /// (`service_pool`'s ops, checked and applied there).
    ServicePool {
        /// The change.
        change: crate::service_pool::ServicePoolOp,
    },
    /// A business-unit op: register, request, decide, join (see `unit`).
    Unit(crate::unit::UnitOp),
    /// A user or token op (see `user`).
    User(crate::user::UserOp),
    /// A price or refund (see `charge`).
    Charge(crate::charge::ChargeOp),
    /// A pending definition change of a running partition (see `change`).
    Change(crate::change::ChangeOp),
    /// A partition's published ports (see `publish`).
    Publish(crate::publish::PublishOp),
}

impl Op {
    /// A move without before-images.
    pub fn transfer(kind: ResourceKind, from: Owner, to: Owner, amount: u64) -> Op {
        Op::Move {
            kind,
            from,
            to,
            amount,
            expect_from: None,
            expect_to: None,
        }
    }

    /// Moves from `available` to the partition, one op per non-zero kind.
    pub fn reserve(uuid: Uuid, r: &Resources) -> Vec<Op> {
        Op::moves(Owner::Available, Owner::Partition(uuid), r)
    }

    /// Moves from the partition back to `available`, one op per non-zero kind.
    pub fn release(uuid: Uuid, r: &Resources) -> Vec<Op> {
        Op::moves(Owner::Partition(uuid), Owner::Available, r)
    }

    fn moves(from: Owner, to: Owner, r: &Resources) -> Vec<Op> {
        r.iter()
            .filter(|&(_, amount)| amount > 0)
            .map(|(kind, amount)| Op::transfer(kind, from, to, amount))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_and_release_skip_zero_kinds() {
        let u = Uuid::from_u128(7);
        let r = Resources {
            memory_mib: 256,
            vcpus: 1,
            disk_gib: 0,
            nics: 0,
        };
        let ops = Op::reserve(u, &r);
        assert_eq!(
            ops,
            [
                Op::transfer(
                    ResourceKind::MemoryMib,
                    Owner::Available,
                    Owner::Partition(u),
                    256
                ),
                Op::transfer(
                    ResourceKind::Vcpus,
                    Owner::Available,
                    Owner::Partition(u),
                    1
                ),
            ]
        );
        let back = Op::release(u, &r);
        assert_eq!(back.len(), 2);
        assert!(matches!(
            back.first(),
            Some(Op::Move { from: Owner::Partition(p), to: Owner::Available, .. }) if *p == u
        ));
        assert!(Op::reserve(u, &Resources::ZERO).is_empty());
    }

    #[test]
    fn tx_id_is_a_bare_number_in_json() {
        assert_eq!(serde_json::to_string(&TxId(42)).ok().as_deref(), Some("42"));
        assert_eq!(TxId(42).to_string(), "42");
    }
}
