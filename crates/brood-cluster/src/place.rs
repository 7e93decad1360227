//! Placement: a pure function of a catalog snapshot (no I/O, no clock).
//!
//! [`place`] looks at every host, keeps those that may take the partition
//! (state, domain, zones, capacity after other domains' guarantees, the
//! domain's limit) and picks the lowest [`Score`], a total order:
//! no displacement before displacement, preferred hosts in the domain's
//! order, better-ranked zones, least loaded after placing, then the host's
//! name. When no host fits and the partition's domain outranks partitions
//! already placed, it picks the host where displacing the fewest, least
//! important ones makes room, and names them (the caller migrates them
//! away). The catalog commits the choice by a conditional write that
//! re-checks capacity (`Catalog::commit_placement`).
//!
//! Zone rules (WO 2005/036358 [0285]-[0295]): a host must provide a
//! matching zone for every required channel (network, storage, console,
//! firmware, monitor and administrator kinds: one zone per requirement);
//! for power, processor and memory one matching zone of all those listed
//! suffices; a partition that names no processor zone runs on any host.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};

use uuid::Uuid;

use crate::model::{Capacity, DomainPolicy, HostState, Importance, Requirement, Zone, ZoneKind};

/// A partition already placed on a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resident {
    /// The partition.
    pub partition: Uuid,
    /// Its domain.
    pub domain: String,
    /// Its domain's importance.
    pub importance: Importance,
    /// What it holds.
    pub demand: Capacity,
}

/// One host as placement sees it.
#[derive(Debug, Clone)]
pub struct HostView {
    /// Its name.
    pub name: String,
    /// Its state.
    pub state: HostState,
    /// What it has.
    pub capacity: Capacity,
    /// The zones it provides.
    pub zones: Vec<Zone>,
    residents: Vec<Resident>,
    used: Capacity,
    by_domain: HashMap<String, Capacity>,
}

impl HostView {
    /// A host with the partitions placed on it.
    pub fn new(
        name: &str,
        state: HostState,
        capacity: Capacity,
        zones: Vec<Zone>,
        residents: Vec<Resident>,
    ) -> HostView {
        let mut h = HostView {
            name: name.to_owned(),
            state,
            capacity,
            zones,
            residents: Vec::new(),
            used: Capacity::ZERO,
            by_domain: HashMap::new(),
        };
        for r in residents {
            h.add(r);
        }
        h
    }

    /// Places `r` here (no checks: the snapshot follows the catalog).
    pub fn add(&mut self, r: Resident) {
        self.used = self.used.plus(r.demand);
        let d = self.by_domain.entry(r.domain.clone()).or_default();
        *d = d.plus(r.demand);
        self.residents.push(r);
    }

    /// What its partitions hold.
    pub fn used(&self) -> Capacity {
        self.used
    }

    /// Its partitions.
    pub fn residents(&self) -> &[Resident] {
        &self.residents
    }

    fn domain_use(&self, domain: &str) -> Capacity {
        self.by_domain.get(domain).copied().unwrap_or_default()
    }

    fn provides(&self, kind: &ZoneKind, names: &[String]) -> Option<usize> {
        // The rank of the best matching zone: 0 for the first name listed.
        if names.is_empty() {
            return self.zones.iter().any(|z| &z.kind == kind).then_some(0);
        }
        names
            .iter()
            .position(|n| self.zones.iter().any(|z| &z.kind == kind && &z.name == n))
    }
}

/// What placement decides from: every host and domain.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The hosts.
    pub hosts: Vec<HostView>,
    /// The domains by name.
    pub domains: BTreeMap<String, DomainPolicy>,
}

impl Snapshot {
    /// Records a decision in the snapshot (for a caller placing many).
    pub fn apply(&mut self, host: &str, r: Resident) {
        if let Some(h) = self.hosts.iter_mut().find(|h| h.name == host) {
            h.add(r);
        }
    }
}

