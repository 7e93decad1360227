//! Units, their requests and decisions, and the infrastructure document:
//! what `/v1/units`, `/v1/requests` and `/v1/infra` do once the route has
//! checked the caller. Decisions are one ledger op (`UnitOp::Decide`) that
//! moves the capacity itself; this module turns its refusals into
//! messages that say what to do.

use brood_api as api;
use brood_ledger::{
    LedgerError, Op, Owner, RequestState, Resources, Tx, UnitOp, UnitRecord, UserRole,
};
use uuid::Uuid;

use super::authz::{Action, Kind};
use super::caller::Caller;
use super::lookup::Authorized;
use crate::host::{Host, HostError, HostResult};
use crate::wire::resources_out;

fn state_out(s: RequestState) -> api::RequestState {
    match s {
        RequestState::Pending => api::RequestState::Pending,
        RequestState::Approved => api::RequestState::Approved,
        RequestState::Partial => api::RequestState::Partial,
        RequestState::Rejected => api::RequestState::Rejected,
    }
}

/// A unit as the API shows it, with its use.
pub async fn view(host: &Host, u: &UnitRecord) -> HostResult<api::Unit> {
    let (used, free) = host.ledger.unit_usage(u.uuid).await?;
    Ok(api::Unit {
        uuid: u.uuid,
        name: u.name.clone(),
        contact: u.contact.clone(),
        allocated: resources_out(&u.allocation),
        used: resources_out(&used),
        free: resources_out(&free),
        networks: u.networks.clone(),
        templates: u.templates.clone(),
        created_at: u.created_at.clone(),
    })
}

/// Registers a unit.
pub async fn register(
    host: &Host,
    caller: &Caller,
    req: api::UnitRegisterRequest,
) -> HostResult<api::Unit> {
    caller.check(Action::Create, Kind::Unit)?;
    let uuid = Uuid::new_v4();
    let tx = Tx::new(
        caller.actor(),
        format!("register unit {}", req.name),
        vec![Op::Unit(UnitOp::Register {
            uuid,
            name: req.name.clone(),
            contact: req.contact,
        })],
    );
    match host.ledger.commit(tx).await {
        Ok(_) => {}
        Err(LedgerError::NameTaken { name }) => {
            return Err(HostError::Conflict(format!(
                "a unit named {name:?} exists: pick another name"
            )));
        }
        Err(e) => return Err(e.into()),
    }
    let rec = host
        .ledger
        .unit_by_uuid(uuid)
        .await?
        .ok_or_else(|| HostError::invalid("the unit vanished after registering"))?;
    view(host, &rec).await
}

/// The units the caller may see.
pub async fn list(host: &Host, caller: &Caller) -> HostResult<api::UnitList> {
    caller.check(Action::Read, Kind::Unit)?;
    let mut items = Vec::new();
    for u in host.ledger.units().await? {
        if caller.scope().is_none_or(|s| s == u.uuid) {
            items.push(view(host, &u).await?);
        }
    }
    Ok(api::UnitList { items })
}

/// A request as the API shows it.
pub async fn request_view(
    host: &Host,
    r: &brood_ledger::UnitRequest,
) -> HostResult<api::UnitRequestView> {
    let unit = host
        .ledger
        .unit_by_uuid(r.unit)
        .await?
        .map_or_else(|| r.unit.to_string(), |u| u.name);
    Ok(api::UnitRequestView {
        id: r.id,
        unit,
        want: resources_out(&r.want),
        networks: r.networks.clone(),
        templates: r.templates.clone(),
        state: state_out(r.state),
        granted: r.granted.as_ref().map(resources_out),
        note: r.note.clone(),
        created_at: r.created_at.clone(),
        decided_at: r.decided_at.clone(),
        decided_by: r.decided_by.clone(),
    })
}

