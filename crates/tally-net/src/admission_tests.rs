//! Unit tests of the admission registry (synthetic addresses; no sockets).

use super::*;

const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));
const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 3));

fn registry(max_connections: usize, max_per_source: usize) -> Arc<Admission> {
    Admission::new(
        "test",
        AdmissionLimits {
            max_connections,
            max_per_source,
        },
    )
}

#[test]
fn per_source_cap_evicts_within_the_source_then_refuses_when_all_busy() {
    let reg = registry(10, 2);
    let other = reg.admit(B).expect("other source, oldest of all");
    let first = reg.admit(A).expect("first");
    let second = reg.admit(A).expect("second");
    let third = reg.admit(A).expect("third evicts the source's idlest");
    assert!(first.is_evicted() && !other.is_evicted() && !second.is_evicted());
    second.set_phase(Phase::Busy);
    third.set_phase(Phase::Busy);
    assert_eq!(reg.admit(A).err(), Some(Refused::SourceLimit));
    assert!(reg.admit(B).is_ok(), "another source is not affected");
    drop(third);
    assert!(reg.admit(A).is_ok(), "a freed place can be taken again");
}

#[test]
fn when_full_the_oldest_idle_connection_is_evicted() {
    let reg = registry(3, 10);
    let oldest = reg.admit(A).expect("1");
    let busy = reg.admit(A).expect("2");
    let newer = reg.admit(B).expect("3");
    busy.set_phase(Phase::Busy);
    newer.set_phase(Phase::Receiving);
    let _new = reg.admit(B).expect("admitted by evicting");
    assert!(oldest.is_evicted(), "the oldest idle connection goes first");
    assert!(!busy.is_evicted() && !newer.is_evicted());
    assert_eq!(reg.len(), 3);
    assert_eq!(reg.evicted(), 1);
    let _newest = reg.admit(A).expect("admitted by evicting");
    assert!(newer.is_evicted(), "then the slow one; the busy one never");
    assert!(!busy.is_evicted());
}

#[test]
fn the_source_holding_most_connections_is_evicted_first() {
    let reg = registry(3, 10);
    let lone = reg.admit(A).expect("oldest, but its source holds one");
    let flood1 = reg.admit(B).expect("2");
    let flood2 = reg.admit(B).expect("3");
    let _new = reg.admit(A).expect("admitted by evicting");
    assert!(!lone.is_evicted(), "a source with one connection is spared");
    assert!(
        flood1.is_evicted() && !flood2.is_evicted(),
        "the flood's oldest goes"
    );
}

#[test]
fn full_of_busy_connections_refuses() {
    let reg = registry(1, 10);
    let busy = reg.admit(A).expect("1");
    busy.set_phase(Phase::Busy);
    assert_eq!(reg.admit(B).err(), Some(Refused::Full));
    busy.set_phase(Phase::Idle);
    assert!(reg.admit(B).is_ok());
    assert!(busy.is_evicted());
}

#[test]
fn an_evicted_ticket_dropped_later_does_not_free_a_second_place() {
    let reg = registry(1, 2);
    let old = reg.admit(A).expect("1");
    let new = reg.admit(A).expect("evicts the first");
    assert!(old.is_evicted());
    drop(old);
    assert_eq!(reg.len(), 1);
    assert!(!new.is_evicted());
    let _third = reg
        .admit(A)
        .expect("evicts the second: A holds one place, not zero");
    assert!(new.is_evicted());
    drop(new);
    assert_eq!(reg.len(), 1);
}

#[test]
fn rate_limited_warning_logs_once_then_counts() {
    let warn = RateLimitedWarn::new();
    assert_eq!(warn.tick(), Some(1));
    assert_eq!(warn.tick(), None);
    assert_eq!(warn.tick(), None);
}

fn v6(prefix: u64, host: u64) -> IpAddr {
    IpAddr::V6(std::net::Ipv6Addr::from(
        (u128::from(prefix) << 64) | u128::from(host),
    ))
}

#[test]
fn ipv6_sources_are_grouped_by_their_64_and_ipv4_by_address() {
    let prefix = 0xfd00_0000_0000_0001;
    assert_eq!(SourceKey::of(v6(prefix, 1)), SourceKey::of(v6(prefix, 99)));
    assert_ne!(
        SourceKey::of(v6(prefix, 1)),
        SourceKey::of(v6(prefix + 1, 1))
    );
    assert_ne!(SourceKey::of(A), SourceKey::of(B));
    let mapped: IpAddr = "::ffff:127.0.0.2".parse().expect("mapped");
    assert_eq!(SourceKey::of(mapped), SourceKey::of(A));
}

// Issue 21: 40 addresses of one /64 are one source: together they hold the per-source cap, each
// new connection evicting the group's own idlest, and never a connection of another source.
#[test]
fn many_addresses_of_one_64_share_the_per_source_cap() {
    let reg = registry(100, 5);
    let other = reg.admit(B).expect("another source");
    let mut flood = Vec::new();
    for i in 0..40 {
        flood.push(
            reg.admit(v6(0xfd00_0000_0000_0001, i + 1))
                .expect("admitted"),
        );
    }
    assert_eq!(reg.len(), 6, "the /64 holds 5, the other source 1");
    assert_eq!(flood.iter().filter(|t| !t.is_evicted()).count(), 5);
    assert!(!other.is_evicted());
    assert_eq!(reg.evicted(), 35);
}

// Issue 21: a NAT or VDI gateway whose 20 clients complete requests is not the preferred
// victim, even when it holds the most connections of any source; stalled connections go first,
// from the source holding the most of them.
#[test]
fn a_gateway_whose_clients_make_progress_is_evicted_last() {
    let reg = registry(30, 100);
    let mut nat = Vec::new();
    for _ in 0..20 {
        let t = reg.admit(A).expect("nat client");
        t.set_phase(Phase::Busy);
        t.set_phase(Phase::Idle); // answered; waits for its next request
        nat.push(t);
    }
    // Ten attacker /64s, one stalled connection each: fewer per source than the gateway holds.
    let mut flood = Vec::new();
    for i in 0..10 {
        flood.push(reg.admit(v6(0xfd00_0000_0000_0100 + i, 7)).expect("flood"));
    }
    assert_eq!(reg.len(), 30);
    let mut newcomers = Vec::new();
    for i in 0..10 {
        newcomers.push(reg.admit(v6(0xfd00_0000_0000_0200 + i, 7)).expect("new"));
    }
    assert!(
        nat.iter().all(|t| !t.is_evicted()),
        "no gateway client evicted"
    );
    assert!(
        flood.iter().all(Ticket::is_evicted),
        "the stalled ones went"
    );
    // With only the gateway's connections and stalled newcomers left, the source holding the
    // most stalled connections pays first.
    let big: Vec<_> = (0..3)
        .map(|_| reg.admit(B).expect("stalled from one address"))
        .collect();
    let _next = reg.admit(v6(0xfd00_0000_0000_0300, 1)).expect("admitted");
    assert!(nat.iter().all(|t| !t.is_evicted()));
    // B's first two took two newcomers' places (one stalled connection per source: the oldest
    // goes); from B's third on, B holds the most stalled connections and evicts its own.
    assert_eq!(big.iter().filter(|t| t.is_evicted()).count(), 2);
    assert_eq!(newcomers.iter().filter(|t| t.is_evicted()).count(), 2);
}
