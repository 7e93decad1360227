#![allow(clippy::tests_outside_test_module)]
//! Networks, their switch I/O partitions and channels through the async
//! `Ledger`: addresses handed out lowest first after the gateway, a network
//! or partition with open channels cannot be deleted, overlapping subnets of
//! one zone are refused, the zone's switch comes and goes with its networks.

mod common;

use std::net::Ipv4Addr;

use brood_ledger::{
    IoKind, IoState, LedgerError, NetOp, Op, PartitionExpect, Resources, Tx, switch_name,
};
use common::{create_tx, ledger, partition};

fn net(name: &str, zone: &str, subnet: &str, gateway: bool) -> Op {
    Op::Net(NetOp::CreateNetwork {
        name: name.into(),
        zone: zone.into(),
        subnet: subnet.into(),
        gateway,
        nat: false,
    })
}

fn tx(ops: Vec<Op>) -> Tx {
    Tx::new("test", "network", ops)
}

#[tokio::test]
async fn channels_get_addresses_and_hold_their_network_and_partition() {
    let (_d, l) = ledger().await;
    l.commit(tx(vec![net("a", "z1", "10.9.0.0/29", true)]))
        .await
        .unwrap();
    let io = l.io_partitions().await.unwrap();
    assert_eq!(io.len(), 1);
    assert_eq!(
        (io[0].name.as_str(), io[0].kind, io[0].run_state),
        ("switch-z1", IoKind::Switch, IoState::Stopped)
    );
    let p = partition("p", Resources::ZERO);
    let q = partition("q", Resources::ZERO);
    l.commit(create_tx(&p)).await.unwrap();
    l.commit(create_tx(&q)).await.unwrap();
    // NIC 0 is on a bridge (not a ledger network), NIC 1 and 2 on "a".
    let nics = vec!["br0".to_string(), "a".into(), "a".into()];
    l.commit(tx(vec![Op::Net(NetOp::OpenChannels {
        partition: p.uuid,
        nics: nics.clone(),
        mbps: vec![None, Some(20)],
    })]))
    .await
    .unwrap();
    // Opening again keeps what is open.
    l.commit(tx(vec![Op::Net(NetOp::OpenChannels {
        partition: p.uuid,
        nics,
        mbps: Vec::new(),
    })]))
    .await
    .unwrap();
    let ch = l.channels().await.unwrap();
    assert_eq!(ch.len(), 2);
    assert_eq!(ch[0].nic, 1);
    // .1 is the gateway's.
    assert_eq!(ch[0].address, Ipv4Addr::new(10, 9, 0, 2));
    assert_eq!(ch[1].address, Ipv4Addr::new(10, 9, 0, 3));
    assert_eq!(ch[0].io_partition, switch_name("z1"));
    // The cap is recorded with its channel; a missing entry is no cap.
    assert_eq!((ch[0].mbps, ch[1].mbps), (Some(20), None));

    // A /29 has six hosts: the gateway, p's two, and three more.
    l.commit(tx(vec![Op::Net(NetOp::OpenChannels {
        partition: q.uuid,
        nics: vec!["a".into(); 3],
        mbps: Vec::new(),
    })]))
    .await
    .unwrap();
    let e = l
        .commit(tx(vec![Op::Net(NetOp::OpenChannels {
            partition: q.uuid,
            nics: vec!["a".into(); 4],
            mbps: Vec::new(),
        })]))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, LedgerError::NetworkConflict { what } if what.contains("no free address")),
        "{e}"
    );
    // A cap out of range is refused before anything opens.
    let e = l
        .commit(tx(vec![Op::Net(NetOp::OpenChannels {
            partition: q.uuid,
            nics: vec!["a".into()],
            mbps: vec![Some(0)],
        })]))
        .await
        .unwrap_err();
    assert!(matches!(e, LedgerError::InvalidOp { .. }), "{e}");

    let e = l
        .commit(tx(vec![Op::Net(NetOp::DeleteNetwork { name: "a".into() })]))
        .await
        .unwrap_err();
    assert!(matches!(e, LedgerError::NetworkConflict { .. }), "{e}");
    let del = Op::DeletePartition {
        uuid: p.uuid,
        expect: PartitionExpect::default(),
    };
    assert!(l.commit(tx(vec![del.clone()])).await.is_err());
    // Closed in the same transaction, the partition goes.
    l.commit(tx(vec![
        Op::Net(NetOp::CloseChannels { partition: p.uuid }),
        del,
    ]))
    .await
    .unwrap();
    l.commit(tx(vec![Op::Net(NetOp::DetachIo {
        name: switch_name("z1"),
    })]))
    .await
    .unwrap();
    assert!(l.channels().await.unwrap().is_empty());
    l.commit(tx(vec![Op::Net(NetOp::DeleteNetwork { name: "a".into() })]))
        .await
        .unwrap();
    assert!(l.io_partitions().await.unwrap().is_empty());
    assert_eq!(l.verify().await.unwrap(), []);
}