/// Files a request for `unit`.
pub async fn request(
    host: &Host,
    caller: &Caller,
    unit: &Authorized<UnitRecord>,
    req: api::AllocationRequest,
) -> HostResult<api::UnitRequestView> {
    let a = unit.allocation;
    let want = Resources {
        memory_mib: req.memory_mib.unwrap_or(a.memory_mib),
        vcpus: req.vcpus.unwrap_or(a.vcpus),
        disk_gib: req.disk_gib.unwrap_or(a.disk_gib),
        nics: req.nics.unwrap_or(a.nics),
    };
    let committed = host
        .ledger
        .commit(Tx::new(
            caller.actor(),
            format!("unit {} asks for {want}", unit.name),
            vec![Op::Unit(UnitOp::Request {
                unit: unit.uuid,
                want,
                networks: req.networks.unwrap_or_else(|| unit.networks.clone()),
                templates: req.templates.unwrap_or_else(|| unit.templates.clone()),
            })],
        ))
        .await?;
    // The request's number is in the audit record of its own transaction.
    let entry = host
        .ledger
        .log(Some(committed.id.0.saturating_sub(1)), 1)
        .await?;
    let id = entry
        .first()
        .and_then(|e| e.changes.pointer("/0/id"))
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| HostError::invalid("the request's audit record has no number"))?;
    let rec = host
        .ledger
        .unit_request(id)
        .await?
        .ok_or_else(|| HostError::invalid("the request vanished after filing"))?;
    request_view(host, &rec).await
}

/// Requests the caller may see: of its unit, or all; pending only or all.
pub async fn requests(
    host: &Host,
    caller: &Caller,
    pending_only: bool,
) -> HostResult<api::UnitRequestList> {
    caller.check(Action::Read, Kind::Request)?;
    let mut items = Vec::new();
    for r in host
        .ledger
        .unit_requests(caller.scope(), pending_only)
        .await?
    {
        items.push(request_view(host, &r).await?);
    }
    Ok(api::UnitRequestList { items })
}

/// Approves (in part, when `grant` differs from the request) or rejects.
pub async fn decide(
    host: &Host,
    caller: &Caller,
    req: &Authorized<brood_ledger::UnitRequest>,
    grant: Option<Resources>,
    note: Option<String>,
) -> HostResult<api::UnitRequestView> {
    let state = match grant {
        None => RequestState::Rejected,
        Some(g) if g == req.want => RequestState::Approved,
        Some(_) => RequestState::Partial,
    };
    let unit = host
        .ledger
        .unit_by_uuid(req.unit)
        .await?
        .ok_or_else(|| HostError::invalid("the request's unit is gone"))?;
    let tx = Tx::new(
        caller.actor(),
        format!(
            "{} request {} of unit {}",
            state.as_str(),
            req.id,
            unit.name
        ),
        vec![Op::Unit(UnitOp::Decide {
            id: req.id,
            state,
            grant: (state == RequestState::Partial).then_some(grant).flatten(),
            note,
        })],
    );
    match host.ledger.commit(tx).await {
        Ok(_) => {}
        Err(LedgerError::Insufficient {
            kind,
            owner: Owner::Unit(_),
            have,
            want,
        }) => return Err(shrink_refused(host, &unit, kind, have, want).await?),
        Err(LedgerError::Insufficient {
            kind,
            owner: Owner::Available,
            have,
            want,
        }) => {
            return Err(HostError::Conflict(format!(
                "the host has {have} {kind} free and the request needs {want} more: approve \
                 less (`brood unit approve {} --{} N`) or free capacity first",
                req.id,
                flag(kind)
            )));
        }
        Err(e) => return Err(e.into()),
    }
    let rec = host
        .ledger
        .unit_request(req.id)
        .await?
        .ok_or_else(|| HostError::invalid("the request vanished after its decision"))?;
    request_view(host, &rec).await
}

fn flag(kind: brood_ledger::ResourceKind) -> &'static str {
    match kind {
        brood_ledger::ResourceKind::MemoryMib => "memory",
        brood_ledger::ResourceKind::Vcpus => "vcpus",
        brood_ledger::ResourceKind::DiskGib => "disk",
        brood_ledger::ResourceKind::Nics => "nics",
    }
}

/// A shrink below what the unit uses: say which VMs to stop or delete.
async fn shrink_refused(
    host: &Host,
    unit: &UnitRecord,
    kind: brood_ledger::ResourceKind,
    have: u64,
    want: u64,
) -> HostResult<HostError> {
    let mut holders = Vec::new();
    let holdings = host.ledger.holdings().await?;
    for p in host
        .ledger
        .unit_partitions(unit.uuid, None, usize::MAX)
        .await?
    {
        let amount: u64 = holdings
            .iter()
            .filter(|h| h.owner == Owner::Partition(p.uuid) && h.kind == kind)
            .map(|h| h.amount)
            .sum();
        if amount > 0 {
            holders.push((amount, p.name));
        }
    }
    holders.sort_by(|a, b| b.cmp(a));
    let list: Vec<String> = holders
        .iter()
        .take(10)
        .map(|(a, n)| format!("{n} ({a})"))
        .collect();
    Ok(HostError::Conflict(format!(
        "unit {} uses more {kind} than the shrink leaves: {have} are free and the shrink takes \
         {want}; stop or delete some of its VMs first: {}",
        unit.name,
        if list.is_empty() {
            "none hold any (retry)".to_owned()
        } else {
            list.join(", ")
        }
    )))
}

