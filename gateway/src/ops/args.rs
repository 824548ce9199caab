//! [`Args`]: an operation's arguments as a transport read them, before the operation reads them.
//!
//! Named strings, already percent-decoded: the path segments an HTTP route matched and its query
//! string, an MQTT request topic's query string, a QUIC request header's `params`. Beside them the
//! [`Params`] the transport already knows (its name, trace context, content type, forwarded
//! headers). An operation takes what it needs ([`Args::required`], [`Args::take`]); what is left
//! becomes options and metadata ([`Args::finish`]), as Dapr's query strings do.

use http::Method;

use crate::call::Params;
use crate::error::Error;

/// An operation's arguments (see the module doc).
#[derive(Debug, Clone, Default)]
pub struct Args {
    /// Named arguments in the order the transport read them; a name may repeat (`key=a&key=b`).
    named: Vec<(String, String)>,
    /// What the transport already set; the operation may add to it (a device's `etag`).
    pub params: Params,
    /// The operation being decoded, for error messages.
    pub(super) op: &'static str,
}

/// Decodes `%XX` escapes in one path segment or query component; `+` is a space only in query
/// strings.
pub fn percent_decode(s: &str, plus_is_space: bool) -> Result<String, Error> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| Error::malformed(format!("bad percent-encoding in {s:?}")))?;
                out.push(hex);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out)
        .map_err(|_| Error::malformed(format!("{s:?} is not UTF-8 after decoding")))
}

impl Args {
    /// No arguments.
    pub fn new() -> Self {
        Args::default()
    }

    /// With the parameters a transport already set.
    pub fn with_params(params: Params) -> Self {
        Args {
            params,
            ..Args::default()
        }
    }

    /// Adds a named argument.
    #[must_use]
    pub fn with(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.push(name, value);
        self
    }

    /// Adds a named argument.
    pub fn push(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.named.push((name.into(), value.into()));
    }

    /// Adds the arguments of a query string (`a=1&b=x%2Fy`), decoded.
    pub fn push_query(&mut self, query: Option<&str>) -> Result<(), Error> {
        let Some(q) = query else { return Ok(()) };
        for pair in q.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            self.push(percent_decode(k, true)?, percent_decode(v, true)?);
        }
        Ok(())
    }

    /// Takes the first argument called `name`.
    pub fn take(&mut self, name: &str) -> Option<String> {
        let i = self.named.iter().position(|(k, _)| k == name)?;
        Some(self.named.remove(i).1)
    }

    /// Takes an argument, or says that the operation needs it. An empty value is passed on:
    /// the building block answers it with Dapr's error for that case (`ERR_TOPIC_NAME_EMPTY`, ...).
    pub fn required(&mut self, name: &str) -> Result<String, Error> {
        self.take(name).ok_or_else(|| self.missing(name))
    }

    /// Takes an argument that must not be empty.
    pub fn nonempty(&mut self, name: &str) -> Result<String, Error> {
        self.take(name)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| self.missing(name))
    }

    fn missing(&self, name: &str) -> Error {
        Error::malformed(format!("{} needs the parameter {name}", self.op))
    }

    /// Takes an argument, or `default` when the caller gave none.
    pub fn or(&mut self, name: &str, default: &str) -> String {
        self.take(name).unwrap_or_else(|| default.to_owned())
    }

    /// The HTTP verb to use on an app (`verb`, default `POST`, any case).
    pub fn verb(&mut self) -> Result<Method, Error> {
        match self.take("verb") {
            None => Ok(Method::POST),
            Some(v) => Method::from_bytes(v.to_ascii_uppercase().as_bytes())
                .map_err(|_| Error::malformed(format!("verb {v:?} is not an HTTP method"))),
        }
    }

    /// Configuration keys: every `key` and `keys` argument, each a comma-separated list.
    pub fn keys(&mut self) -> Vec<String> {
        let mut keys = Vec::new();
        self.named.retain(|(k, v)| {
            if k != "key" && k != "keys" {
                return true;
            }
            keys.extend(
                v.split(',')
                    .map(str::trim)
                    .filter(|k| !k.is_empty())
                    .map(str::to_owned),
            );
            false
        });
        keys
    }

    /// The parameters, with the arguments no operation took: `metadata.<name>` as request
    /// metadata, the rest as options (the last of a repeated name wins).
    pub fn finish(self) -> Params {
        let mut params = self.params;
        for (k, v) in self.named {
            match k.strip_prefix("metadata.") {
                Some(name) => params.metadata.insert(name.to_owned(), v),
                None => params.options.insert(k, v),
            };
        }
        params
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_decode() {
        let mut a = Args::new();
        a.push_query(Some("method=v2%2Fitems&x=a+b&&flag")).unwrap();
        assert_eq!(a.take("method").as_deref(), Some("v2/items"));
        assert_eq!(a.take("x").as_deref(), Some("a b"));
        assert_eq!(a.take("flag").as_deref(), Some(""));
        assert!(a.push_query(Some("k=%zz")).is_err());
        assert!(percent_decode("%ff", false).is_err(), "not UTF-8");
        assert_eq!(percent_decode("a+b", false).unwrap(), "a+b");
    }

    #[test]
    fn a_repeated_name_is_taken_in_order() {
        let mut a = Args::new().with("k", "1").with("k", "2");
        assert_eq!(a.take("k").as_deref(), Some("1"));
        assert_eq!(a.finish().options["k"], "2");
    }
}
