//! From a raw request target to a route: path normalisation and the route table.

pub mod normalize;
pub mod overlap;
pub mod table;
pub mod template;