#[tokio::test]
async fn zones_keep_their_subnets_apart_and_names_are_checked() {
    let (_d, l) = ledger().await;
    l.commit(tx(vec![net("a", "z1", "10.9.0.0/24", false)]))
        .await
        .unwrap();
    // The same subnet in another zone is another network.
    l.commit(tx(vec![net("b", "z2", "10.9.0.0/24", false)]))
        .await
        .unwrap();
    assert_eq!(l.io_partitions().await.unwrap().len(), 2);
    for (op, want) in [
        (net("c", "z1", "10.9.0.128/25", false), "overlaps"),
        (net("a", "z3", "10.8.0.0/24", false), "already exists"),
    ] {
        let e = l.commit(tx(vec![op])).await.unwrap_err();
        assert!(e.to_string().contains(want), "{e}");
    }
    for op in [
        net("Bad", "z1", "10.7.0.0/24", false),
        net("c", "z 1", "10.7.0.0/24", false),
        net("c", "z1", "10.7.0.1/24", false),
    ] {
        let e = l.commit(tx(vec![op])).await.unwrap_err();
        assert!(matches!(e, LedgerError::InvalidOp { .. }), "{e}");
    }
    // A failed transaction left nothing: still two networks.
    assert_eq!(l.networks().await.unwrap().len(), 2);
    l.commit(tx(vec![Op::Net(NetOp::SetIoState {
        name: switch_name("z1"),
        run_state: IoState::Running,
        pid: Some(42),
        restart_count: Some(1),
        last_exit: None,
    })]))
    .await
    .unwrap();
    let s = l.io_partition(&switch_name("z1")).await.unwrap().unwrap();
    assert_eq!(
        (s.run_state, s.pid, s.restart_count),
        (IoState::Running, Some(42), 1)
    );
    // Dedicated CPUs: recorded, out of range refused, cleared again.
    assert_eq!(s.cpus, None);
    let cpus = |cpus| {
        tx(vec![Op::Net(NetOp::SetIoCpus {
            name: switch_name("z1"),
            cpus,
        })])
    };
    l.commit(cpus(Some(1))).await.unwrap();
    let io = l.io_partition(&switch_name("z1")).await.unwrap().unwrap();
    assert_eq!(io.cpus, Some(1));
    for bad in [0, brood_ledger::IO_CPUS_MAX + 1] {
        let e = l.commit(cpus(Some(bad))).await.unwrap_err();
        assert!(matches!(e, LedgerError::InvalidOp { .. }), "{e}");
    }
    l.commit(cpus(None)).await.unwrap();
    let io = l.io_partition(&switch_name("z1")).await.unwrap().unwrap();
    assert_eq!(io.cpus, None);
}

#[tokio::test]
async fn disk_channels_make_their_storage_partition_and_hold_their_guest() {
    use brood_ledger::{DiskChannelSpec, Transport, storage_name};
    let (_d, l) = ledger().await;
    let p = partition("p", Resources::ZERO);
    l.commit(create_tx(&p)).await.unwrap();
    let spec = |disk: u32, zone: &str, export: &str| DiskChannelSpec {
        disk,
        zone: zone.into(),
        export: export.into(),
        image: format!("/d/{disk}.qcow2"),
        format: "qcow2".into(),
        transport: Transport::Nbd,
    };
    let open = |disks| {
        tx(vec![Op::Net(NetOp::OpenDiskChannels {
            partition: p.uuid,
            disks,
        })])
    };
    // A bad zone name or export name is refused, and nothing is made.
    for bad in [spec(0, "No", &"a".repeat(32)), spec(0, "z", "short")] {
        assert!(l.commit(open(vec![bad])).await.is_err());
    }
    assert!(l.io_partitions().await.unwrap().is_empty());
    l.commit(open(vec![spec(0, "z", &"a".repeat(32))]))
        .await
        .unwrap();
    // Opening again keeps what is open (a second export name is not used).
    l.commit(open(vec![
        spec(0, "z", &"b".repeat(32)),
        spec(1, "z", &"c".repeat(32)),
    ]))
    .await
    .unwrap();
    let io = l.io_partitions().await.unwrap();
    assert_eq!(
        (io[0].name.as_str(), io[0].kind, io[0].run_state),
        (
            storage_name("z").as_str(),
            IoKind::Storage,
            IoState::Stopped
        )
    );
    let ch = l.disk_channels().await.unwrap();
    assert_eq!(ch.len(), 2);
    assert_eq!(ch[0].export, "a".repeat(32));
    assert_eq!(ch[1].transport, Transport::Nbd);
    // The guest cannot go while its disks are served.
    let del = Op::DeletePartition {
        uuid: p.uuid,
        expect: PartitionExpect::default(),
    };
    assert!(l.commit(tx(vec![del.clone()])).await.is_err());
    l.commit(tx(vec![Op::Net(NetOp::DetachIo {
        name: storage_name("z"),
    })]))
    .await
    .unwrap();
    assert!(l.disk_channels().await.unwrap().is_empty());
    l.commit(open(vec![spec(0, "z", &"d".repeat(32))]))
        .await
        .unwrap();
    l.commit(tx(vec![
        Op::Net(NetOp::CloseChannels { partition: p.uuid }),
        del,
    ]))
    .await
    .unwrap();
    assert!(l.disk_channels().await.unwrap().is_empty());
    assert_eq!(l.verify().await.unwrap(), []);
}
