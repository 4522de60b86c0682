//! A connection's turn: how many deliveries its publishes may make before `handle_input`
//! stops and the connection gives way to the others (`Connection::gives_way`), and how that
//! bound adapts to whether anyone else is there to give way to.
//!
//! A client's burst of messages to many subscribers is routed in pieces, so that other
//! clients' messages wait behind one piece, not the whole burst. Giving way has a price: every
//! task that is ready runs in between, and the subscribers of the burst, whose
//! acknowledgements keep arriving, then read and write a few messages at a time instead of
//! many. So the piece starts small ([`TURN_DELIVERIES`]), and only a burst that has given way
//! for [`QUIET`] without any other connection routing a message in between gets longer
//! pieces: doubled at each give-way after that, up to [`TURN_DELIVERIES`] `<<`
//! [`MAX_TURN_SHIFT`]. The moment another connection routes something while it gives way, the
//! burst is back to the start. A lone publisher to many subscribers soon routes in large
//! pieces; a burst among other publishers keeps them short, even when those publish in clumps
//! (a device fleet on one timer) with quiet gaps between.
//!
//! Connections learn of each other through [`Turns`], two broker-wide counters touched only
//! while some connection gives way.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Deliveries a connection's publishes make in its first turn of a burst, and in every turn
/// while others route too: about a quarter of a millisecond of routing on one core.
pub const TURN_DELIVERIES: u32 = 1024;

/// A turn grows to at most `TURN_DELIVERIES << MAX_TURN_SHIFT` deliveries: 32,768, about two
/// 16 KiB reads of small messages to a hundred subscribers, 5 to 10 ms of routing on one core.
/// That is as long as a newcomer's first message can wait behind a lone burst; at 16,384 the
/// lone 1-to-100 fan-out at QoS 1 lost a tenth of its throughput (`bench/RESULTS.md`).
pub const MAX_TURN_SHIFT: u8 = 5;

/// How long a burst gives way to nobody (no other connection routes a message meanwhile)
/// before its turns grow: longer than the gaps of a stream of clumps (ten publishers on one
/// 1 ms timer, say), short against a lone publisher's minutes of fan-out.
pub const QUIET: Duration = Duration::from_millis(10);

/// [`QUIET`] in milliseconds.
fn quiet_ms() -> u16 {
    QUIET.as_millis() as u16
}

/// What connections giving way learn of the others, shared by all of them (in the broker).
#[derive(Debug)]
pub struct Turns {
    /// Connections now giving way in the middle of a burst.
    giving_way: AtomicU32,
    /// Turns that routed something, counted only while a connection gives way (so that the
    /// usual turn costs one read of `giving_way`, not a write shared by every core). Compared
    /// for equality in 16 bits (`Turn::mark`): others' turns that are a multiple of 65,536
    /// during one give-way would pass for none.
    routed: AtomicU32,
    /// Time zero of the connections' `quiet_since`.
    epoch: Instant,
}

impl Turns {
    /// The counters of a broker started at `now`.
    pub fn new(now: Instant) -> Self {
        Self {
            giving_way: AtomicU32::new(0),
            routed: AtomicU32::new(0),
            epoch: now,
        }
    }

    /// `now` in milliseconds since the epoch, in 16 bits (compared with `wrapping_sub`): a
    /// time 65.5 s old passes for a recent one, which at worst starts a burst at the length
    /// its last one reached. Kept small because every connection holds two.
    fn ms(&self, now: Instant) -> u16 {
        now.saturating_duration_since(self.epoch).as_millis() as u16
    }

    /// `routed` in the 16 bits a connection keeps of it.
    fn routed(&self) -> u16 {
        self.routed.load(Ordering::Relaxed) as u16
    }
}

/// One connection's turn.
#[derive(Debug)]
pub(super) struct Turn {
    /// Deliveries its publishes made since it last gave way.
    routed: u32,
    /// `Turns::routed` when it gave way.
    mark: u16,
    /// Since when (`Turns::ms`) its burst has given way to nobody.
    quiet_since: u16,
    /// When (`Turns::ms`) its deliveries last passed a multiple of [`TURN_DELIVERIES`] (or
    /// it gave way): a burst goes on across reads while they do so at least every [`QUIET`];
    /// after a slower stretch it is over, and the next one starts small.
    busy_at: u16,
    /// The turn is `TURN_DELIVERIES << shift` deliveries.
    shift: u8,
    /// It gave way and is counted in `Turns::giving_way`.
    gave_way: bool,
}

