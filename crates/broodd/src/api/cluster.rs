//! `/v1/cluster/...`: the catalog's hosts, zones, domains and placements,
//! answered by a broodd in cluster mode (`--catalog`); a single host
//! answers 409 on every one. Hosts, zones and domains are infrastructure of
//! kind `host`: every role reads them, the administrator changes them.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use brood_api::cluster::{
    ClusterCapacity, ClusterDomain, ClusterDomainList, ClusterDomainPolicy, ClusterHost,
    ClusterHostAddRequest, ClusterHostList, ClusterInfo, ClusterMigrateRequest, ClusterMigration,
    ClusterOps, ClusterOpsAddRequest, ClusterOpsAdded, ClusterOpsList, ClusterPlaceRequest,
    ClusterPlacement, ClusterPlacementList, ClusterZone, ClusterZoneAddRequest, ClusterZoneList,
};
use brood_api::{ErrorBody, ErrorCode};
use brood_cluster::{
    Capacity, ClusterError, DomainPolicy, HostRecord, HostSpec, Importance, PartitionDef,
    Placement, Requirement, Zone,
};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::Auth;
use super::doc::{Common, JsonBody};
use super::error::{ApiError, ApiResult};
use super::extract::ApiJson;
use super::jobs::{WaitQuery, partition_job};
use crate::cluster::{Cluster, Member};
use crate::host::Host;
use crate::tenancy::{Action, Kind};

type D = State<Arc<Host>>;

pub fn routes(r: OpenApiRouter<Arc<Host>>) -> OpenApiRouter<Arc<Host>> {
    r.routes(routes!(info))
        .routes(routes!(host_list, host_add))
        .routes(routes!(host_show, host_remove))
        .routes(routes!(host_drain))
        .routes(routes!(host_undrain))
        .routes(routes!(zone_list, zone_add))
        .routes(routes!(domain_list, domain_put))
        .routes(routes!(placement_list, placement_add))
        .routes(routes!(ops_list, ops_add))
        .routes(routes!(ops_remove))
        .routes(routes!(partition_migrate))
}

impl From<ClusterError> for ApiError {
    fn from(e: ClusterError) -> Self {
        match e {
            ClusterError::Invalid(m) | ClusterError::Url(m) => ApiError::bad_request(m),
            e @ ClusterError::NotFound { .. } => ApiError::new(
                StatusCode::NOT_FOUND,
                ErrorCode::NotFound,
                format!("{e}: `brood host list` shows the hosts"),
            ),
            ClusterError::Conflict(m) => ApiError::conflict(m),
            e @ ClusterError::Refused(_) => ApiError::new(
                StatusCode::CONFLICT,
                ErrorCode::CapacityExceeded,
                e.to_string(),
            ),
            e @ (ClusterError::Unavailable { .. } | ClusterError::Pool(_)) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::Unavailable,
                format!("{e}: is PostgreSQL up? try again"),
            ),
            e @ ClusterError::Db(_) => ApiError::internal("a catalog statement", &e),
        }
    }
}

/// The membership, or 409 on a single host.
fn member(d: &Host) -> Result<Arc<Member>, ApiError> {
    d.feature::<Cluster>().member().ok_or_else(|| {
        ApiError::conflict(
            "this broodd is a single host, not in a cluster: start it with --catalog postgres://USER@HOST:PORT/DB",
        )
    })
}

fn cap_out(c: Capacity) -> ClusterCapacity {
    ClusterCapacity {
        memory_mib: c.memory_mib,
        vcpus: c.vcpus,
        disk_gib: c.disk_gib,
    }
}

fn cap_in(c: ClusterCapacity) -> Capacity {
    Capacity {
        memory_mib: c.memory_mib,
        vcpus: c.vcpus,
        disk_gib: c.disk_gib,
    }
}

fn host_out(h: HostRecord) -> ClusterHost {
    ClusterHost {
        name: h.name,
        address: h.address,
        state: h.state.as_str().to_owned(),
        capacity: cap_out(h.capacity),
        used: cap_out(h.used),
        partitions: h.partitions,
        zones: h.zones,
        silent_ms: h.silent_ms,
        broodd_version: h.broodd_version,
        ops: None,
    }
}