/// A partition to place.
#[derive(Debug, Clone)]
pub struct Request {
    /// The partition.
    pub partition: Uuid,
    /// Its domain.
    pub domain: String,
    /// What it needs.
    pub demand: Capacity,
    /// The zones it requires.
    pub requires: Vec<Requirement>,
    /// A host it must leave (migration away, re-placement off a failed host).
    pub avoid: Option<String>,
}

/// How good a host is for a request: lower is better, and the order is
/// total (the host's name breaks every tie).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Score {
    /// The most important partition displaced (`None`: none).
    pub displaced_importance: Option<Importance>,
    /// How many are displaced.
    pub displaced: usize,
    /// Position in the domain's preferred list (the list's length if not in it).
    pub preferred_rank: usize,
    /// Zone ranking penalty: 0 when every zone matched its first choice.
    pub zone_penalty: usize,
    /// The host's load after placing, in thousandths of its tightest resource.
    pub load_permille: u64,
    /// The host's name.
    pub host: String,
}

/// Where a partition goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The host.
    pub host: String,
    /// Partitions to migrate away first (lower importance), may be empty.
    pub evict: Vec<Uuid>,
    /// Why this host.
    pub score: Score,
}

/// Why nothing fits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RefusalKind {
    /// The request names a domain the catalog does not have.
    UnknownDomain,
    /// A required zone is provided by no host at all.
    NoSuchZone,
    /// No host the domain may use is taking partitions.
    NoHost,
    /// Hosts qualify by zones, none has room.
    NoCapacity,
    /// No host qualifies by zones.
    NoMatchingHost,
}

/// A refused placement, with the reason in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The class of reason.
    pub kind: RefusalKind,
    /// What was wrong and what to do.
    pub reason: String,
}

/// Which requirement a host does not meet: one by its index, or a kind
/// where one zone of all those listed would do.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Miss {
    Req(usize),
    Kind(ZoneKind),
}

/// Why one host was passed over (for the refusal's summary).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Skip {
    State(HostState),
    Avoided,
    Domain,
    Zone(Miss),
    Limit,
    Room,
}

/// Picks the host for `req`, or says why none.
pub fn place(snap: &Snapshot, req: &Request) -> Result<Decision, Refusal> {
    let Some(policy) = snap.domains.get(&req.domain) else {
        return Err(Refusal {
            kind: RefusalKind::UnknownDomain,
            reason: format!(
                "domain {:?} does not exist: create it (brood host domain add) or name another",
                req.domain
            ),
        });
    };
    let kinds = match req
        .requires
        .iter()
        .map(Requirement::zone_kind)
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(k) => k,
        Err(e) => {
            return Err(Refusal {
                kind: RefusalKind::NoSuchZone,
                reason: e.to_string(),
            });
        }
    };
    if let Some(missing) = zone_nobody_provides(snap, req) {
        return Err(Refusal {
            kind: RefusalKind::NoSuchZone,
            reason: format!(
                "no host provides a zone for the requirement {missing}: add the zone to a host (brood host add --zone) or drop the requirement"
            ),
        });
    }
    let mut best: Option<Score> = None;
    let mut skips: BTreeMap<Skip, usize> = BTreeMap::new();
    let mut displaceable: Vec<&HostView> = Vec::new();
    for h in &snap.hosts {
        let zone_penalty = match eligible(h, policy, req, &kinds) {
            Ok(p) => p,
            Err(s) => {
                *skips.entry(s).or_default() += 1;
                continue;
            }
        };
        let free = free_for(snap, h, &req.domain);
        let domain_after = h.domain_use(&req.domain).plus(req.demand);
        if !policy.within_limit(domain_after) {
            *skips.entry(Skip::Limit).or_default() += 1;
            continue;
        }
        if !req.demand.fits_in(free) {
            *skips.entry(Skip::Room).or_default() += 1;
            displaceable.push(h);
            continue;
        }
        let score = Score {
            displaced_importance: None,
            displaced: 0,
            preferred_rank: preferred_rank(policy, &h.name),
            zone_penalty,
            load_permille: load_permille(h.used.plus(req.demand), h.capacity),
            host: h.name.clone(),
        };
        if best.as_ref().is_none_or(|b| score.cmp(b) == Ordering::Less) {
            best = Some(score);
        }
    }
    if let Some(score) = best {
        return Ok(Decision {
            host: score.host.clone(),
            evict: Vec::new(),
            score,
        });
    }
    let mut best: Option<(Score, Vec<Uuid>)> = None;
    for h in displaceable {
        let Some((evict, top)) = displacement(snap, h, policy, req) else {
            continue;
        };
        let freed = h
            .residents
            .iter()
            .filter(|r| evict.contains(&r.partition))
            .fold(Capacity::ZERO, |a, r| a.plus(r.demand));
        let score = Score {
            displaced_importance: Some(top),
            displaced: evict.len(),
            preferred_rank: preferred_rank(policy, &h.name),
            zone_penalty: eligible(h, policy, req, &kinds).unwrap_or(0),
            load_permille: load_permille(h.used.minus(freed).plus(req.demand), h.capacity),
            host: h.name.clone(),
        };
        if best
            .as_ref()
            .is_none_or(|(b, _)| score.cmp(b) == Ordering::Less)
        {
            best = Some((score, evict));
        }
    }
    if let Some((score, evict)) = best {
        return Ok(Decision {
            host: score.host.clone(),
            evict,
            score,
        });
    }
    Err(refusal(req, &skips))
}

