//! Broker core.
