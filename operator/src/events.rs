//! Events: notes within the API's limit (`events.k8s.io/v1` rejects a note over 1 KiB, which would
//! lose the whole Event; an installer's message alone may be 1,000 bytes), and a [`Recorder`]
//! that never files a new message under an old one.

use std::{
    collections::{hash_map::DefaultHasher, HashMap},
    hash::{Hash, Hasher},
    sync::Mutex,
};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::{
    runtime::events::{self, Event, Reporter},
    Client,
};

/// Most (object, reason) pairs whose last note we remember; past it the memory starts afresh
/// (the worst case is one Event created where a repeat would have been counted).
const MAX_TRACKED: usize = 10_000;

/// (object, reason) → (hash of the last note, the recorder that filed it).
type ByNote = HashMap<(String, String), (u64, events::Recorder)>;

/// kube's `Recorder` counts a repeat of an Event (same object, type, reason, action) into the
/// first one's `series` and keeps the first one's note, so a second, different failure with the
/// same reason (`WasmRuntimeInstallFailed`: Pod Security, then a parse error) would show the old
/// message. This recorder keeps kube's counting for identical notes and files a new Event
/// when the note changes.
#[derive(Clone)]
pub struct Recorder {
    client: Client,
    reporter: Reporter,
    by_note: std::sync::Arc<Mutex<ByNote>>,
}

impl Recorder {
    pub fn new(client: Client, reporter: Reporter) -> Self {
        Recorder {
            client,
            reporter,
            by_note: Default::default(),
        }
    }

    /// Publishes `ev` about `reference` (see the type's documentation).
    pub async fn publish(
        &self,
        ev: &Event,
        reference: &ObjectReference,
    ) -> Result<(), kube::Error> {
        let object = format!(
            "{}/{}/{}/{}",
            reference.kind.as_deref().unwrap_or_default(),
            reference.namespace.as_deref().unwrap_or_default(),
            reference.name.as_deref().unwrap_or_default(),
            reference.uid.as_deref().unwrap_or_default(),
        );
        let mut h = DefaultHasher::new();
        ev.note.hash(&mut h);
        let note = h.finish();
        let recorder = {
            let mut map = self.by_note.lock().unwrap_or_else(|e| e.into_inner());
            let key = (object, ev.reason.clone());
            match map.get(&key) {
                Some((n, r)) if *n == note => r.clone(),
                _ => {
                    if map.len() >= MAX_TRACKED {
                        map.clear();
                    }
                    let r = events::Recorder::new(self.client.clone(), self.reporter.clone());
                    map.insert(key, (note, r.clone()));
                    r
                }
            }
        };
        recorder.publish(ev, reference).await
    }
}

/// The API's limit on `Event.note`, in bytes.
pub const MAX_NOTE: usize = 1024;

/// `note` cut to [`MAX_NOTE`] bytes on a character boundary, with `…` when cut.
pub fn note(note: impl Into<String>) -> String {
    let mut s = note.into();
    if s.len() <= MAX_NOTE {
        return s;
    }
    let ellipsis = "…";
    let mut end = MAX_NOTE - ellipsis.len();
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s.push_str(ellipsis);
    s
}

#[cfg(test)]
mod tests {
    use kube::runtime::events::EventType;
    use serde_json::json;

    use super::*;
    use crate::fixtures::{finish, mock_client, Step};

    fn failed(note: &str) -> Event {
        Event {
            type_: EventType::Warning,
            reason: "WasmRuntimeInstallFailed".into(),
            note: Some(note.into()),
            action: "ProvisionRuntime".into(),
            secondary: None,
        }
    }

    #[tokio::test]
    async fn a_new_note_is_a_new_event_and_a_repeat_is_counted() {
        let (client, verifier) = mock_client();
        let recorder = Recorder::new(
            client,
            Reporter {
                controller: crate::names::FIELD_MANAGER.into(),
                instance: None,
            },
        );
        let node = ObjectReference {
            kind: Some("Node".into()),
            name: Some("n1".into()),
            uid: Some("u1".into()),
            ..ObjectReference::default()
        };
        let post = |note: &'static str| {
            Step::event("default", "Warning", "WasmRuntimeInstallFailed")
                .body(move |b| assert_eq!(b["note"], note, "{b}"))
        };
        let task = verifier.run(vec![
            post("PodSecurity refused the pod"),
            // kube's Recorder alone would PATCH the first Event's series here, note unchanged.
            post("ParseError: config.toml"),
            Step::merge_patch("/apis/events.k8s.io/v1/namespaces/default/events/n1.")
                .under()
                .body(|b| assert_eq!(b["series"]["count"], 2, "{b}"))
                .reply(json!({})),
        ]);
        recorder
            .publish(&failed("PodSecurity refused the pod"), &node)
            .await
            .expect("first");
        recorder
            .publish(&failed("ParseError: config.toml"), &node)
            .await
            .expect("second");
        recorder
            .publish(&failed("ParseError: config.toml"), &node)
            .await
            .expect("repeat");
        drop(recorder);
        finish(task).await;
    }

    #[test]
    fn notes_fit_the_api_limit() {
        assert_eq!(note("short"), "short");
        let exact = "x".repeat(MAX_NOTE);
        assert_eq!(note(exact.clone()), exact);
        let long = "é".repeat(2000);
        let cut = note(long);
        assert!(cut.len() <= MAX_NOTE, "{}", cut.len());
        assert!(cut.ends_with('…'));
        assert!(cut.starts_with("éé"));
    }
}