/// The first required (not optional) requirement no host provides; for
/// the kinds where one zone suffices, all names of the kind count together.
fn zone_nobody_provides(snap: &Snapshot, req: &Request) -> Option<String> {
    let required: Vec<(ZoneKind, &Requirement)> = req
        .requires
        .iter()
        .filter(|r| !r.optional)
        .filter_map(|r| Some((r.zone_kind().ok()?, r)))
        .collect();
    required.iter().find_map(|(kind, r)| {
        let names: Vec<String> = if kind.one_suffices() {
            let same: Vec<&Requirement> = required
                .iter()
                .filter(|(k, _)| k == kind)
                .map(|(_, r)| *r)
                .collect();
            if same.iter().any(|r| r.zones.is_empty()) {
                Vec::new()
            } else {
                same.iter().flat_map(|r| r.zones.iter().cloned()).collect()
            }
        } else {
            r.zones.clone()
        };
        let anyone = snap
            .hosts
            .iter()
            .any(|h| h.provides(kind, &names).is_some());
        (!anyone).then(|| r.to_string())
    })
}

/// Whether `h` may take `req` apart from capacity; the zone penalty if so.
fn eligible(
    h: &HostView,
    policy: &DomainPolicy,
    req: &Request,
    kinds: &[ZoneKind],
) -> Result<usize, Skip> {
    if !h.state.takes_partitions() {
        return Err(Skip::State(h.state));
    }
    if req.avoid.as_deref() == Some(h.name.as_str()) {
        return Err(Skip::Avoided);
    }
    if !policy.allows(&h.name) {
        return Err(Skip::Domain);
    }
    zone_penalty(h, &req.requires, kinds).map_err(Skip::Zone)
}

