//! Pure functions from desired state to Kubernetes objects.

pub mod app;
pub mod grants;
pub mod installer;