fn placement_out(p: Placement) -> ClusterPlacement {
    ClusterPlacement {
        partition: p.partition,
        name: p.name,
        domain: p.domain,
        host: p.host,
        generation: p.generation,
        held: p.held,
        demand: cap_out(p.demand),
        evict: p.evict,
    }
}

fn ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Shows this broodd's membership.
#[utoipa::path(
    get,
    path = "/v1/cluster",
    tag = "cluster",
    operation_id = "show_cluster",
    responses(
        (status = 200, description = "This host's name, the catalog's schema version, the heartbeat thresholds", body = ClusterInfo),
        (status = 409, description = "broodd is a single host (no `--catalog`) (`conflict`)", body = ErrorBody),
        (status = 503, description = "the catalog did not answer within the retry deadline (`unavailable`)", body = ErrorBody),
        Common
    )
)]
async fn info(State(d): D, caller: Auth) -> ApiResult<Json<ClusterInfo>> {
    caller.check(Action::Read, Kind::Host)?;
    let m = member(&d)?;
    Ok(Json(ClusterInfo {
        host: m.cfg.name.clone(),
        schema_version: m.catalog.schema_version().await?,
        heartbeat_ms: ms(m.cfg.heartbeat),
        suspect_after_ms: m.cfg.liveness.suspect_after_ms,
        failed_after_ms: m.cfg.liveness.failed_after_ms,
    }))
}

/// Lists the hosts of the catalog.
#[utoipa::path(
    get,
    path = "/v1/cluster/hosts",
    tag = "cluster",
    operation_id = "list_cluster_hosts",
    responses(
        (status = 200, description = "Every host, by name, with its state, capacity, use and zones", body = ClusterHostList),
        (status = 409, description = "broodd is a single host (`conflict`)", body = ErrorBody),
        (status = 503, description = "the catalog did not answer (`unavailable`)", body = ErrorBody),
        Common
    )
)]
async fn host_list(State(d): D, caller: Auth) -> ApiResult<Json<ClusterHostList>> {
    caller.check(Action::Read, Kind::Host)?;
    let m = member(&d)?;
    let hosts = m.catalog.hosts(m.cfg.liveness).await?;
    let watchers = m.catalog.watchers().await?;
    Ok(Json(ClusterHostList {
        hosts: hosts
            .into_iter()
            .map(|h| {
                let ops = watchers.get(&h.name).cloned();
                ClusterHost { ops, ..host_out(h) }
            })
            .collect(),
    }))
}

/// Adds a host ahead of its broodd (it is `pending` until that registers).
#[utoipa::path(
    post,
    path = "/v1/cluster/hosts",
    tag = "cluster",
    operation_id = "add_cluster_host",
    request_body = ClusterHostAddRequest,
    responses(
        (status = 201, description = "The host", body = ClusterHost),
        (status = 400, description = "malformed JSON, an unknown field, an invalid name or zone (`bad_request`)", body = ErrorBody),
        (status = 409, description = "a host of that name exists, or broodd is a single host (`conflict`)", body = ErrorBody),
        (status = 503, description = "the catalog did not answer (`unavailable`)", body = ErrorBody),
        JsonBody,
        Common
    )
)]
async fn host_add(
    State(d): D,
    caller: Auth,
    ApiJson(req): ApiJson<ClusterHostAddRequest>,
) -> ApiResult<(StatusCode, Json<ClusterHost>)> {
    caller.check(Action::Configure, Kind::Host)?;
    let m = member(&d)?;
    let zones = brood_cluster::parse_zones(&req.zones)?;
    m.catalog
        .add_host(&HostSpec {
            name: req.name.clone(),
            address: req.address,
            capacity: cap_in(req.capacity),
            zones,
        })
        .await?;
    let h = m.catalog.host(&req.name, m.cfg.liveness).await?;
    Ok((StatusCode::CREATED, Json(host_out(h))))
}

