//! The tenancy reads of `Ledger` and `LedgerDb`: units, requests, users,
//! tokens, prices, the infrastructure document and chargeback reports.
//! The rows and ops themselves are `unit`'s, `user`'s and `charge`'s.

use std::collections::BTreeMap;

use uuid::Uuid;

use crate::charge::{self, ChargeReport};
use crate::db::LedgerDb;
use crate::error::{DbContext, LedgerError};
use crate::ledger::Ledger;
use crate::partition::PartitionRecord;
use crate::resource::Resources;
use crate::unit::{self, UnitRecord, UnitRequest};
use crate::user::{self, TokenRecord, UserRecord};

/// The infrastructure document, if the administrator set one.
fn infra(conn: &rusqlite::Connection) -> Result<Option<serde_json::Value>, LedgerError> {
    use rusqlite::OptionalExtension;
    let doc: Option<String> = conn
        .query_row("SELECT doc FROM infra WHERE id = 1", [], |r| r.get(0))
        .optional()
        .ctx("read infrastructure")?;
    doc.map(|d| {
        serde_json::from_str(&d).map_err(|e| LedgerError::BadRow {
            table: "infra",
            key: "1".into(),
            what: e.to_string(),
        })
    })
    .transpose()
}

impl Ledger {
    /// The unit with this name.
    pub async fn unit_by_name(&self, name: &str) -> Result<Option<UnitRecord>, LedgerError> {
        let name = name.to_owned();
        self.read(move |c| unit::by_name(c, &name)).await
    }

    /// The unit with this uuid.
    pub async fn unit_by_uuid(&self, uuid: Uuid) -> Result<Option<UnitRecord>, LedgerError> {
        self.read(move |c| unit::by_uuid(c, uuid)).await
    }

    /// Every unit, by name.
    pub async fn units(&self) -> Result<Vec<UnitRecord>, LedgerError> {
        self.read(unit::all).await
    }

    /// The unit a partition belongs to.
    pub async fn unit_of(&self, partition: Uuid) -> Result<Option<Uuid>, LedgerError> {
        self.read(move |c| unit::unit_of(c, partition)).await
    }

    /// A unit's allocation, what its partitions hold now, and its free holding.
    pub async fn unit_usage(&self, unit: Uuid) -> Result<(Resources, Resources), LedgerError> {
        self.read(move |c| {
            Ok((
                unit::used(c, unit)?,
                crate::read::held_by(c, crate::resource::Owner::Unit(unit))?,
            ))
        })
        .await
    }

    /// Up to `limit` of a unit's partitions named after `after`, by name.
    pub async fn unit_partitions(
        &self,
        unit: Uuid,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<PartitionRecord>, LedgerError> {
        self.read(move |c| unit::partitions(c, unit, after.as_deref(), limit))
            .await
    }

    /// The request with this number.
    pub async fn unit_request(&self, id: u64) -> Result<Option<UnitRequest>, LedgerError> {
        self.read(move |c| unit::request(c, id)).await
    }

    /// Requests, oldest first: of one unit or all, pending only or all.
    pub async fn unit_requests(
        &self,
        unit: Option<Uuid>,
        pending_only: bool,
    ) -> Result<Vec<UnitRequest>, LedgerError> {
        self.read(move |c| unit::requests(c, unit, pending_only))
            .await
    }

    /// The user with this name.
    pub async fn user(&self, name: &str) -> Result<Option<UserRecord>, LedgerError> {
        let name = name.to_owned();
        self.read(move |c| user::user(c, &name)).await
    }

    /// Users, by name: of one unit, or all.
    pub async fn users(&self, unit: Option<Uuid>) -> Result<Vec<UserRecord>, LedgerError> {
        self.read(move |c| user::users(c, unit)).await
    }

    /// The token with this id.
    pub async fn token(&self, id: &str) -> Result<Option<TokenRecord>, LedgerError> {
        let id = id.to_owned();
        self.read(move |c| user::token(c, &id)).await
    }

    /// Tokens: of one user, or all.
    pub async fn tokens(&self, user: Option<String>) -> Result<Vec<TokenRecord>, LedgerError> {
        self.read(move |c| user::tokens(c, user.as_deref())).await
    }

    /// A token and its user, in one read.
    pub async fn credential(
        &self,
        id: &str,
    ) -> Result<Option<(TokenRecord, UserRecord)>, LedgerError> {
        let id = id.to_owned();
        self.read(move |c| user::credential(c, &id)).await
    }

    /// Every price, by item (micro-units per hour).
    pub async fn prices(&self) -> Result<BTreeMap<String, u64>, LedgerError> {
        self.read(charge::prices).await
    }

    /// The chargeback for `[from, to)` (RFC 3339), from the whole audit log.
    pub async fn chargeback(
        &self,
        from: String,
        to: String,
        unit: Option<Uuid>,
    ) -> Result<ChargeReport, LedgerError> {
        self.read(move |c| charge::report_from_db(c, &from, &to, unit))
            .await
    }

    /// The infrastructure document.
    pub async fn infra(&self) -> Result<Option<serde_json::Value>, LedgerError> {
        self.read(infra).await
    }
}

impl LedgerDb {
    /// The unit with this name.
    pub fn unit_by_name(&self, name: &str) -> Result<Option<UnitRecord>, LedgerError> {
        unit::by_name(self.conn(), name)
    }

    /// A unit's partitions' holdings, summed, and its free holding.
    pub fn unit_usage(&self, unit: Uuid) -> Result<(Resources, Resources), LedgerError> {
        Ok((
            unit::used(self.conn(), unit)?,
            crate::read::held_by(self.conn(), crate::resource::Owner::Unit(unit))?,
        ))
    }

    /// Requests, oldest first.
    pub fn unit_requests(
        &self,
        unit: Option<Uuid>,
        pending_only: bool,
    ) -> Result<Vec<UnitRequest>, LedgerError> {
        unit::requests(self.conn(), unit, pending_only)
    }

    /// The chargeback for `[from, to)`.
    pub fn chargeback(
        &self,
        from: &str,
        to: &str,
        unit: Option<Uuid>,
    ) -> Result<ChargeReport, LedgerError> {
        charge::report_from_db(self.conn(), from, to, unit)
    }
}
