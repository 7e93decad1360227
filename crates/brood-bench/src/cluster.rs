//! `brood-bench cluster`: placement decisions per second over a catalog
//! snapshot of 1,000 hosts and 100,000 placed partitions (placement alone:
//! no PostgreSQL), against a first-fit scan of the same hosts as the peer
//! (the first host with the zones and room, no scoring, no domains).

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::Result;
use brood_cluster::model::{Capacity, DomainPolicy, HostState, Importance, Requirement, Zone};
use brood_cluster::place::{HostView, Request, Resident, Snapshot, place};
use uuid::Uuid;

/// A deterministic generator (xorshift64*), so every run sees the same catalog.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn zone(s: &str) -> Zone {
    s.parse().expect("a valid zone")
}

fn snapshot(hosts: usize, partitions: usize, rng: &mut Rng) -> Snapshot {
    let mut domains = BTreeMap::new();
    let imps = [
        Importance::MissionCritical,
        Importance::Production,
        Importance::Test,
        Importance::Development,
    ];
    for (i, imp) in imps.iter().enumerate() {
        domains.insert(
            format!("d{i}"),
            DomainPolicy {
                importance: *imp,
                preferred: (0..5).map(|k| format!("h{}", k * 97 + i)).collect(),
                ..DomainPolicy::default()
            },
        );
    }
    let mut views: Vec<HostView> = (0..hosts)
        .map(|i| {
            let zones = vec![
                zone(&format!("storage:s{}", i % 10)),
                zone(&format!("network:n{}", i % 20)),
                zone(&format!("processor:p{}", i % 4)),
                zone(&format!("power:w{}", i % 2)),
            ];
            HostView::new(
                &format!("h{i}"),
                HostState::Active,
                Capacity {
                    memory_mib: 512 * 1024,
                    vcpus: 512,
                    disk_gib: 20_000,
                },
                zones,
                Vec::new(),
            )
        })
        .collect();
    for _ in 0..partitions {
        let h = usize::try_from(rng.below(hosts as u64)).unwrap_or(0);
        let d = rng.below(4);
        views[h].add(Resident {
            partition: Uuid::from_u64_pair(rng.next(), rng.next()),
            domain: format!("d{d}"),
            importance: imps[usize::try_from(d).unwrap_or(0)],
            demand: Capacity {
                memory_mib: 1024 + rng.below(4) * 1024,
                vcpus: 1 + rng.below(4),
                disk_gib: 10,
            },
        });
    }
    Snapshot {
        hosts: views,
        domains,
    }
}

fn request(rng: &mut Rng) -> Request {
    let mut requires = vec![
        Requirement::parse(&format!("storage:s{}", rng.below(10))).expect("req"),
        Requirement::parse(&format!("network:n{}", rng.below(20))).expect("req"),
    ];
    if rng.below(2) == 0 {
        requires.push(
            Requirement::parse(&format!("processor:p{}|p{}", rng.below(4), rng.below(4)))
                .expect("req"),
        );
    }
    Request {
        partition: Uuid::from_u64_pair(rng.next(), rng.next()),
        domain: format!("d{}", rng.below(4)),
        demand: Capacity {
            memory_mib: 2048,
            vcpus: 2,
            disk_gib: 10,
        },
        requires,
        avoid: None,
    }
}

/// The peer: the first host with every required zone and room.
fn first_fit(s: &Snapshot, r: &Request) -> Option<usize> {
    s.hosts.iter().position(|h| {
        r.requires.iter().all(|q| {
            h.zones.iter().any(|z| {
                z.kind.as_str() == q.kind && (q.zones.is_empty() || q.zones.contains(&z.name))
            })
        }) && r.demand.fits_in(h.capacity.minus(h.used()))
    })
}

/// Runs the benchmark and prints decisions per second, medians of `rounds`.
pub fn cluster(hosts: usize, partitions: usize, decisions: usize, rounds: usize) -> Result<()> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let t = Instant::now();
    let snap = snapshot(hosts, partitions, &mut rng);
    println!(
        "catalog snapshot: {hosts} hosts, {partitions} partitions, built in {:.0} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    let reqs: Vec<Request> = (0..decisions).map(|_| request(&mut rng)).collect();
    let (mut brood, mut peer) = (Vec::new(), Vec::new());
    let mut placed = 0usize;
    for _ in 0..rounds {
        let t = Instant::now();
        for r in &reqs {
            if place(&snap, r).is_ok() {
                placed += 1;
            }
        }
        brood.push(reqs.len() as f64 / t.elapsed().as_secs_f64());
        let t = Instant::now();
        let mut found = 0usize;
        for r in &reqs {
            if first_fit(&snap, r).is_some() {
                found += 1;
            }
        }
        std::hint::black_box(found);
        peer.push(reqs.len() as f64 / t.elapsed().as_secs_f64());
    }
    let (b, p) = (crate::median(brood), crate::median(peer));
    println!("placed {placed} of {} requests", reqs.len() * rounds);
    println!("| | decisions/s (median of {rounds} rounds of {decisions}) |");
    println!("|---|---|");
    println!("| brood place (scored, domains, guarantees) | {b:.0} |");
    println!("| first-fit scan (peer) | {p:.0} |");
    println!("| ratio brood / peer | {:.2} |", b / p);
    Ok(())
}