/// Shows one host.
#[utoipa::path(
    get,
    path = "/v1/cluster/hosts/{name}",
    tag = "cluster",
    operation_id = "show_cluster_host",
    params(("name" = String, Path, description = "Host name")),
    responses(
        (status = 400, description = "the name in the path is not valid UTF-8", body = ErrorBody),
        (status = 200, description = "The host", body = ClusterHost),
        (status = 404, description = "no host of that name in the catalog (`not_found`)", body = ErrorBody),
        (status = 409, description = "broodd is a single host (`conflict`)", body = ErrorBody),
        (status = 503, description = "the catalog did not answer (`unavailable`)", body = ErrorBody),
        Common
    )
)]
async fn host_show(
    State(d): D,
    caller: Auth,
    Path(name): Path<String>,
) -> ApiResult<Json<ClusterHost>> {
    caller.check(Action::Read, Kind::Host)?;
    let m = member(&d)?;
    Ok(Json(host_out(m.catalog.host(&name, m.cfg.liveness).await?)))
}

/// Removes a host with no partitions placed on it.
#[utoipa::path(
    delete,
    path = "/v1/cluster/hosts/{name}",
    tag = "cluster",
    operation_id = "remove_cluster_host",
    params(("name" = String, Path, description = "Host name")),
    responses(
        (status = 400, description = "the name in the path is not valid UTF-8", body = ErrorBody),
        (status = 204, description = "Removed"),
        (status = 404, description = "no host of that name in the catalog (`not_found`)", body = ErrorBody),
        (status = 409, description = "partitions are placed on it, or broodd is a single host (`conflict`)", body = ErrorBody),
        (status = 503, description = "the catalog did not answer (`unavailable`)", body = ErrorBody),
        Common
    )
)]
async fn host_remove(State(d): D, caller: Auth, Path(name): Path<String>) -> ApiResult<StatusCode> {
    caller.check(Action::Configure, Kind::Host)?;
    let m = member(&d)?;
    m.catalog.remove_host(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Drains a host: placement puts no new partitions there.
#[utoipa::path(
    post,
    path = "/v1/cluster/hosts/{name}/drain",
    tag = "cluster",
    operation_id = "drain_cluster_host",
    params(("name" = String, Path, description = "Host name")),
    responses(
        (status = 400, description = "the name in the path is not valid UTF-8", body = ErrorBody),
        (status = 200, description = "The host, draining", body = ClusterHost),
        (status = 404, description = "no host of that name in the catalog (`not_found`)", body = ErrorBody),
        (status = 409, description = "broodd is a single host (`conflict`)", body = ErrorBody),
        (status = 503, description = "the catalog did not answer (`unavailable`)", body = ErrorBody),
        Common
    )
)]
async fn host_drain(
    State(d): D,
    caller: Auth,
    Path(name): Path<String>,
) -> ApiResult<Json<ClusterHost>> {
    set_draining(&d, &caller, &name, true).await
}

/// Undrains a host: it takes partitions again.
#[utoipa::path(
    post,
    path = "/v1/cluster/hosts/{name}/undrain",
    tag = "cluster",
    operation_id = "undrain_cluster_host",
    params(("name" = String, Path, description = "Host name")),
    responses(
        (status = 400, description = "the name in the path is not valid UTF-8", body = ErrorBody),
        (status = 200, description = "The host", body = ClusterHost),
        (status = 404, description = "no host of that name in the catalog (`not_found`)", body = ErrorBody),
        (status = 409, description = "broodd is a single host (`conflict`)", body = ErrorBody),
        (status = 503, description = "the catalog did not answer (`unavailable`)", body = ErrorBody),
        Common
    )
)]
async fn host_undrain(
    State(d): D,
    caller: Auth,
    Path(name): Path<String>,
) -> ApiResult<Json<ClusterHost>> {
    set_draining(&d, &caller, &name, false).await
}

async fn set_draining(
    d: &Host,
    caller: &Auth,
    name: &str,
    draining: bool,
) -> ApiResult<Json<ClusterHost>> {
    caller.check(Action::Configure, Kind::Host)?;
    let m = member(d)?;
    m.catalog.set_draining(name, draining).await?;
    Ok(Json(host_out(m.catalog.host(name, m.cfg.liveness).await?)))
}

