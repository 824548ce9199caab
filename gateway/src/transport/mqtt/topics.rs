//! Topic names and filters: validity, matching, and the rule that makes isolation hold by
//! construction — a device only ever publishes to, or subscribes in, `edgecar/v1/<its id>/`.
//!
//! The id is the one authentication established; nothing a device writes in a topic can name
//! another device's tree, because every check compares whole levels against that id. Matching is
//! our own (rumqttc's helper slices strings by bytes and is not meant for hostile input).

/// The first levels of every device tree.
pub const ROOT: &str = "edgecar/v1";

/// `edgecar/v1/<device>/`.
pub fn tree(device: &str) -> String {
    format!("{ROOT}/{device}/")
}

/// Whether `name` is a valid topic name to publish to: not empty, no wildcards, no NUL.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= usize::from(u16::MAX) && !name.contains(['+', '#', '\0'])
}

/// The part of `topic` after the device's tree prefix, if `topic` is a valid name inside it.
pub fn in_tree<'a>(device: &str, topic: &'a str) -> Option<&'a str> {
    let rest = topic
        .strip_prefix(ROOT)?
        .strip_prefix('/')?
        .strip_prefix(device)?
        .strip_prefix('/')?;
    (valid_name(topic) && !rest.is_empty()).then_some(rest)
}

/// Whether `filter` is a valid topic filter (MQTT 3.1.1 §4.7, MQTT 5 §4.7).
pub fn valid_filter(filter: &str) -> bool {
    if filter.is_empty() || filter.len() > usize::from(u16::MAX) || filter.contains('\0') {
        return false;
    }
    let levels: Vec<&str> = filter.split('/').collect();
    let last = levels.len() - 1;
    levels.iter().enumerate().all(|(i, l)| match *l {
        "#" => i == last,
        "+" => true,
        l => !l.contains(['+', '#']),
    })
}

/// What a SUBSCRIBE filter from a device amounts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterCheck {
    /// Inside the device's tree: granted.
    Allowed,
    /// Could match topics outside the device's tree: refused (not authorized).
    OutsideTree,
    /// Not a valid filter.
    Invalid,
    /// A shared subscription (`$share/...`), which a device endpoint has no use for.
    Shared,
}

/// Checks a device's filter. Wildcards may appear only after `edgecar/v1/<device>/`.
pub fn check_filter(device: &str, filter: &str) -> FilterCheck {
    if filter.starts_with("$share/") {
        return FilterCheck::Shared;
    }
    if !valid_filter(filter) {
        return FilterCheck::Invalid;
    }
    match filter
        .strip_prefix(ROOT)
        .and_then(|r| r.strip_prefix('/'))
        .and_then(|r| r.strip_prefix(device))
        .and_then(|r| r.strip_prefix('/'))
    {
        Some(rest) if !rest.is_empty() => FilterCheck::Allowed,
        _ => FilterCheck::OutsideTree,
    }
}

/// Whether `topic` (a valid name) matches `filter` (a valid filter).
pub fn matches(filter: &str, topic: &str) -> bool {
    let mut t = topic.split('/');
    for f in filter.split('/') {
        if f == "#" {
            return true;
        }
        match t.next() {
            Some(level) if f == "+" || f == level => {}
            _ => return false,
        }
    }
    t.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_stays_in_its_tree() {
        assert_eq!(in_tree("d1", "edgecar/v1/d1/req/x/1"), Some("req/x/1"));
        for t in [
            "edgecar/v1/d1",
            "edgecar/v1/d1/",
            "edgecar/v1/d10/req",
            "edgecar/v1/d/req",
            "edgecar/v1/d2/req",
            "edgecar/v2/d1/req",
            "edgecar/v1/d1/req/#",
            "edgecar/v1/d1/a+b",
            "other/edgecar/v1/d1/x",
            "/edgecar/v1/d1/x",
        ] {
            assert_eq!(in_tree("d1", t), None, "{t}");
        }
    }

    #[test]
    fn filters_outside_the_tree_are_refused() {
        use FilterCheck::*;
        for (f, want) in [
            ("edgecar/v1/d1/#", Allowed),
            ("edgecar/v1/d1/res/+/+/+", Allowed),
            ("edgecar/v1/d1/+", Allowed),
            ("edgecar/v1/d1", OutsideTree),
            ("edgecar/v1/d1/", OutsideTree),
            ("edgecar/v1/+/#", OutsideTree),
            ("edgecar/v1/#", OutsideTree),
            ("edgecar/#", OutsideTree),
            ("#", OutsideTree),
            ("+/v1/d1/#", OutsideTree),
            ("edgecar/v1/d2/#", OutsideTree),
            ("edgecar/v1/d10/#", OutsideTree),
            ("edgecar/v1/d1/a#", Invalid),
            ("edgecar/v1/d1/#/x", Invalid),
            ("edgecar/v1/d1/x+", Invalid),
            ("", Invalid),
            ("$share/g/edgecar/v1/d1/#", Shared),
            ("$SYS/#", OutsideTree),
        ] {
            assert_eq!(check_filter("d1", f), want, "{f}");
        }
    }

    #[test]
    fn matching() {
        assert!(matches("edgecar/v1/d/#", "edgecar/v1/d/res/a/1/200"));
        assert!(matches(
            "edgecar/v1/d/res/+/1/+",
            "edgecar/v1/d/res/a/1/200"
        ));
        assert!(!matches("edgecar/v1/d/res/+", "edgecar/v1/d/res/a/1"));
        assert!(matches("a/b", "a/b"));
        assert!(!matches("a/b", "a/b/c"));
        assert!(matches("a/#", "a"), "'#' matches the parent level too");
        assert!(matches("a/+/c", "a//c"));
        assert!(!matches("ü/+", "é/x"));
    }
}