impl Turn {
    /// The turn of a connection that starts at `now`: its first burst starts small.
    pub(super) fn new(turns: &Turns, now: Instant) -> Self {
        Self {
            routed: 0,
            mark: 0,
            quiet_since: 0,
            busy_at: turns.ms(now).wrapping_sub(quiet_ms() + 1),
            shift: 0,
            gave_way: false,
        }
    }

    /// Whether the turn's deliveries are spent: `handle_input` handles no more until the
    /// next call.
    pub(super) fn spent(&self) -> bool {
        self.routed >= TURN_DELIVERIES << self.shift
    }

    /// Deliveries left before the turn is spent.
    pub(super) fn room(&self) -> u32 {
        (TURN_DELIVERIES << self.shift).saturating_sub(self.routed)
    }

    /// Counts deliveries a publish made.
    pub(super) fn count(&mut self, deliveries: usize) {
        let made = u32::try_from(deliveries).unwrap_or(u32::MAX);
        self.routed = self.routed.saturating_add(made);
    }

    /// At the start of `handle_input`: after giving way, a new turn of the same burst, as
    /// long as the last one, doubled once the burst has given way to nobody for [`QUIET`],
    /// back to the start if anyone routed meanwhile. A connection that has routed fewer than
    /// `TURN_DELIVERIES` in the last `QUIET` starts any burst small. Returns the deliveries counted so far, for
    /// [`Turn::end`].
    pub(super) fn begin(&mut self, turns: &Turns, now: Instant) -> u32 {
        let ms = turns.ms(now);
        if self.spent() {
            let others = turns.routed() != self.mark;
            if others {
                self.shift = 0;
                self.quiet_since = ms;
            } else if ms.wrapping_sub(self.quiet_since) >= quiet_ms() {
                self.shift = (self.shift + 1).min(MAX_TURN_SHIFT);
            }
            self.routed = 0;
            self.leave(turns);
        } else if ms.wrapping_sub(self.busy_at) > quiet_ms() {
            self.shift = 0;
            self.quiet_since = ms;
        }
        self.routed
    }