/// Lists zones and the hosts providing them.
#[utoipa::path(
    get,
    path = "/v1/cluster/zones",
    tag = "cluster",
    operation_id = "list_cluster_zones",
    responses(
        (status = 200, description = "Every zone, by kind then name", body = ClusterZoneList),
        (status = 409, description = "broodd is a single host (`conflict`)", body = ErrorBody),
        (status = 503, description = "the catalog did not answer (`unavailable`)", body = ErrorBody),
        Common
    )
)]
async fn zone_list(State(d): D, caller: Auth) -> ApiResult<Json<ClusterZoneList>> {
    caller.check(Action::Read, Kind::Host)?;
    let m = member(&d)?;
    let zones = m.catalog.zones().await?;
    Ok(Json(ClusterZoneList {
        zones: zones
            .into_iter()
            .map(|(z, hosts)| ClusterZone {
                zone: z.to_string(),
                hosts,
            })
            .collect(),
    }))
}

/// Adds a zone (an administrator-defined kind is added with it).
#[utoipa::path(
    post,
    path = "/v1/cluster/zones",
    tag = "cluster",
    operation_id = "add_cluster_zone",
    request_body = ClusterZoneAddRequest,
    responses(
        (status = 201, description = "The zone (idempotent)", body = ClusterZone),
        (status = 400, description = "malformed JSON or a zone that is not KIND:NAME (`bad_request`)", body = ErrorBody),
        (status = 409, description = "broodd is a single host (`conflict`)", body = ErrorBody),
        (status = 503, description = "the catalog did not answer (`unavailable`)", body = ErrorBody),
        JsonBody,
        Common
    )
)]
async fn zone_add(
    State(d): D,
    caller: Auth,
    ApiJson(req): ApiJson<ClusterZoneAddRequest>,
) -> ApiResult<(StatusCode, Json<ClusterZone>)> {
    caller.check(Action::Configure, Kind::Host)?;
    let m = member(&d)?;
    let zone: Zone = req.zone.parse()?;
    m.catalog.add_zone(&zone).await?;
    let hosts = m
        .catalog
        .zones()
        .await?
        .into_iter()
        .find(|(z, _)| *z == zone)
        .map(|(_, h)| h)
        .unwrap_or_default();
    Ok((
        StatusCode::CREATED,
        Json(ClusterZone {
            zone: zone.to_string(),
            hosts,
        }),
    ))
}

/// Lists domains and their policies.
#[utoipa::path(
    get,
    path = "/v1/cluster/domains",
    tag = "cluster",
    operation_id = "list_cluster_domains",
    responses(
        (status = 200, description = "Every domain, by name", body = ClusterDomainList),
        (status = 409, description = "broodd is a single host (`conflict`)", body = ErrorBody),
        (status = 503, description = "the catalog did not answer (`unavailable`)", body = ErrorBody),
        Common
    )
)]
async fn domain_list(State(d): D, caller: Auth) -> ApiResult<Json<ClusterDomainList>> {
    caller.check(Action::Read, Kind::Host)?;
    let m = member(&d)?;
    let domains = m.catalog.domains().await?;
    Ok(Json(ClusterDomainList {
        domains: domains
            .into_iter()
            .map(|(name, p)| ClusterDomain {
                name,
                policy: ClusterDomainPolicy {
                    importance: Some(p.importance.as_str().to_owned()),
                    available: p.available,
                    preferred: p.preferred,
                    guarantee: cap_out(p.guarantee),
                    limit: cap_out(p.limit),
                },
            })
            .collect(),
    }))
}

