//! Event notes within the API's limit: `events.k8s.io/v1` rejects a note over 1 KiB, which would
//! lose the whole Event (an installer's message alone may be 1,000 bytes).

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
    use super::*;

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
