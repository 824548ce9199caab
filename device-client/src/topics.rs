//! The device protocol's topics, device side: building request topics, reading reply and command
//! topics. Pure functions, so the rules in docs/device-protocol.md are tested here without a
//! gateway.

/// `edgecar/v1/<device>/`.
pub fn tree(device: &str) -> String {
    format!("edgecar/v1/{device}/")
}

/// Percent-encodes a parameter name or value for a request topic's query.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(char::from(b));
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Decodes `%XX` escapes (invalid escapes are kept as they are).
pub fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = (b[i] == b'%')
            .then(|| b.get(i + 1..i + 3))
            .flatten()
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match hex {
            Some(v) => {
                out.push(v);
                i += 3;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `edgecar/v1/<device>/req/<op>/<rid>[?name=value&...]`.
pub fn request(device: &str, op: &str, rid: &str, params: &[(&str, &str)]) -> String {
    let mut t = format!("{}req/{op}/{rid}", tree(device));
    for (i, (k, v)) in params.iter().enumerate() {
        t.push(if i == 0 { '?' } else { '&' });
        t.push_str(&encode(k));
        t.push('=');
        t.push_str(&encode(v));
    }
    t
}

/// A reply topic read: `res/<op>/<rid>/<status>[?etag=...&offer=...&cache=...]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyTopic {
    /// The operation.
    pub op: String,
    /// The request id.
    pub rid: String,
    /// The HTTP-style status.
    pub status: u16,
    /// The ETag, when the reply carries one.
    pub etag: Option<String>,
    /// For capability replies: the offer that served it.
    pub offer: Option<String>,
    /// For capability replies: `hit`, `miss`, `stale` or `bypass`.
    pub cache: Option<String>,
}

/// Reads a reply topic of `device`.
pub fn parse_reply(device: &str, topic: &str) -> Option<ReplyTopic> {
    let rest = topic.strip_prefix(&tree(device))?.strip_prefix("res/")?;
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let mut levels = path.split('/');
    let (op, rid, status) = (levels.next()?, levels.next()?, levels.next()?);
    if levels.next().is_some() {
        return None;
    }
    let param = |name: &str| {
        query
            .split('&')
            .find_map(|p| p.strip_prefix(name)?.strip_prefix('='))
            .map(decode)
    };
    Some(ReplyTopic {
        op: op.to_owned(),
        rid: rid.to_owned(),
        status: status.parse().ok()?,
        etag: param("etag"),
        offer: param("offer"),
        cache: param("cache"),
    })
}

/// A command topic read: `cmd/<method...>/<rid>`.
pub fn parse_command(device: &str, topic: &str) -> Option<(String, String)> {
    let rest = topic.strip_prefix(&tree(device))?.strip_prefix("cmd/")?;
    let (method, rid) = rest.rsplit_once('/')?;
    (!method.is_empty() && !rid.is_empty()).then(|| (method.to_owned(), rid.to_owned()))
}

/// `(pubsub, topic)` of an event delivered to `edgecar/v1/<device>/sub/<pubsub>/<topic...>`.
pub fn parse_event(device: &str, topic: &str) -> Option<(String, String)> {
    let rest = topic.strip_prefix(&tree(device))?.strip_prefix("sub/")?;
    let (pubsub, topic) = rest.split_once('/')?;
    (!pubsub.is_empty() && !topic.is_empty()).then(|| (pubsub.to_owned(), topic.to_owned()))
}

/// `edgecar/v1/<device>/telemetry[/<stream>]`.
pub fn telemetry(device: &str, stream: &str) -> String {
    if stream.is_empty() {
        format!("{}telemetry", tree(device))
    } else {
        format!("{}telemetry/{stream}", tree(device))
    }
}

/// `edgecar/v1/<device>/cmdres/<rid>/<status>`.
pub fn command_reply(device: &str, rid: &str, status: u16) -> String {
    format!("{}cmdres/{rid}/{status}", tree(device))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_topics_encode_their_parameters() {
        assert_eq!(
            request("d", "state.get", "7", &[("key", "a/b #1")]),
            "edgecar/v1/d/req/state.get/7?key=a%2Fb%20%231"
        );
        assert_eq!(
            request("d", "state.save", "8", &[]),
            "edgecar/v1/d/req/state.save/8"
        );
        assert_eq!(decode("a%2Fb%20%231%zz"), "a/b #1%zz");
    }

    #[test]
    fn replies_and_commands_are_read() {
        assert_eq!(
            parse_reply("d", "edgecar/v1/d/res/state.get/7/200?etag=a%20b"),
            Some(ReplyTopic {
                op: "state.get".into(),
                rid: "7".into(),
                status: 200,
                etag: Some("a b".into()),
                offer: None,
                cache: None,
            })
        );
        let r = parse_reply(
            "d",
            "edgecar/v1/d/res/capability/8/200?offer=cloud-vision&cache=hit",
        );
        assert_eq!(
            r.as_ref().and_then(|r| r.offer.as_deref()),
            Some("cloud-vision")
        );
        assert_eq!(r.and_then(|r| r.cache), Some("hit".into()));
        assert_eq!(parse_reply("d", "edgecar/v1/e/res/x/7/200"), None);
        assert_eq!(parse_reply("d", "edgecar/v1/d/res/x/7"), None);
        assert_eq!(
            parse_command("d", "edgecar/v1/d/cmd/led/on/c1"),
            Some(("led/on".into(), "c1".into()))
        );
        assert_eq!(parse_command("d", "edgecar/v1/d/cmd/c1"), None);
        assert_eq!(command_reply("d", "c1", 404), "edgecar/v1/d/cmdres/c1/404");
        assert_eq!(telemetry("d", ""), "edgecar/v1/d/telemetry");
        assert_eq!(
            telemetry("d", "oven/temp"),
            "edgecar/v1/d/telemetry/oven/temp"
        );
    }
}