/// Creates a domain, or replaces its policy.
#[utoipa::path(
    post,
    path = "/v1/cluster/domains",
    tag = "cluster",
    operation_id = "put_cluster_domain",
    request_body = ClusterDomain,
    responses(
        (status = 200, description = "The domain", body = ClusterDomain),
        (status = 400, description = "malformed JSON, an invalid name, importance or host name (`bad_request`)", body = ErrorBody),
        (status = 409, description = "broodd is a single host (`conflict`)", body = ErrorBody),
        (status = 503, description = "the catalog did not answer (`unavailable`)", body = ErrorBody),
        JsonBody,
        Common
    )
)]
async fn domain_put(
    State(d): D,
    caller: Auth,
    ApiJson(ClusterDomain { name, policy: req }): ApiJson<ClusterDomain>,
) -> ApiResult<Json<ClusterDomain>> {
    caller.check(Action::Configure, Kind::Host)?;
    let m = member(&d)?;
    let importance: Importance = match &req.importance {
        Some(i) => i.parse()?,
        None => Importance::default(),
    };
    for h in req.available.iter().chain(&req.preferred) {
        brood_cluster::model::check_name("host", h)?;
    }
    let policy = DomainPolicy {
        importance,
        available: req.available.clone(),
        preferred: req.preferred.clone(),
        guarantee: cap_in(req.guarantee),
        limit: cap_in(req.limit),
    };
    m.catalog.put_domain(&name, &policy).await?;
    Ok(Json(ClusterDomain {
        name,
        policy: ClusterDomainPolicy {
            importance: Some(importance.as_str().to_owned()),
            ..req
        },
    }))
}

/// Lists placements.
#[utoipa::path(
    get,
    path = "/v1/cluster/placements",
    tag = "cluster",
    operation_id = "list_cluster_placements",
    responses(
        (status = 200, description = "Every placement, by partition name", body = ClusterPlacementList),
        (status = 409, description = "broodd is a single host (`conflict`)", body = ErrorBody),
        (status = 503, description = "the catalog did not answer (`unavailable`)", body = ErrorBody),
        Common
    )
)]
async fn placement_list(State(d): D, caller: Auth) -> ApiResult<Json<ClusterPlacementList>> {
    caller.check(Action::Read, Kind::Host)?;
    let m = member(&d)?;
    let all = m.catalog.placements(None).await?;
    Ok(Json(ClusterPlacementList {
        placements: all.into_iter().map(placement_out).collect(),
    }))
}

/// Defines a partition in the catalog and places it: the host is chosen
/// by zones, domain and load, and committed by a conditional write. The
/// same request again answers the same placement. With `definition`, the
/// chosen host's broodd also creates it (`held` once it has).
#[utoipa::path(
    post,
    path = "/v1/cluster/placements",
    tag = "cluster",
    operation_id = "place_cluster_partition",
    request_body = ClusterPlaceRequest,
    responses(
        (status = 201, description = "The placement", body = ClusterPlacement),
        (status = 400, description = "malformed JSON, an invalid name or requirement, or a `definition` that is not valid or names another partition (`bad_request`)", body = ErrorBody),
        (status = 409, description = "no host can take it, with the reason (`capacity_exceeded`); a partition of that name is defined differently, a `definition` for one that runs already, or broodd is a single host (`conflict`)", body = ErrorBody),
        (status = 503, description = "the catalog did not answer (`unavailable`)", body = ErrorBody),
        JsonBody,
        Common
    )
)]
async fn placement_add(
    State(d): D,
    caller: Auth,
    ApiJson(req): ApiJson<ClusterPlaceRequest>,
) -> ApiResult<(StatusCode, Json<ClusterPlacement>)> {
    caller.check(Action::Configure, Kind::Host)?;
    let m = member(&d)?;
    let requires = req
        .requires
        .iter()
        .map(|r| Requirement::parse(r))
        .collect::<Result<Vec<_>, _>>()?;
    let mut demand = cap_in(req.demand);
    let spec = match &req.definition {
        Some(def) => {
            let charge = check_definition(&d.paths, &req.name, def)?;
            demand.memory_mib = demand.memory_mib.max(charge.memory_mib);
            demand.vcpus = demand.vcpus.max(charge.vcpus);
            demand.disk_gib = demand.disk_gib.max(charge.disk_gib);
            Some(
                serde_json::to_value(def)
                    .map_err(|e| ApiError::internal("encode the definition", &e))?,
            )
        }
        None => None,
    };
    let def = PartitionDef {
        id: uuid::Uuid::new_v4(),
        name: req.name,
        domain: req.domain.unwrap_or_else(|| "default".to_owned()),
        demand,
        requires,
    };
    let p = m.catalog.place(&def, m.cfg.liveness).await?;
    if let Some(spec) = spec {
        if p.held {
            return Err(ApiError::conflict(format!(
                "{} already runs on host {} (`brood host placements`): pick another name",
                p.name,
                p.host.as_deref().unwrap_or("?")
            )));
        }
        m.catalog.define_at(p.partition, &spec).await?;
    }
    Ok((StatusCode::CREATED, Json(placement_out(p))))
}

