//! The embedded IoT hub: twins, the query language, automatic configurations,
//! persistence and a simulated fleet. See the module docs of each part.

pub mod configuration;
pub mod error;
pub mod path;
pub mod query;
pub mod value;

pub use error::{ErrorCode, HubError};
