//! Users, their roles and their API tokens. A token is stored as the
//! sha256 of its secret only (broodd makes the secret, shows it once and
//! compares hashes in constant time); revoking one keeps its row, so the
//! audit log and `token list` still name it.
//!
//! Change records:
//!
//! ```text
//! {"op":"user_create","after":{<UserRecord>}}
//! {"op":"user_delete","before":{<UserRecord>},"tokens":["<id>", ...]}
//! {"op":"token_create","after":{<TokenRecord without its hash>}}
//! {"op":"token_revoke","id":"<id>","before":{"revoked_at":null},"after":{"revoked_at":"<time>"}}
//! ```

use rusqlite::{Connection, Row, params};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::error::{DbContext, LedgerError};

/// What a user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UserRole {
    /// Everything.
    Admin,
    /// Its unit: users, requests and every VM.
    UnitAdmin,
    /// Its unit's VMs: create from allowed templates, start, stop, exec.
    UnitUser,
    /// Reads everything, the ledger and audit log included; changes nothing.
    Auditor,
}

impl UserRole {
    /// Every role, in a fixed order.
    pub const ALL: [UserRole; 4] = [
        UserRole::Admin,
        UserRole::UnitAdmin,
        UserRole::UnitUser,
        UserRole::Auditor,
    ];

    /// The stored and command-line name.
    pub fn as_str(self) -> &'static str {
        match self {
            UserRole::Admin => "admin",
            UserRole::UnitAdmin => "unit-admin",
            UserRole::UnitUser => "unit-user",
            UserRole::Auditor => "auditor",
        }
    }

    /// Whether the role belongs to one unit.
    pub fn is_unit_role(self) -> bool {
        matches!(self, UserRole::UnitAdmin | UserRole::UnitUser)
    }

    /// The role with this name.
    pub fn parse(s: &str) -> Option<UserRole> {
        UserRole::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// A user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    /// Unique name.
    pub name: String,
    /// Its role.
    pub role: UserRole,
    /// Its unit, for the unit roles.
    pub unit: Option<Uuid>,
    /// When it was created.
    pub created_at: String,
}

/// A token, as the ledger keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Public id: 16 hex digits, the part of the token before the secret.
    pub id: String,
    /// Whose it is.
    pub user: String,
    /// sha256 of the secret, 64 hex digits.
    #[serde(skip_serializing, default)]
    pub hash: String,
    /// When it was made.
    pub created_at: String,
    /// When it stops working, RFC 3339 (never if `None`).
    pub expires_at: Option<String>,
    /// When it was revoked.
    pub revoked_at: Option<String>,
}

/// A user or token op (`Op::User`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "user_op", rename_all = "snake_case")]
pub enum UserOp {
    /// Creates a user; a unit role needs a unit, admin and auditor none.
    Create {
        /// Unique name, 1-64 characters of `[a-z0-9_.-]`.
        name: String,
        /// Its role.
        role: UserRole,
        /// Its unit.
        unit: Option<Uuid>,
    },
    /// Deletes a user and its tokens.
    Delete {
        /// The user.
        name: String,
    },
    /// Records a token.
    CreateToken {
        /// 16 hex digits.
        id: String,
        /// Whose.
        user: String,
        /// sha256 of the secret, hex.
        hash: String,
        /// RFC 3339 expiry.
        expires_at: Option<String>,
    },
    /// Revokes a token (`Precondition` if it is revoked already).
    RevokeToken {
        /// The token.
        id: String,
    },
}

fn invalid(op: usize, what: impl Into<String>) -> LedgerError {
    LedgerError::InvalidOp {
        op,
        what: what.into(),
    }
}

