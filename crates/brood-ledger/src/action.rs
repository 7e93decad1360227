//! Actions bound to templates (issue 13): an action such as "create web
//! server" is a stored workflow bound to a VM template under a name; running
//! it runs the workflow as a job with `${data.template}` set to the
//! template. This file owns the `template_action` table; the workflows are
//! `job`'s, the templates `partition`'s, and running is broodd's.
//!
//! template_action(template uuid, action, workflow, created_by, created_at):
//! one row per binding, keyed by the template's uuid (so a template's name
//! may be reused by another later without inheriting its actions). The
//! transaction that deletes a template deletes its rows ([`remove_all`]).

use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{DbContext, LedgerError};
use crate::ledger::Ledger;
use crate::store::now_rfc3339;

/// The `V_ACTIONS` migration.
pub(crate) const V_ACTIONS: &str = "
CREATE TABLE template_action (
    template   TEXT NOT NULL,
    action     TEXT NOT NULL CHECK (length(action) BETWEEN 1 AND 64
                   AND action NOT GLOB '*[^a-z0-9_.-]*'),
    workflow   TEXT NOT NULL CHECK (length(workflow) BETWEEN 1 AND 64),
    created_by TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (template, action)
) WITHOUT ROWID;
";

/// One action bound to a template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionRecord {
    /// The template's uuid.
    pub template: Uuid,
    /// The action's name.
    pub action: String,
    /// The workflow it runs (its newest version when run).
    pub workflow: String,
    /// Who bound it.
    pub created_by: String,
    /// When (RFC 3339).
    pub created_at: String,
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ActionRecord> {
    let t: String = r.get(0)?;
    Ok(ActionRecord {
        // A uuid the ledger itself wrote; a bad one reads as nil, which
        // matches no template.
        template: Uuid::parse_str(&t).unwrap_or(Uuid::nil()),
        action: r.get(1)?,
        workflow: r.get(2)?,
        created_by: r.get(3)?,
        created_at: r.get(4)?,
    })
}

const COLUMNS: &str = "template, action, workflow, created_by, created_at";

impl Ledger {
    /// Binds `workflow` to `template` as `action`, replacing an earlier
    /// binding of that name; returns the binding.
    pub async fn bind_action(
        &self,
        template: Uuid,
        action: &str,
        workflow: &str,
        actor: &str,
    ) -> Result<ActionRecord, LedgerError> {
        let rec = ActionRecord {
            template,
            action: action.to_owned(),
            workflow: workflow.to_owned(),
            created_by: actor.to_owned(),
            created_at: now_rfc3339(),
        };
        let r = rec.clone();
        self.write(move |c| {
            c.execute(
                "INSERT OR REPLACE INTO template_action \
                 (template, action, workflow, created_by, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    r.template.to_string(),
                    r.action,
                    r.workflow,
                    r.created_by,
                    r.created_at
                ],
            )
            .ctx("bind action")?;
            Ok(())
        })
        .await?;
        Ok(rec)
    }

    /// Removes a binding; false if there was none.
    pub async fn unbind_action(&self, template: Uuid, action: &str) -> Result<bool, LedgerError> {
        let action = action.to_owned();
        self.write(move |c| {
            Ok(c.execute(
                "DELETE FROM template_action WHERE template = ?1 AND action = ?2",
                params![template.to_string(), action],
            )
            .ctx("unbind action")?
                > 0)
        })
        .await
    }

    /// A template's action of that name.
    pub async fn action(
        &self,
        template: Uuid,
        action: &str,
    ) -> Result<Option<ActionRecord>, LedgerError> {
        let action = action.to_owned();
        self.read(move |c| {
            c.query_row(
                &format!(
                    "SELECT {COLUMNS} FROM template_action WHERE template = ?1 AND action = ?2"
                ),
                params![template.to_string(), action],
                row,
            )
            .optional()
            .ctx("read action")
        })
        .await
    }

    /// A template's actions, by name.
    pub async fn actions(&self, template: Uuid) -> Result<Vec<ActionRecord>, LedgerError> {
        self.read(move |c| {
            let mut st = c
                .prepare(&format!(
                    "SELECT {COLUMNS} FROM template_action WHERE template = ?1 ORDER BY action"
                ))
                .ctx("list actions")?;
            st.query_map([template.to_string()], row)
                .ctx("list actions")?
                .collect::<Result<Vec<_>, _>>()
                .ctx("list actions")
        })
        .await
    }
}

/// Removes every action bound to `template` (inside the transaction that
/// deletes the template); returns their names.
pub(crate) fn remove_all(
    conn: &rusqlite::Connection,
    template: Uuid,
) -> Result<Vec<String>, LedgerError> {
    let key = template.to_string();
    let names = conn
        .prepare_cached("SELECT action FROM template_action WHERE template = ?1 ORDER BY action")
        .ctx("list a template's actions")?
        .query_map([&key], |r| r.get::<_, String>(0))
        .ctx("list a template's actions")?
        .collect::<Result<Vec<_>, _>>()
        .ctx("list a template's actions")?;
    if !names.is_empty() {
        conn.prepare_cached("DELETE FROM template_action WHERE template = ?1")
            .ctx("prepare action delete")?
            .execute([&key])
            .ctx("delete a template's actions")?;
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use crate::ledger::Ledger;

    #[tokio::test]
    async fn bind_list_rebind_unbind() {
        let dir = tempfile::tempdir().unwrap();
        let cap = crate::resource::Resources {
            memory_mib: 4096,
            vcpus: 4,
            disk_gib: 10,
            nics: 4,
        };
        let l = Ledger::open(dir.path().join("l.db"), cap).await.unwrap();
        let t = Uuid::new_v4();
        l.bind_action(t, "web", "mkweb", "admin").await.unwrap();
        l.bind_action(t, "db", "mkdb", "admin").await.unwrap();
        let names: Vec<String> = l
            .actions(t)
            .await
            .unwrap()
            .into_iter()
            .map(|a| a.action)
            .collect();
        assert_eq!(names, ["db", "web"]);
        l.bind_action(t, "web", "mkweb2", "admin").await.unwrap();
        assert_eq!(
            l.action(t, "web").await.unwrap().unwrap().workflow,
            "mkweb2"
        );
        assert!(l.actions(Uuid::new_v4()).await.unwrap().is_empty());
        assert!(l.unbind_action(t, "web").await.unwrap());
        assert!(!l.unbind_action(t, "web").await.unwrap());
        assert!(l.action(t, "web").await.unwrap().is_none());
        // The table refuses a name outside its alphabet.
        assert!(l.bind_action(t, "Bad Name", "w", "admin").await.is_err());
    }
}
