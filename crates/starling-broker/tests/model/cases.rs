//! Cases: the clients' profiles, the steps, and running one case.

use super::*;

/// How a client connects, fixed for a case.
#[derive(Clone, Copy)]
pub(crate) struct Profile {
    pub(crate) v5: bool,
    /// Session Expiry Interval a v5 client asks for on every CONNECT.
    pub(crate) expiry: u32,
}

impl Profile {
    pub(crate) fn version(self) -> ProtocolVersion {
        if self.v5 {
            ProtocolVersion::V5
        } else {
            ProtocolVersion::V311
        }
    }

    /// The expiry the broker gives the session of a CONNECT (`Limits::default`: 3.1.1
    /// persistent sessions never expire).
    pub(crate) fn session_expiry(self, clean: bool) -> u32 {
        if self.v5 {
            self.expiry
        } else if clean {
            0
        } else {
            u32::MAX
        }
    }
}

impl fmt::Debug for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.v5 {
            write!(f, "v5(expiry {})", self.expiry)
        } else {
            f.write_str("v3.1.1")
        }
    }
}

/// One step of a case. Client numbers index `NAMES`; a step for a client that cannot take it
/// (a publish while disconnected) does nothing.
#[derive(Clone, Copy)]
pub(crate) enum Step {
    /// A new connection, taking over the client's open one if it has one.
    Connect {
        client: usize,
        clean: bool,
    },
    Subscribe {
        client: usize,
        topic: usize,
        qos: QoS,
    },
    Publish {
        client: usize,
        topic: usize,
        qos: QoS,
    },
    /// A subscriber starts withholding its acknowledgements, or sends what it withheld.
    Acks {
        client: usize,
        on: bool,
    },
    /// DISCONNECT with reason 0.
    Disconnect {
        client: usize,
    },
    /// The network connection drops.
    Drop {
        client: usize,
    },
    /// The broker crashes and restarts over its store.
    Crash,
    Advance {
        secs: u64,
    },
    /// The store stops committing (true) or catches up (false).
    Hold(bool),
}

impl fmt::Debug for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Step::Connect { client, clean } => {
                let how = if clean { "clean" } else { "resume" };
                write!(f, "Connect({}, {how})", NAMES[client])
            }
            Step::Subscribe { client, topic, qos } => {
                write!(
                    f,
                    "Subscribe({}, {}, {})",
                    NAMES[client], TOPICS[topic], qos as u8
                )
            }
            Step::Publish { client, topic, qos } => {
                write!(
                    f,
                    "Publish({}, {}, {})",
                    NAMES[client], TOPICS[topic], qos as u8
                )
            }
            Step::Acks { client, on } => write!(f, "Acks({}, {on})", NAMES[client]),
            Step::Disconnect { client } => write!(f, "Disconnect({})", NAMES[client]),
            Step::Drop { client } => write!(f, "Drop({})", NAMES[client]),
            Step::Crash => f.write_str("Crash"),
            Step::Advance { secs } => write!(f, "Advance({secs}s)"),
            Step::Hold(on) => write!(f, "Hold({on})"),
        }
    }
}

pub(crate) fn profile() -> impl Strategy<Value = Profile> {
    let expiry = prop_oneof![1 => Just(0u32), 2 => Just(5), 3 => Just(600)];
    (any::<bool>(), expiry).prop_map(|(v5, expiry)| Profile { v5, expiry })
}

pub(crate) fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        1 => Just(QoS::AtMostOnce),
        2 => Just(QoS::AtLeastOnce),
        3 => Just(QoS::ExactlyOnce),
    ]
}

pub(crate) fn step() -> impl Strategy<Value = Step> {
    let topic = 0..TOPICS.len();
    prop_oneof![
        8 => (0..2usize, topic.clone(), qos())
            .prop_map(|(client, topic, qos)| Step::Publish { client, topic, qos }),
        2 => (2..4usize, topic, qos())
            .prop_map(|(client, topic, qos)| Step::Subscribe { client, topic, qos }),
        4 => (0..4usize, prop::bool::weighted(0.2))
            .prop_map(|(client, clean)| Step::Connect { client, clean }),
        3 => (2..4usize, any::<bool>()).prop_map(|(client, on)| Step::Acks { client, on }),
        1 => (0..4usize).prop_map(|client| Step::Disconnect { client }),
        2 => (0..4usize).prop_map(|client| Step::Drop { client }),
        2 => Just(Step::Crash),
        2 => (1..=3u64).prop_map(|secs| Step::Advance { secs }),
        3 => any::<bool>().prop_map(Step::Hold),
    ]
}

/// A case: the clients' profiles and the steps.
pub(crate) type Case = ([Profile; 4], Vec<Step>);

pub(crate) fn case() -> impl Strategy<Value = Case> {
    (
        prop::array::uniform4(profile()),
        prop::collection::vec(step(), 1..=MAX_STEPS),
    )
}

/// Runs one case to the end and checks every promise.
pub(crate) fn run(profiles: [Profile; 4], steps: &[Step]) {
    let mut w = World::new(profiles);
    w.setup();
    for (i, &step) in steps.iter().enumerate() {
        w.trace.push(format!("{i}: {step:?}"));
        w.step(step);
        w.after_step();
    }
    w.finish();
}