/// Applies a user op; the store calls this for `Op::User`.
pub(crate) fn apply(
    conn: &Connection,
    i: usize,
    op: &UserOp,
    now: &str,
) -> Result<Value, LedgerError> {
    match op {
        UserOp::Create { name, role, unit } => {
            let ok = (1..=64).contains(&name.len())
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b));
            if !ok {
                return Err(invalid(
                    i,
                    format!("user name {name:?} is not 1-64 characters of [a-z0-9_.-]"),
                ));
            }
            if role.is_unit_role() != unit.is_some() {
                return Err(invalid(
                    i,
                    format!(
                        "role {} {} a unit",
                        role.as_str(),
                        if role.is_unit_role() {
                            "needs"
                        } else {
                            "takes no"
                        }
                    ),
                ));
            }
            if let Some(u) = unit
                && !crate::unit::exists(conn, *u)?
            {
                return Err(invalid(i, format!("no unit {u}")));
            }
            if user(conn, name)?.is_some() {
                return Err(LedgerError::NameTaken { name: name.clone() });
            }
            conn.prepare_cached(
                "INSERT INTO app_user (name, role, unit, created_at) VALUES (?1, ?2, ?3, ?4)",
            )
            .ctx("prepare user insert")?
            .execute(params![
                name,
                role.as_str(),
                unit.map(|u| u.to_string()),
                now
            ])
            .ctx("insert user")?;
            let after = user(conn, name)?;
            Ok(json!({"op": "user_create", "after": after}))
        }
        UserOp::Delete { name } => {
            let before =
                user(conn, name)?.ok_or_else(|| invalid(i, format!("no user {name:?}")))?;
            let ids: Vec<String> = tokens(conn, Some(name))?
                .into_iter()
                .map(|t| t.id)
                .collect();
            conn.prepare_cached("DELETE FROM app_user WHERE name = ?1")
                .ctx("prepare user delete")?
                .execute([name])
                .ctx("delete user")?;
            Ok(json!({"op": "user_delete", "before": before, "tokens": ids}))
        }
        UserOp::CreateToken {
            id,
            user: who,
            hash,
            expires_at,
        } => {
            if user(conn, who)?.is_none() {
                return Err(invalid(i, format!("no user {who:?}")));
            }
            let hex = |s: &str, n: usize| {
                s.len() == n
                    && s.bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            };
            if !hex(id, 16) || !hex(hash, 64) {
                return Err(invalid(
                    i,
                    "a token id is 16 and its hash 64 lowercase hex digits",
                ));
            }
            conn.prepare_cached(
                "INSERT INTO token (id, user, hash, created_at, expires_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .ctx("prepare token insert")?
            .execute(params![id, who, hash, now, expires_at])
            .ctx("insert token")?;
            let after = token(conn, id)?;
            Ok(json!({"op": "token_create", "after": after}))
        }
        UserOp::RevokeToken { id } => {
            let t = token(conn, id)?.ok_or_else(|| invalid(i, format!("no token {id:?}")))?;
            if let Some(at) = t.revoked_at {
                return Err(LedgerError::Precondition {
                    op: i,
                    what: format!("revocation of token {id}"),
                    expected: "none".into(),
                    actual: at,
                });
            }
            conn.prepare_cached("UPDATE token SET revoked_at = ?2 WHERE id = ?1")
                .ctx("prepare token revoke")?
                .execute(params![id, now])
                .ctx("revoke token")?;
            Ok(json!({"op": "token_revoke", "id": id,
                      "before": {"revoked_at": null}, "after": {"revoked_at": now}}))
        }
    }
}

fn decode_user(r: &Row<'_>) -> rusqlite::Result<(String, String, Option<String>, String)> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
}

fn users_where<P: rusqlite::Params>(
    conn: &Connection,
    clause: &str,
    p: P,
) -> Result<Vec<UserRecord>, LedgerError> {
    let sql = format!("SELECT name, role, unit, created_at FROM app_user {clause}");
    let rows = conn
        .prepare_cached(&sql)
        .ctx("prepare user query")?
        .query_map(p, decode_user)
        .ctx("query users")?
        .collect::<Result<Vec<_>, _>>()
        .ctx("read users")?;
    rows.into_iter()
        .map(|(name, role, unit, created_at)| {
            let bad = |what: String| LedgerError::BadRow {
                table: "app_user",
                key: name.clone(),
                what,
            };
            Ok(UserRecord {
                role: UserRole::parse(&role).ok_or_else(|| bad(format!("role {role:?}")))?,
                unit: unit
                    .map(|u| Uuid::parse_str(&u).map_err(|e| bad(format!("unit: {e}"))))
                    .transpose()?,
                name,
                created_at,
            })
        })
        .collect()
}

/// The user with this name.
pub(crate) fn user(conn: &Connection, name: &str) -> Result<Option<UserRecord>, LedgerError> {
    Ok(users_where(conn, "WHERE name = ?1", [name])?.pop())
}

/// Users, by name: of one unit, or all.
pub(crate) fn users(conn: &Connection, unit: Option<Uuid>) -> Result<Vec<UserRecord>, LedgerError> {
    match unit {
        Some(u) => users_where(conn, "WHERE unit = ?1 ORDER BY name", [u.to_string()]),
        None => users_where(conn, "ORDER BY name", []),
    }
}

fn tokens_where<P: rusqlite::Params>(
    conn: &Connection,
    clause: &str,
    p: P,
) -> Result<Vec<TokenRecord>, LedgerError> {
    let sql =
        format!("SELECT id, user, hash, created_at, expires_at, revoked_at FROM token {clause}");
    conn.prepare_cached(&sql)
        .ctx("prepare token query")?
        .query_map(p, |r| {
            Ok(TokenRecord {
                id: r.get(0)?,
                user: r.get(1)?,
                hash: r.get(2)?,
                created_at: r.get(3)?,
                expires_at: r.get(4)?,
                revoked_at: r.get(5)?,
            })
        })
        .ctx("query tokens")?
        .collect::<Result<Vec<_>, _>>()
        .ctx("read tokens")
}

/// The token with this id.
pub(crate) fn token(conn: &Connection, id: &str) -> Result<Option<TokenRecord>, LedgerError> {
    Ok(tokens_where(conn, "WHERE id = ?1", [id])?.pop())
}

/// Tokens, by user then creation: of one user, or all.
pub(crate) fn tokens(
    conn: &Connection,
    user: Option<&str>,
) -> Result<Vec<TokenRecord>, LedgerError> {
    match user {
        Some(u) => tokens_where(conn, "WHERE user = ?1 ORDER BY created_at, id", [u]),
        None => tokens_where(conn, "ORDER BY user, created_at, id", []),
    }
}

/// A token with its user, in one read: what authenticating a request needs.
pub(crate) fn credential(
    conn: &Connection,
    id: &str,
) -> Result<Option<(TokenRecord, UserRecord)>, LedgerError> {
    let Some(t) = token(conn, id)? else {
        return Ok(None);
    };
    Ok(user(conn, &t.user)?.map(|u| (t, u)))
}
