//! Who may call from a browser: the `Origin` check (against CSRF from any
//! web page) and, on a loopback bind, the `Host` check (against DNS
//! rebinding). Pure functions of the headers; no I/O.

use std::net::{Ipv4Addr, Ipv6Addr};

use axum::http::{header, HeaderMap};

/// What a request's `Origin` and `Host` must be.
#[derive(Debug, Clone, Default)]
pub struct OriginPolicy {
    /// Origins allowed to call (`scheme://host[:port]`, lowercase, no slash).
    allowed: Vec<String>,
    /// The daemon listens on a loopback address: `Host` must name loopback.
    loopback_bind: bool,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Origin,
    Host,
}

impl OriginPolicy {
    pub fn new<I, S>(allowed: I, loopback_bind: bool) -> OriginPolicy
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        OriginPolicy {
            allowed: allowed
                .into_iter()
                .map(|o| normalise_origin(o.as_ref()))
                .collect(),
            loopback_bind,
        }
    }

    /// Ok unless `Origin` is present and not allowed, or (loopback bind)
    /// `Host` is present and not a loopback name or address. A request
    /// without either header (curl, scripts) passes.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        if self.loopback_bind {
            if let Some(host) = headers.get(header::HOST) {
                let loopback = host.to_str().is_ok_and(is_loopback_host);
                if !loopback {
                    return Err(Refusal::Host);
                }
            }
        }
        for origin in headers.get_all(header::ORIGIN) {
            let allowed = origin
                .to_str()
                .is_ok_and(|o| self.allowed.contains(&normalise_origin(o)));
            if !allowed {
                return Err(Refusal::Origin);
            }
        }
        Ok(())
    }

    /// The allowed origins, normalised.
    pub fn allowed(&self) -> &[String] {
        &self.allowed
    }
}

/// Origins compare case-insensitively, and a trailing slash is not part of one.
fn normalise_origin(origin: &str) -> String {
    origin.trim().trim_end_matches('/').to_ascii_lowercase()
}

/// `localhost`, `127.x.x.x` or `[::1]`, each with or without a port.
pub fn is_loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        // [v6] or [v6]:port
        let Some((v6, after)) = rest.split_once(']') else {
            return false;
        };
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(is_port)) {
            return false;
        }
        return v6.parse::<Ipv6Addr>().is_ok_and(|ip| ip.is_loopback());
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if is_port(port) => name,
            Some(_) => return false,
            None => host,
        }
    };
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<Ipv4Addr>().is_ok_and(|ip| ip.is_loopback())
}

fn is_port(text: &str) -> bool {
    !text.is_empty() && text.len() <= 5 && text.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(name, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    #[test]
    fn loopback_hosts_are_names_and_addresses_of_loopback() {
        for host in [
            "localhost",
            "LocalHost:7777",
            "127.0.0.1",
            "127.0.0.1:7777",
            "127.8.9.10:1",
            "[::1]",
            "[::1]:7777",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "evil.example",
            "evil.example:7777",
            "localhost.evil.example",
            "10.0.0.1:7777",
            "0.0.0.0",
            "[::2]:7777",
            "[::1]x",
            "::1",
            "127.0.0.1:port",
            "127.1",
            "",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }

    #[test]
    fn a_foreign_origin_is_refused_on_any_bind_and_no_origin_passes() {
        for loopback in [true, false] {
            let policy = OriginPolicy::new(["https://Dash.example/"], loopback);
            assert_eq!(policy.check(&HeaderMap::new()), Ok(()));
            let foreign = headers(&[(header::ORIGIN, "https://evil.example")]);
            assert_eq!(policy.check(&foreign), Err(Refusal::Origin));
            let null = headers(&[(header::ORIGIN, "null")]);
            assert_eq!(policy.check(&null), Err(Refusal::Origin));
            let allowed = headers(&[(header::ORIGIN, "https://dash.example")]);
            assert_eq!(policy.check(&allowed), Ok(()));
        }
    }

    #[test]
    fn the_host_is_checked_on_a_loopback_bind_only() {
        let rebinding = headers(&[(header::HOST, "attacker.example:7777")]);
        assert_eq!(
            OriginPolicy::new::<_, &str>([], true).check(&rebinding),
            Err(Refusal::Host)
        );
        assert_eq!(
            OriginPolicy::new::<_, &str>([], false).check(&rebinding),
            Ok(())
        );
        let local = headers(&[(header::HOST, "127.0.0.1:7777")]);
        assert_eq!(OriginPolicy::new::<_, &str>([], true).check(&local), Ok(()));
    }
}
