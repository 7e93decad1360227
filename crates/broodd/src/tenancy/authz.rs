//! What each role may do: one pure function over (role, action, object
//! kind, whether the object is in the caller's unit), and the golden table
//! it produces (`crates/broodd/tests/authz-roles.txt`, compared with what
//! the API really answers by `tests/authz.rs`).
//!
//! The 404 rule: a caller that may not read an object gets `Hide` for
//! every action on it, so the answer is the same as for an object that
//! does not exist. `Forbid` (403) is only for objects the caller can see.

use std::fmt::Write as _;

use brood_ledger::UserRole;

/// What a route does to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    /// Show or list.
    Read,
    /// Make one (define a VM, file a request, create a user or token).
    Create,
    /// Act on it: start, stop, pause, exec, console, fork from a template.
    Operate,
    /// Delete or revoke.
    Delete,
    /// Decide a request; make a template of a VM.
    Manage,
    /// Change host-wide settings: the infrastructure, prices, refunds, pools.
    Configure,
}

impl Action {
    /// Every action, in table order.
    pub const ALL: [Action; 6] = [
        Action::Read,
        Action::Create,
        Action::Operate,
        Action::Delete,
        Action::Manage,
        Action::Configure,
    ];

    /// Its name in the table.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::Create => "create",
            Action::Operate => "operate",
            Action::Delete => "delete",
            Action::Manage => "manage",
            Action::Configure => "configure",
        }
    }
}

/// The kinds of object the API reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// A partition (VM).
    Partition,
    /// A template.
    Template,
    /// An identity pool (host-wide).
    IdentityPool,
    /// A business unit.
    Unit,
    /// A unit's allocation request.
    Request,
    /// A user.
    User,
    /// A token.
    Token,
    /// The ledger and its audit log.
    Ledger,
    /// The host, its metrics and events.
    Host,
    /// The infrastructure hierarchy.
    Infra,
    /// Prices.
    Price,
    /// Chargeback reports and refunds.
    Chargeback,
    /// A job (a unit's action, queued and run; issue 13).
    Job,
    /// A stored workflow definition (host-wide).
    Workflow,
}

impl Kind {
    /// Every kind, in table order.
    pub const ALL: [Kind; 14] = [
        Kind::Partition,
        Kind::Template,
        Kind::IdentityPool,
        Kind::Unit,
        Kind::Request,
        Kind::User,
        Kind::Token,
        Kind::Ledger,
        Kind::Host,
        Kind::Infra,
        Kind::Price,
        Kind::Chargeback,
        Kind::Job,
        Kind::Workflow,
    ];

    /// Its name in the table.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Partition => "partition",
            Kind::Template => "template",
            Kind::IdentityPool => "identity-pool",
            Kind::Unit => "unit",
            Kind::Request => "request",
            Kind::User => "user",
            Kind::Token => "token",
            Kind::Ledger => "ledger",
            Kind::Host => "host",
            Kind::Infra => "infra",
            Kind::Price => "price",
            Kind::Chargeback => "chargeback",
            Kind::Job => "job",
            Kind::Workflow => "workflow",
        }
    }

    /// Whether objects of this kind belong to a unit (else host-wide).
    pub fn is_unit_scoped(self) -> bool {
        matches!(
            self,
            Kind::Partition
                | Kind::Template
                | Kind::Unit
                | Kind::Request
                | Kind::User
                | Kind::Token
                | Kind::Chargeback
                | Kind::Job
        )
    }
}

/// The answer for one (role, action, kind, scope).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Go ahead.
    Allow,
    /// 403: the caller sees the object but may not do this.
    Forbid,
    /// 404: the caller may not know the object exists.
    Hide,
}

impl Verdict {
    /// Its letter in the table.
    pub fn letter(self) -> char {
        match self {
            Verdict::Allow => 'A',
            Verdict::Forbid => 'F',
            Verdict::Hide => 'H',
        }
    }
}

/// What `role` may do: `own` is whether the object is in the caller's unit
/// (for host-wide kinds it is ignored).
pub fn policy(role: UserRole, action: Action, kind: Kind, own: bool) -> Verdict {
    use Action as A;
    use Kind as K;
    use Verdict::{Allow, Forbid, Hide};
    let allow_if = |ok: bool| if ok { Allow } else { Forbid };
    match role {
        UserRole::Admin => Allow,
        UserRole::Auditor => allow_if(action == A::Read),
        UserRole::UnitAdmin | UserRole::UnitUser => {
            let admin = role == UserRole::UnitAdmin;
            if kind.is_unit_scoped() && !own {
                // Another unit's object, or one of no unit: not there.
                return Hide;
            }
            match (kind, action) {
                (K::Partition, A::Read | A::Create | A::Operate) => Allow,
                (K::Partition, A::Delete) => allow_if(admin),
                (K::Template, A::Read | A::Operate) => Allow,
                (K::Template, A::Create | A::Delete | A::Manage) => allow_if(admin),
                (K::Unit | K::Request, A::Read) => Allow,
                (K::Request, A::Create) => allow_if(admin),
                (K::User | K::Token, A::Read | A::Create | A::Delete) => allow_if(admin),
                (K::Chargeback, A::Read) => allow_if(admin),
                // A unit's jobs: seen and cancelled by its users.
                (K::Job, A::Read | A::Operate) => Allow,
                // Workflows: read and run by units, written by administrators.
                (K::Workflow, A::Read | A::Operate) => Allow,
                (K::IdentityPool | K::Host | K::Infra | K::Price, A::Read) => Allow,
                _ => Forbid,
            }
        }
    }
}

/// The golden table: one line per (role, kind), one letter per action for
/// an object of the caller's unit, then for one of another unit.
pub fn table() -> String {
    let mut out = String::from(
        "# role x kind -> actions (read create operate delete manage configure)\n\
         # A allow, F forbidden (403), H hidden (404); own unit | other unit\n",
    );
    for role in UserRole::ALL {
        for kind in Kind::ALL {
            let row = |own| -> String {
                Action::ALL
                    .iter()
                    .map(|a| policy(role, *a, kind, own).letter())
                    .collect()
            };
            let _ = writeln!(
                out,
                "{:<10} {:<13} {} | {}",
                role.as_str(),
                kind.as_str(),
                row(true),
                row(false)
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The checked-in table is what `policy` says; a change to either shows
    /// up in review. `BROOD_UPDATE_AUTHZ=1` rewrites the file.
    #[test]
    fn the_golden_table_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/authz-roles.txt");
        let now = table();
        if std::env::var_os("BROOD_UPDATE_AUTHZ").is_some() {
            std::fs::write(&path, &now).expect("write the table");
            return;
        }
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        assert_eq!(
            on_disk, now,
            "tests/authz-roles.txt differs from authz::policy: rerun with BROOD_UPDATE_AUTHZ=1, \
             review the diff and commit it"
        );
    }

    #[test]
    fn whoever_cannot_read_gets_hide_for_every_action() {
        for role in UserRole::ALL {
            for kind in Kind::ALL {
                for own in [true, false] {
                    if policy(role, Action::Read, kind, own) == Verdict::Hide {
                        for a in Action::ALL {
                            assert_eq!(policy(role, a, kind, own), Verdict::Hide);
                        }
                    }
                }
            }
        }
    }
}
