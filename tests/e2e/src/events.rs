//! Events recorded about an object (events.k8s.io/v1).
use anyhow::Result;
use k8s_openapi::api::events::v1::Event;
use kube::{api::ListParams, Api};

use crate::Cluster;

/// The note of an Event with `reason` about the object named `regarding`, if one was recorded.
pub async fn find(c: &Cluster, reason: &str, regarding: &str) -> Result<Option<String>> {
    find_with(c, reason, regarding, "").await
}

/// The note of an Event with `reason` about `regarding` whose note contains `text`.
pub async fn find_with(
    c: &Cluster,
    reason: &str,
    regarding: &str,
    text: &str,
) -> Result<Option<String>> {
    let events: Api<Event> = Api::all(c.client.clone());
    let list = events
        .list(&ListParams::default().fields(&format!("reason={reason}")))
        .await?;
    Ok(list
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(regarding))
        .filter_map(|e| e.note)
        .find(|n| n.contains(text)))
}
