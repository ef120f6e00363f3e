//! One module per resource.

pub mod admin;
pub mod dashboard;
pub mod health;
pub mod operate;
pub mod usage;