/// The infrastructure as the caller may see it.
pub async fn infra(host: &Host, caller: &Caller) -> HostResult<api::InfraView> {
    caller.check(Action::Read, Kind::Infra)?;
    let doc = host.ledger.infra().await?;
    let mut dc: Option<api::Datacenter> = doc
        .map(serde_json::from_value)
        .transpose()
        .map_err(|e| HostError::corrupt("the infrastructure document", e))?;
    let Some(unit) = caller.unit() else {
        return Ok(api::InfraView {
            datacenter: dc,
            unit: None,
        });
    };
    let rec = host.ledger.unit_by_uuid(unit.uuid).await?;
    let networks = rec.as_ref().map(|u| u.networks.clone()).unwrap_or_default();
    let mine: std::collections::HashSet<String> = host
        .ledger
        .unit_partitions(unit.uuid, None, usize::MAX)
        .await?
        .into_iter()
        .map(|p| p.name)
        .collect();
    if let Some(dc) = dc.as_mut() {
        for infra in &mut dc.infrastructures {
            infra.hosts.clear();
            infra.networks.retain(|n| networks.contains(n));
            for s in &mut infra.services {
                for r in &mut s.roles {
                    r.vms.retain(|v| mine.contains(v));
                }
                s.roles.retain(|r| !r.vms.is_empty());
            }
            infra.services.retain(|s| !s.roles.is_empty());
        }
    }
    Ok(api::InfraView {
        datacenter: dc,
        unit: Some(unit.name.clone()),
    })
}

/// Replaces the infrastructure document.
pub async fn set_infra(
    host: &Host,
    caller: &Caller,
    dc: api::Datacenter,
) -> HostResult<api::InfraView> {
    caller.check(Action::Configure, Kind::Infra)?;
    let doc = serde_json::to_value(&dc)
        .map_err(|e| HostError::invalid(format!("encode the infrastructure: {e}")))?;
    host.ledger
        .commit(Tx::new(
            caller.actor(),
            format!("set the infrastructure of datacenter {}", dc.name),
            vec![Op::Unit(UnitOp::SetInfra { doc })],
        ))
        .await?;
    infra(host, caller).await
}

/// A caller who is not an administrator may publish only the host ports
/// broodd leaves to business units (`--unit-ports`): a host port is the
/// host's, and a unit's user must not take one its services need.
pub fn check_ports(host: &Host, caller: &Caller, ports: &[api::PublishedPort]) -> HostResult<()> {
    if caller.role() == UserRole::Admin {
        return Ok(());
    }
    let range = host.feature::<crate::network::nat::Nat>().unit_ports();
    match ports.iter().find(|p| !range.contains(&p.host_port)) {
        Some(p) => Err(HostError::Forbidden(format!(
            "host port {}/{} is outside the host ports a business unit's user may publish ({}-{}, \
             broodd --unit-ports): publish one of those, or ask an administrator to publish it",
            p.host_port,
            p.protocol,
            range.start(),
            range.end()
        ))),
        None => Ok(()),
    }
}

/// A unit's VM may use only the networks its allocation names.
pub async fn check_networks<'a>(
    host: &Host,
    caller: &Caller,
    configs: impl Iterator<Item = &'a api::PartitionConfig>,
) -> HostResult<()> {
    let Some(u) = caller.unit() else {
        return Ok(());
    };
    let allowed = host
        .ledger
        .unit_by_uuid(u.uuid)
        .await?
        .map(|r| r.networks)
        .unwrap_or_default();
    for c in configs {
        if let Some(nic) = c.nics.iter().find(|n| !allowed.contains(&n.network)) {
            return Err(HostError::invalid(format!(
                "network {:?} is not in unit {}'s allocation: ask for it with `brood unit \
                 request {} --network {}`",
                nic.network, u.name, u.name, nic.network
            )));
        }
    }
    Ok(())
}
