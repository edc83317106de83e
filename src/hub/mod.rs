//! The embedded IoT hub: the device registry, automatic configurations, persistence, a
//! simulated fleet, and the hub's HTTP server. What IoT Hub *is* (documents, limits, the
//! query language) lives in [`crate::iothub`]; this module runs it.
//!
//! - [`state`]: what one hub holds ([`state::HubState`]), plain data with no I/O.
//! - [`registry`]: devices, twins, and twin queries with their paging.
//! - [`engine`]: configurations and the incremental engine that applies them.
//! - [`index`]: the columns conditions are answered from.
//! - [`store`]: SQLite persistence.
//! - [`embedded`]: all of it behind one lock, as [`EmbeddedHub`].
//! - [`fleet`]: simulated devices that react to desired properties.
//! - [`server`]: the hub over HTTP (`ringmaster hub serve`); [`mod@bench`]: `ringmaster hub bench`.

pub mod bench;
pub mod bitset;
pub mod embedded;
pub mod engine;
pub mod fleet;
pub mod index;
pub mod registry;
pub mod server;
pub mod state;
pub mod store;

pub use embedded::{EmbeddedHub, HubOptions};