    /// At the end of `handle_input`, with what [`Turn::begin`] returned: a turn that spent
    /// its deliveries gives way (and notes where the others' count stands); one that routed
    /// something while another connection gives way is counted for that one to see.
    pub(super) fn end(&mut self, turns: &Turns, now: Instant, before: u32) {
        if self.routed == before {
            return;
        }
        if self.routed / TURN_DELIVERIES != before / TURN_DELIVERIES {
            self.busy_at = turns.ms(now);
        }
        if self.spent() {
            if !self.gave_way {
                self.gave_way = true;
                turns.giving_way.fetch_add(1, Ordering::Relaxed);
            }
            self.mark = turns.routed();
        } else if turns.giving_way.load(Ordering::Relaxed) > 0 {
            turns.routed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// No longer giving way (a new turn, or the connection ended).
    pub(super) fn leave(&mut self, turns: &Turns) {
        if std::mem::take(&mut self.gave_way) {
            turns.giving_way.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Routes until the turn is spent, as `handle_input` does, one delivery at a time, at
    /// `now`; returns the deliveries made.
    fn burst(t: &mut Turn, turns: &Turns, now: Instant) -> u32 {
        let before = t.begin(turns, now);
        while !t.spent() {
            t.count(1);
        }
        t.end(turns, now, before);
        t.routed
    }

    /// Another connection routes a few messages at `now`.
    fn other_routes(b: &mut Turn, turns: &Turns, now: Instant) {
        let before = b.begin(turns, now);
        b.count(3);
        b.end(turns, now, before);
    }

    #[test]
    fn a_lone_burst_grows_its_turns_once_it_has_been_alone_for_the_quiet_period() {
        let start = Instant::now();
        let turns = Turns::new(start);
        let mut t = Turn::new(&turns, start);
        // A turn every millisecond: the base size until QUIET has passed, then doubling.
        let sizes: Vec<u32> = (0..18)
            .map(|i| burst(&mut t, &turns, start + MS * i))
            .collect();
        let mut expected = vec![1024; 10];
        expected.extend([2048, 4096, 8192, 16384, 32768, 32768, 32768, 32768]);
        assert_eq!(sizes, expected);
        assert_eq!(turns.giving_way.load(Ordering::Relaxed), 1);
        t.leave(&turns);
        assert_eq!(turns.giving_way.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn another_publisher_routing_meanwhile_brings_the_turn_back_to_the_start() {
        let start = Instant::now();
        let turns = Turns::new(start);
        let (mut a, mut b) = (Turn::new(&turns, start), Turn::new(&turns, start));
        let mut at = start;
        for _ in 0..12 {
            burst(&mut a, &turns, at);
            at += MS;
        }
        assert_eq!(a.routed, 4096);
        other_routes(&mut b, &turns, at);
        assert_eq!(burst(&mut a, &turns, at), 1024);
        // Clumps every 5 ms: gaps shorter than QUIET, so the burst's turns never grow.
        for i in 0..40 {
            at += MS;
            if i % 5 == 0 {
                other_routes(&mut b, &turns, at);
            }
            assert_eq!(burst(&mut a, &turns, at), 1024, "turn {i}");
        }
    }

    #[test]
    fn a_new_burst_starts_small_and_waits_for_its_own_quiet_period() {
        let start = Instant::now();
        let turns = Turns::new(start);
        let mut t = Turn::new(&turns, start);
        for i in 0..20 {
            burst(&mut t, &turns, start + MS * i);
        }
        assert_eq!(t.routed, 32768);
        // The burst ends: a turn that does not spend its deliveries, then a trickle, slower
        // than a base turn per quiet period.
        let mut at = start + Duration::from_secs(60);
        for _ in 0..100 {
            let before = t.begin(&turns, at);
            t.count(5);
            t.end(&turns, at, before);
            at += QUIET;
        }
        assert!(!t.spent());
        assert_eq!(turns.giving_way.load(Ordering::Relaxed), 0);
        // Then a new burst: small again, though nobody else routed.
        assert_eq!(burst(&mut t, &turns, at + MS), 1024);
        assert_eq!(burst(&mut t, &turns, at + MS * 2), 1024);
    }

    #[test]
    fn a_burst_goes_on_across_reads_that_end_between_turns() {
        let start = Instant::now();
        let turns = Turns::new(start);
        let mut t = Turn::new(&turns, start);
        for i in 0..13 {
            burst(&mut t, &turns, start + MS * i);
        }
        assert_eq!(t.routed, 8192);
        // The next turn's read ends before the turn is spent, then more comes: the same
        // burst, going on at the same size.
        let at = start + MS * 13;
        let before = t.begin(&turns, at);
        t.count(100);
        t.end(&turns, at, before);
        assert!(!t.spent());
        let before = t.begin(&turns, at + MS);
        while !t.spent() {
            t.count(1);
        }
        t.end(&turns, at + MS, before);
        assert_eq!(t.routed, 16384);
        assert_eq!(burst(&mut t, &turns, at + MS * 2), 32768);
    }

    #[test]
    fn a_fast_stream_keeps_its_long_turns_between_give_ways_further_apart_than_quiet() {
        let start = Instant::now();
        let turns = Turns::new(start);
        let mut t = Turn::new(&turns, start);
        let mut at = start;
        for _ in 0..20 {
            burst(&mut t, &turns, at);
            at += MS;
        }
        assert_eq!(t.routed, 32768);
        // Reads of 500 deliveries every millisecond: 66 ms from one give-way to the next, and
        // every turn stays at the bound.
        for _ in 0..3 {
            let mut before = t.begin(&turns, at);
            assert_eq!(t.routed, 0, "a new turn");
            loop {
                t.count(500);
                t.end(&turns, at, before);
                if t.spent() {
                    break;
                }
                at += MS;
                before = t.begin(&turns, at);
            }
            assert_eq!(t.routed, 33000);
        }
    }

    #[test]
    fn a_turn_stays_small() {
        // Every connection holds one (in its `Active`, beside 4 bytes of its own before).
        assert!(std::mem::size_of::<Turn>() <= 12);
    }

    #[test]
    fn nobody_counts_while_nobody_gives_way() {
        let start = Instant::now();
        let turns = Turns::new(start);
        let mut b = Turn::new(&turns, start);
        for _ in 0..10 {
            other_routes(&mut b, &turns, start);
        }
        assert_eq!(turns.routed.load(Ordering::Relaxed), 0);
        assert_eq!(turns.giving_way.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_single_message_to_more_subscribers_than_a_turn_is_not_split() {
        let start = Instant::now();
        let turns = Turns::new(start);
        let mut t = Turn::new(&turns, start);
        let before = t.begin(&turns, start);
        t.count(100_000);
        t.end(&turns, start, before);
        assert!(t.spent());
        assert_eq!(t.routed, 100_000);
        // A huge count saturates rather than wrapping.
        t.count(usize::MAX);
        assert_eq!(t.routed, u32::MAX);
    }
}
