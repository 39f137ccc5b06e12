//! Tests of the harness itself: a harness that mis-delivers would make every other test meaningless.

use alloc::vec;
use alloc::vec::Vec;

use super::*;
use crate::time::Millis;

#[test]
fn clock_only_moves_forward() {
    let mut clock = Clock::new(Millis(10), 5);
    clock.advance_to(Millis(5));
    assert_eq!(clock.now(), Millis(10));
    clock.advance_to(Millis(20));
    assert_eq!(clock.now(), Millis(20));
    assert_eq!(earliest([None, Some(Millis(3)), Some(Millis(2))]), Some(Millis(2)));
    assert_eq!(earliest([None, None]), None);
}

#[test]
#[should_panic(expected = "simulation livelock")]
fn clock_fails_on_livelock() {
    let mut clock = Clock::new(Millis(0), 3);
    for _ in 0..4 {
        clock.step();
    }
}

#[test]
fn link_delivers_in_order_after_latency_then_close() {
    let mut link = Link::new(LinkConfig { latency: Millis(10), drop_probability: 0.0 }, 1);
    assert!(link.send(Millis(0), vec![1]));
    link.set_config(LinkConfig { latency: Millis(1), drop_probability: 0.0 });
    assert!(link.send(Millis(2), vec![2]));
    link.close(Millis(3));
    assert!(!link.send(Millis(3), vec![3]), "a closed link accepts nothing");
    assert_eq!(link.next_delivery(), Some(Millis(10)));
    assert_eq!(link.poll_delivery(Millis(9)), None);
    assert_eq!(link.poll_delivery(Millis(10)), Some(Delivery::Frame(vec![1])));
    assert_eq!(link.poll_delivery(Millis(10)), Some(Delivery::Frame(vec![2])), "no overtaking");
    assert_eq!(link.poll_delivery(Millis(10)), Some(Delivery::Closed));
    assert_eq!(link.poll_delivery(Millis(99)), None);
    assert!(link.is_idle());
}

#[test]
fn link_loss_follows_probability_and_seed() {
    let run = |seed| {
        let mut link = Link::new(LinkConfig { latency: Millis(0), drop_probability: 0.25 }, seed);
        (0..4000).map(|i| link.send(Millis(i), vec![])).collect::<Vec<_>>()
    };
    let a = run(7);
    assert_eq!(a, run(7), "same seed, same losses");
    let lost = a.iter().filter(|delivered| !**delivered).count();
    assert!((800..1200).contains(&lost), "about a quarter lost, got {lost}");
    let mut all = Link::new(LinkConfig { latency: Millis(0), drop_probability: 1.0 }, 1);
    assert!(!all.send(Millis(0), vec![1]));
    assert_eq!((all.sent, all.dropped), (1, 1));
}

#[test]
fn severed_link_loses_in_flight_frames() {
    let mut link = Link::new(LinkConfig::default(), 1);
    link.send(Millis(0), vec![1]);
    link.sever(Millis(0));
    assert_eq!(link.poll_delivery(Millis(0)), Some(Delivery::Closed));
    assert_eq!(link.dropped, 1);
    assert!(link.is_idle());
}

#[test]
fn a_partitioned_link_loses_the_close_too() {
    let mut link = Link::new(LinkConfig { latency: Millis(1), drop_probability: 1.0 }, 1);
    link.close(Millis(0));
    assert!(link.is_closed());
    assert!(link.is_idle());
    assert_eq!(link.poll_delivery(Millis(100)), None);
}