/// The zone ranking penalty of `h` for `requires` (whose kinds, parsed
/// once per request, are `kinds`), or the requirement it does not meet.
fn zone_penalty(h: &HostView, requires: &[Requirement], kinds: &[ZoneKind]) -> Result<usize, Miss> {
    let mut penalty = 0usize;
    let optional_count = requires.iter().filter(|r| r.optional).count();
    let mut optional_seen = 0usize;
    for (i, (r, kind)) in requires.iter().zip(kinds).enumerate() {
        if r.optional {
            // Earlier optional zones rank higher: missing the first costs most.
            let weight = (optional_count - optional_seen) * 100;
            optional_seen += 1;
            penalty += h.provides(kind, &r.zones).unwrap_or(weight);
            continue;
        }
        if kind.one_suffices() {
            continue;
        }
        match h.provides(kind, &r.zones) {
            Some(rank) => penalty += rank,
            None => return Err(Miss::Req(i)),
        }
    }
    // Power, processor, memory: one matching zone of all those the
    // required ones of the kind list suffices.
    for kind in [ZoneKind::Power, ZoneKind::Processor, ZoneKind::Memory] {
        let mut listed = false;
        let mut best: Option<usize> = None;
        for (r, k) in requires.iter().zip(kinds) {
            if r.optional || *k != kind {
                continue;
            }
            listed = true;
            if let Some(rank) = h.provides(k, &r.zones) {
                best = Some(best.map_or(rank, |b: usize| b.min(rank)));
            }
        }
        match (listed, best) {
            (false, _) => {}
            (true, Some(rank)) => penalty += rank,
            (true, None) => return Err(Miss::Kind(kind)),
        }
    }
    Ok(penalty)
}

/// What `h` has free for `domain`: capacity less use, less what other
/// domains that may use `h` are guaranteed and do not use yet.
fn free_for(snap: &Snapshot, h: &HostView, domain: &str) -> Capacity {
    let mut free = h.capacity.minus(h.used);
    for (name, p) in &snap.domains {
        if name == domain || p.guarantee.is_zero() || !p.allows(&h.name) {
            continue;
        }
        free = free.minus(p.guarantee.minus(h.domain_use(name)));
    }
    free
}

fn preferred_rank(policy: &DomainPolicy, host: &str) -> usize {
    policy
        .preferred
        .iter()
        .position(|p| p == host)
        .unwrap_or(policy.preferred.len())
}

fn load_permille(used: Capacity, cap: Capacity) -> u64 {
    let part = |u: u64, c: u64| u.saturating_mul(1000).checked_div(c).unwrap_or(1000);
    part(used.memory_mib, cap.memory_mib)
        .max(part(used.vcpus, cap.vcpus))
        .max(part(used.disk_gib, cap.disk_gib))
}

/// The fewest, least important residents of `h` whose leaving makes room
/// for `req`, and the highest importance among them; `None` if even all
/// the less important ones are not enough.
fn displacement(
    snap: &Snapshot,
    h: &HostView,
    policy: &DomainPolicy,
    req: &Request,
) -> Option<(Vec<Uuid>, Importance)> {
    let mut lower: Vec<&Resident> = h
        .residents
        .iter()
        .filter(|r| r.importance < policy.importance)
        .collect();
    // Least important first; among equals the largest, so fewer move.
    lower.sort_by(|a, b| {
        a.importance
            .cmp(&b.importance)
            .then(b.demand.memory_mib.cmp(&a.demand.memory_mib))
            .then(b.demand.vcpus.cmp(&a.demand.vcpus))
            .then(a.partition.cmp(&b.partition))
    });
    let mut free = free_for(snap, h, &req.domain);
    let mut evict = Vec::new();
    let mut top = Importance::Development;
    for r in lower {
        if req.demand.fits_in(free) {
            break;
        }
        free = free.plus(r.demand);
        top = top.max(r.importance);
        evict.push(r.partition);
    }
    (req.demand.fits_in(free) && !evict.is_empty()).then_some((evict, top))
}

/// The requirement a [`Miss`] names, as written (`storage:s1`, `processor:a|b`).
fn miss_text(req: &Request, m: &Miss) -> String {
    match m {
        Miss::Req(i) => req
            .requires
            .get(*i)
            .map_or_else(String::new, ToString::to_string),
        Miss::Kind(kind) => {
            let names: Vec<String> = req
                .requires
                .iter()
                .filter(|r| !r.optional && r.kind == kind.as_str())
                .map(|r| {
                    if r.zones.is_empty() {
                        "*".to_owned()
                    } else {
                        r.zones.join("|")
                    }
                })
                .collect();
            format!("{kind}:{}", names.join("|"))
        }
    }
}