/// Checks a definition to create on the host placement chooses, as far as
/// this host can (the networks and bridges it names are the chosen host's:
/// that host checks them when it defines it); returns what it charges.
fn check_definition(
    paths: &crate::host::Paths,
    name: &str,
    def: &brood_api::DefineRequest,
) -> ApiResult<Capacity> {
    if def.name != name {
        return Err(ApiError::bad_request(format!(
            "the definition names {:?}, the placement {name:?}: give both the same name",
            def.name
        )));
    }
    let networks: std::collections::BTreeSet<String> = def
        .configs
        .values()
        .flat_map(|c| c.nics.iter().map(|n| n.network.clone()))
        .collect();
    let active = crate::convert::validate_define_on(def, &networks)?;
    if crate::host::boot_disk::of(&def.configs).is_some() {
        return Err(ApiError::bad_request(
            "a partition that boots a disk image cannot be created elsewhere (its image is \
             uploaded to the host that has it): create it on that host",
        ));
    }
    let disks = crate::host::config::all_disks(&def.configs)?;
    let config = def.configs.get(&active).cloned().unwrap_or_default();
    // Charged as a define charges it: its image's root overlay is a disk too.
    let r = crate::host::root::with_root(
        paths,
        uuid::Uuid::new_v4(),
        &def.configs,
        crate::host::config::demand(&config, &disks),
    )?;
    Ok(Capacity {
        memory_mib: r.memory_mib,
        vcpus: r.vcpus,
        disk_gib: r.disk_gib,
    })
}

/// Lists the operations instances and the hosts each watches.
#[utoipa::path(
    get,
    path = "/v1/cluster/ops",
    tag = "cluster",
    operation_id = "list_cluster_ops",
    responses(
        (status = 200, description = "Every authorized operations instance, by name, with its hosts", body = ClusterOpsList),
        (status = 409, description = "broodd is a single host (`conflict`)", body = ErrorBody),
        (status = 503, description = "the catalog did not answer (`unavailable`)", body = ErrorBody),
        Common
    )
)]
async fn ops_list(State(d): D, caller: Auth) -> ApiResult<Json<ClusterOpsList>> {
    caller.check(Action::Read, Kind::Host)?;
    let m = member(&d)?;
    let ops = m.catalog.ops_instances().await?;
    Ok(Json(ClusterOpsList {
        ops: ops
            .into_iter()
            .map(|o| ClusterOps {
                name: o.name,
                silent_ms: o.silent_ms,
                hosts: o.hosts,
            })
            .collect(),
    }))
}

/// Authorizes a new operations instance: makes its token (answered once)
/// and keeps the token's SHA-256 in the catalog.
#[utoipa::path(
    post,
    path = "/v1/cluster/ops",
    tag = "cluster",
    operation_id = "add_cluster_ops",
    request_body = ClusterOpsAddRequest,
    responses(
        (status = 201, description = "The instance and its token (shown once)", body = ClusterOpsAdded),
        (status = 400, description = "malformed JSON, an unknown field or an invalid name (`bad_request`)", body = ErrorBody),
        (status = 409, description = "an instance of that name exists, or broodd is a single host (`conflict`)", body = ErrorBody),
        (status = 503, description = "the catalog did not answer (`unavailable`)", body = ErrorBody),
        JsonBody,
        Common
    )
)]
async fn ops_add(
    State(d): D,
    caller: Auth,
    ApiJson(req): ApiJson<ClusterOpsAddRequest>,
) -> ApiResult<(StatusCode, Json<ClusterOpsAdded>)> {
    caller.check(Action::Configure, Kind::Host)?;
    let m = member(&d)?;
    let (_, token, _) = crate::tenancy::token::mint()?;
    m.catalog
        .add_ops(&req.name, &crate::cluster::ops::token_hash(&token))
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(ClusterOpsAdded {
            name: req.name,
            token,
        }),
    ))
}

