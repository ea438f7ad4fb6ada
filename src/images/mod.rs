//! Base images: where they come from ([`catalog`], [`fetch`]), how they are
//! checked ([`checksum`]) and how they are kept in the pool ([`record`],
//! [`store`]). The verbs that use them are `ops::pull` and `ops::image`.

pub mod catalog;
pub mod checksum;
mod error;
pub mod fetch;
pub mod inspect;
pub mod record;
pub mod store;

pub use error::Error;