fn refusal(req: &Request, skips: &BTreeMap<Skip, usize>) -> Refusal {
    let parts: Vec<String> = skips
        .iter()
        .map(|(s, n)| {
            let what = match s {
                Skip::State(st) => st.as_str().to_owned(),
                Skip::Avoided => "the host it leaves".to_owned(),
                Skip::Domain => format!("not available to domain {}", req.domain),
                Skip::Zone(m) => format!("without a zone for {}", miss_text(req, m)),
                Skip::Limit => format!("at domain {}'s limit per host", req.domain),
                Skip::Room => format!("without {} free", req.demand),
            };
            format!("{n} {what}")
        })
        .collect();
    let kind = if skips.contains_key(&Skip::Room) || skips.contains_key(&Skip::Limit) {
        RefusalKind::NoCapacity
    } else if skips.keys().any(|s| matches!(s, Skip::Zone(_))) {
        RefusalKind::NoMatchingHost
    } else {
        RefusalKind::NoHost
    };
    let summary = if parts.is_empty() {
        "the catalog has no hosts".to_owned()
    } else {
        format!("hosts: {}", parts.join(", "))
    };
    Refusal {
        kind,
        reason: format!(
            "no host can take it ({summary}): add or undrain a host, free capacity, or change the domain or requirements"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cap(m: u64, v: u64) -> Capacity {
        Capacity {
            memory_mib: m,
            vcpus: v,
            disk_gib: 100,
        }
    }

    fn host(name: &str, zones: &[&str], c: Capacity) -> HostView {
        HostView::new(
            name,
            HostState::Active,
            c,
            zones.iter().map(|z| z.parse().unwrap()).collect(),
            Vec::new(),
        )
    }

    fn snap(hosts: Vec<HostView>) -> Snapshot {
        let mut domains = BTreeMap::new();
        domains.insert("default".to_owned(), DomainPolicy::default());
        Snapshot { hosts, domains }
    }

    fn req(requires: &[&str], m: u64) -> Request {
        Request {
            partition: Uuid::new_v4(),
            domain: "default".into(),
            demand: Capacity {
                memory_mib: m,
                vcpus: 1,
                disk_gib: 1,
            },
            requires: requires
                .iter()
                .map(|r| Requirement::parse(r).unwrap())
                .collect(),
            avoid: None,
        }
    }

    fn resident(domain: &str, imp: Importance, m: u64) -> Resident {
        Resident {
            partition: Uuid::new_v4(),
            domain: domain.into(),
            importance: imp,
            demand: Capacity {
                memory_mib: m,
                vcpus: 1,
                disk_gib: 1,
            },
        }
    }

    #[test]
    fn least_loaded_host_wins() {
        let mut a = host("a", &[], cap(4096, 8));
        a.add(resident("default", Importance::Production, 2048));
        let b = host("b", &[], cap(4096, 8));
        let d = place(&snap(vec![a, b]), &req(&[], 512)).unwrap();
        assert_eq!(d.host, "b");
        assert!(d.evict.is_empty());
    }

    #[test]
    fn ties_are_broken_by_name_whatever_the_order() {
        let s1 = snap(vec![
            host("b", &[], cap(1024, 2)),
            host("a", &[], cap(1024, 2)),
        ]);
        let s2 = snap(vec![
            host("a", &[], cap(1024, 2)),
            host("b", &[], cap(1024, 2)),
        ]);
        let r = req(&[], 256);
        assert_eq!(place(&s1, &r).unwrap().host, "a");
        assert_eq!(place(&s2, &r).unwrap().host, "a");
    }

    #[test]
    fn preferred_hosts_come_before_less_loaded_ones() {
        let mut a = host("a", &[], cap(4096, 8));
        a.add(resident("default", Importance::Production, 3000));
        let b = host("b", &[], cap(4096, 8));
        let mut s = snap(vec![a, b]);
        s.domains.get_mut("default").unwrap().preferred = vec!["a".into()];
        assert_eq!(place(&s, &req(&[], 512)).unwrap().host, "a");
        // Full preferred host: the other one.
        assert_eq!(place(&s, &req(&[], 2000)).unwrap().host, "b");
    }

    #[test]
    fn every_required_channel_needs_its_zone() {
        let a = host("a", &["network:front", "storage:local-a"], cap(4096, 8));
        let b = host("b", &["network:front", "storage:shared"], cap(4096, 8));
        let s = snap(vec![a, b]);
        let d = place(&s, &req(&["network:front", "storage:shared"], 256)).unwrap();
        assert_eq!(d.host, "b");
        let e = place(&s, &req(&["network:back"], 256)).unwrap_err();
        assert_eq!(e.kind, RefusalKind::NoSuchZone);
        assert!(e.reason.contains("network:back"), "{}", e.reason);
    }

    #[test]
    fn one_matching_zone_suffices_for_power_processor_and_memory() {
        let a = host("a", &["processor:x86-v2", "power:p1"], cap(4096, 8));
        let b = host("b", &["processor:x86-v3", "power:p2"], cap(4096, 8));
        let s = snap(vec![a, b]);
        // Two processor zones listed: a host with either is fine.
        let r = req(&["processor:x86-v3", "processor:x86-v4"], 256);
        assert_eq!(place(&s, &r).unwrap().host, "b");
        let r = req(&["power:p1", "power:p9"], 256);
        assert_eq!(place(&s, &r).unwrap().host, "a");
        // Whereas two network channels both need their zone.
        let c = host("c", &["network:n1"], cap(4096, 8));
        let e = place(&snap(vec![c]), &req(&["network:n1", "network:n2"], 256)).unwrap_err();
        assert_eq!(e.kind, RefusalKind::NoSuchZone);
    }

    #[test]
    fn no_processor_zone_means_any_host() {
        let a = host("a", &["processor:arm"], cap(4096, 8));
        let b = host("b", &[], cap(2048, 8));
        let s = snap(vec![a, b]);
        let d = place(&s, &req(&[], 256)).unwrap();
        // Both qualify: a has more room.
        assert_eq!(d.host, "a");
        let d = place(&s, &req(&["processor:*"], 256)).unwrap();
        assert_eq!(d.host, "a");
    }

    #[test]
    fn ranked_and_optional_zones() {
        let a = host("a", &["storage:slow"], cap(4096, 8));
        let b = host("b", &["storage:fast"], cap(2048, 8));
        let s = snap(vec![a.clone(), b.clone()]);
        // First-ranked name wins over load.
        assert_eq!(
            place(&s, &req(&["storage:fast|slow"], 256)).unwrap().host,
            "b"
        );
        let c = host("c", &["console:serial"], cap(1024, 8));
        let s = snap(vec![a, c]);
        assert_eq!(
            place(&s, &req(&["?console:serial"], 256)).unwrap().host,
            "c"
        );
    }

    #[test]
    fn domain_hosts_limits_and_guarantees() {
        let mut s = snap(vec![
            host("a", &[], cap(4096, 8)),
            host("b", &[], cap(4096, 8)),
        ]);
        s.domains.insert(
            "db".into(),
            DomainPolicy {
                available: vec!["b".into()],
                guarantee: cap(3584, 0),
                ..DomainPolicy::default()
            },
        );
        let mut r = req(&[], 1024);
        r.domain = "db".into();
        assert_eq!(place(&s, &r).unwrap().host, "b");
        // b keeps 3.5 GiB for db: default's 1 GiB goes to a, even when a is
        // fuller.
        s.hosts[0].add(resident("default", Importance::Production, 2048));
        assert_eq!(place(&s, &req(&[], 1024)).unwrap().host, "a");
        s.domains.get_mut("db").unwrap().limit = cap(512, 0);
        let e = place(&s, &r).unwrap_err();
        assert_eq!(e.kind, RefusalKind::NoCapacity, "{}", e.reason);
        assert!(e.reason.contains("limit"), "{}", e.reason);
        r.domain = "nope".into();
        assert_eq!(place(&s, &r).unwrap_err().kind, RefusalKind::UnknownDomain);
    }

    #[test]
    fn drained_failed_and_avoided_hosts_take_nothing() {
        let mut a = host("a", &[], cap(4096, 8));
        a.state = HostState::Draining;
        let mut b = host("b", &[], cap(4096, 8));
        b.state = HostState::Failed;
        let c = host("c", &[], cap(4096, 8));
        let s = snap(vec![a, b, c]);
        let mut r = req(&[], 256);
        assert_eq!(place(&s, &r).unwrap().host, "c");
        r.avoid = Some("c".into());
        let e = place(&s, &r).unwrap_err();
        assert_eq!(e.kind, RefusalKind::NoHost, "{}", e.reason);
        assert!(e.reason.contains("1 draining"), "{}", e.reason);
    }

    #[test]
    fn displacement_of_lower_importance_only_when_nothing_else_fits() {
        let mut s = snap(vec![
            host("a", &[], cap(2048, 8)),
            host("b", &[], cap(2048, 8)),
        ]);
        s.domains.insert(
            "dev".into(),
            DomainPolicy {
                importance: Importance::Development,
                ..DomainPolicy::default()
            },
        );
        s.domains.insert(
            "crit".into(),
            DomainPolicy {
                importance: Importance::MissionCritical,
                ..DomainPolicy::default()
            },
        );
        let small_dev = resident("dev", Importance::Development, 512);
        let big_dev = resident("dev", Importance::Development, 1024);
        let prod = resident("default", Importance::Production, 1024);
        s.hosts[0].add(small_dev.clone());
        s.hosts[0].add(big_dev.clone());
        s.hosts[1].add(prod.clone());
        s.hosts[1].add(resident("dev", Importance::Development, 768));
        let mut r = req(&[], 1024);
        r.domain = "crit".into();
        // b has 256 free, a 512: nothing fits; on a the one big dev VM makes
        // room; on b a dev VM too, but b would end fuller.
        let d = place(&s, &r).unwrap();
        assert_eq!(d.host, "a");
        assert_eq!(d.evict, vec![big_dev.partition]);
        assert_eq!(d.score.displaced_importance, Some(Importance::Development));
        // A development partition displaces nothing.
        let mut r2 = req(&[], 1024);
        r2.domain = "dev".into();
        assert_eq!(place(&s, &r2).unwrap_err().kind, RefusalKind::NoCapacity);
        // Room elsewhere: no displacement.
        s.hosts.push(host("c", &[], cap(2048, 8)));
        let d = place(&s, &r).unwrap();
        assert_eq!(d.host, "c");
        assert!(d.evict.is_empty());
    }

    #[test]
    fn zone_refusal_names_the_requirement() {
        let s = snap(vec![
            host("a", &["storage:s1"], cap(4096, 8)),
            host("b", &["network:n1"], cap(4096, 8)),
        ]);
        let e = place(&s, &req(&["storage:s1", "network:n1"], 256)).unwrap_err();
        assert_eq!(e.kind, RefusalKind::NoMatchingHost);
        assert!(
            e.reason.contains("without a zone for network:n1"),
            "{}",
            e.reason
        );
        assert!(
            e.reason.contains("without a zone for storage:s1"),
            "{}",
            e.reason
        );
    }
}
