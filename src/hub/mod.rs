//! The embedded IoT hub: twins, the query language, automatic configurations,
//! persistence and a simulated fleet.
//!
//! - [`twin`] and [`device`]: the documents, stored flat, with IoT Hub's limits.
//! - [`query`]: the query language, compiled once and evaluated per twin.
//! - [`engine`]: the state and the incremental configuration engine.
//! - [`store`]: SQLite persistence.
//! - [`embedded`]: all of it behind one lock, as [`EmbeddedHub`].
//! - [`fleet`]: simulated devices that react to desired properties.

pub mod bench;
pub mod bitset;
pub mod embedded;
pub mod engine;
pub mod fleet;
pub mod server;
pub mod store;

pub use embedded::{EmbeddedHub, HubOptions};