/// Withdraws an operations instance's authorization (its leases go too).
#[utoipa::path(
    delete,
    path = "/v1/cluster/ops/{name}",
    tag = "cluster",
    operation_id = "remove_cluster_ops",
    params(("name" = String, Path, description = "The instance's name")),
    responses(
        (status = 204, description = "Removed"),
        (status = 400, description = "the name in the path is not valid UTF-8", body = ErrorBody),
        (status = 404, description = "no instance of that name (`not_found`)", body = ErrorBody),
        (status = 409, description = "broodd is a single host (`conflict`)", body = ErrorBody),
        (status = 503, description = "the catalog did not answer (`unavailable`)", body = ErrorBody),
        Common
    )
)]
async fn ops_remove(State(d): D, caller: Auth, Path(name): Path<String>) -> ApiResult<StatusCode> {
    caller.check(Action::Configure, Kind::Host)?;
    let m = member(&d)?;
    m.catalog.remove_ops(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Live-migrates a running partition to another host of the cluster, as
/// a job (`partition.migrate`): the target reserves it in its ledger and
/// waits on `-incoming`, this host's QEMU pre-copies to it over TCP, the
/// catalog commits the move, the target resumes it and this host releases
/// it. A failure leaves it running here and nothing held on the target.
#[utoipa::path(
    post,
    path = "/v1/partitions/{name}/migrate",
    tag = "cluster",
    operation_id = "migrate_partition",
    params(("name" = String, Path, description = "Partition name or uuid"), WaitQuery),
    request_body = ClusterMigrateRequest,
    responses(
        (status = 200, description = "Migrated: where it runs now, QEMU's total time and downtime", body = ClusterMigration),
        (status = 202, description = "With `wait=false`: the job, queued (`GET /v1/jobs/{id}`)", body = brood_api::Job),
        (status = 400, description = "malformed JSON, a `to` that is not a host name, or `to` names this host (`bad_request`)", body = ErrorBody),
        (status = 404, description = "no partition has that name or uuid, or no host is named `to` (`not_found`)", body = ErrorBody),
        (status = 409, description = "not running, a template, a forked child or with disks (`invalid_transition`); no other host can take it (`capacity_exceeded`); the target refused, QEMU's stream failed or the target did not commit, it runs here as before, broodd is a single host, or another operation holds it (`conflict`)", body = ErrorBody),
        (status = 503, description = "the catalog did not answer, or the job was refused: its queue is full (`unavailable`)", body = ErrorBody),
        JsonBody,
        Common
    )
)]
async fn partition_migrate(
    State(d): D,
    caller: Auth,
    Path(name): Path<String>,
    Query(w): Query<WaitQuery>,
    ApiJson(req): ApiJson<ClusterMigrateRequest>,
) -> ApiResult<Response> {
    // What can be refused at once is, before a job is queued (who may,
    // then whether there is a cluster at all).
    caller.partition(&d, &name, Action::Operate).await?;
    member(&d)?;
    if let Some(to) = &req.to {
        brood_cluster::model::check_name("host", to)?;
    }
    let work = move |d: Arc<Host>, _actor: String, uuid| async move {
        let m = member(&d)?;
        let rec = d
            .ledger
            .partition_by_uuid(uuid)
            .await?
            .ok_or_else(|| ApiError::not_found(&format!("partition {uuid} is gone")))?;
        let name = rec.name.clone();
        let done = crate::cluster::migrate::migrate_out(&d, &m, rec, req.to.as_deref()).await?;
        let body = serde_json::to_vec(&ClusterMigration {
            partition: name,
            from: done.from,
            to: done.to,
            generation: done.generation,
            total_ms: done.total_ms,
            downtime_ms: done.downtime_ms,
            wall_ms: done.wall_ms,
        })
        .map_err(|e| ApiError::internal("encode the migration", &e))?;
        Ok(crate::job::Done::ok(body))
    };
    partition_job(
        &d,
        &caller,
        &name,
        Action::Operate,
        "partition.migrate",
        w.wait(),
        work,
    )
    .await
}
