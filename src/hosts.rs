//! Where the worker may send requests (`dialer.allowed_hosts`). Pure: no pgrx.
//!
//! A request goes out only to a host on the list (`host` allows any port, `host:port` that
//! port). Loopback, link-local, private and other non-public addresses are refused unless the
//! address itself is listed, and the check is made on the addresses DNS answers too, so a listed
//! name that resolves to 169.254.169.254 or 127.0.0.1 is refused where the request is sent.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

/// The providers' official API hosts: the default list (dialer.allowed_hosts' default).
pub const DEFAULT: &std::ffi::CStr = c"api.ultravox.ai,api.twilio.com,api.vapi.ai,api.retellai.com,api.bland.ai";

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    host: String,
    port: Option<u16>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    entries: Vec<Entry>,
}

/// `[::1]:8080` → ("::1", Some(8080)); `host:443` → ("host", Some(443)); `host` → ("host", None).
fn split_host_port(s: &str) -> Option<(String, Option<u16>)> {
    let s = s.trim();
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse().ok()?),
            None if after.is_empty() => None,
            None => return None,
        };
        return Some((host.to_ascii_lowercase(), port));
    }
    if s.parse::<IpAddr>().is_ok() {
        return Some((s.to_ascii_lowercase(), None)); // a bare IPv6 address has colons but no port
    }
    match s.rsplit_once(':') {
        Some((h, p)) => Some((h.to_ascii_lowercase(), Some(p.parse().ok()?))),
        None => Some((s.to_ascii_lowercase(), None)),
    }
}

/// Addresses no request of a tenant may reach unless the operator lists them.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (64..128).contains(&o[1])) // carrier-grade NAT
                || (o[0] == 198 && (o[1] == 18 || o[1] == 19)) // benchmarking
                || o[0] >= 240
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            // IPv6 forms that carry an IPv4 address a host or a gateway may reach: judged by that
            // address (and refused when it is internal).
            let embedded = if let Some(v4) = v6.to_ipv4_mapped() {
                Some(v4) // ::ffff:a.b.c.d
            } else if s[..6] == [0; 6] {
                return true; // ::a.b.c.d (IPv4-compatible: deprecated, never routed), :: and ::1
            } else if s[..6] == [0, 0, 0, 0, 0xffff, 0] {
                Some(v4_from(s[6], s[7])) // ::ffff:0:a.b.c.d (IPv4-translated, SIIT)
            } else if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                Some(v4_from(s[6], s[7])) // 64:ff9b::a.b.c.d (NAT64, well-known prefix)
            } else if s[0] == 0x2002 {
                Some(v4_from(s[1], s[2])) // 2002:AABB:CCDD::/48 (6to4)
            } else {
                None
            };
            if let Some(v4) = embedded {
                return is_internal(IpAddr::V4(v4));
            }
            let first = s[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local
                || (first & 0xffc0) == 0xfe80 // link-local
                || (first & 0xffc0) == 0xfec0 // site-local (deprecated, still routed by some)
                || (s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1) // 64:ff9b:1::/48, local-use NAT64
                || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
                || (s[0] == 0x0100 && s[1..4] == [0, 0, 0]) // discard-only
        }
    }
}

fn v4_from(high: u16, low: u16) -> std::net::Ipv4Addr {
    let [a, b] = high.to_be_bytes();
    let [c, d] = low.to_be_bytes();
    std::net::Ipv4Addr::new(a, b, c, d)
}

impl AllowList {
    /// Parses the setting; an entry that is not `host` or `host:port` is an error naming it.
    pub fn parse(setting: &str) -> Result<AllowList, String> {
        let mut entries = Vec::new();
        for raw in setting.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (host, port) = split_host_port(raw).ok_or_else(|| format!("dialer.allowed_hosts: {raw:?} is not host or host:port"))?;
            if host.is_empty() || host.contains('/') || host.contains('@') {
                return Err(format!("dialer.allowed_hosts: {raw:?} is not host or host:port"));
            }
            entries.push(Entry { host, port });
        }
        Ok(AllowList { entries })
    }

    fn listed(&self, host: &str, port: u16) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
        self.entries.iter().any(|e| e.host == host && e.port.is_none_or(|p| p == port))
    }

    /// The name check, made where a base_url is stored and before a request is built: the host
    /// must be listed, and an address written in the URL must not be internal unless listed.
    pub fn check_host(&self, host: &str, port: u16) -> Result<(), String> {
        if !self.listed(host, port) {
            return Err(format!(
                "{host}:{port} is not in dialer.allowed_hosts; an operator can add it there (postgresql.conf, then reload)"
            ));
        }
        Ok(())
    }

    /// The address check, on what DNS answered for a listed host: internal addresses only when
    /// the address itself is listed.
    pub fn check_addrs(&self, host: &str, port: u16, addrs: &[SocketAddr]) -> Result<(), String> {
        self.check_host(host, port)?;
        for a in addrs {
            if is_internal(a.ip()) && !self.listed(&a.ip().to_string(), port) {
                return Err(format!(
                    "{host} resolves to {}, an internal address: list that address in dialer.allowed_hosts to allow it",
                    a.ip()
                ));
            }
        }
        Ok(())
    }

    /// A URL's host and port (default 80/443), or why it has none.
    pub fn check_url(&self, url: &str) -> Result<(String, u16), String> {
        let (scheme, rest) = url.split_once("://").ok_or_else(|| format!("{url:?} is not an http(s) URL"))?;
        let default_port = match scheme.to_ascii_lowercase().as_str() {
            "http" => 80,
            "https" => 443,
            _ => return Err(format!("{url:?} is not an http(s) URL")),
        };
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        if authority.contains('@') {
            return Err("a base_url may not carry credentials (user@host)".into());
        }
        let (host, port) = split_host_port(authority).ok_or_else(|| format!("{url:?} has no usable host"))?;
        let port = port.unwrap_or(default_port);
        self.check_host(&host, port)?;
        if let Ok(ip) = host.parse::<IpAddr>() {
            self.check_addrs(&host, port, &[SocketAddr::new(ip, port)])?;
        }
        Ok((host, port))
    }

    /// A DNS resolution that only ever yields addresses this list allows (ureq's resolver hook).
    pub fn resolve(&self, netloc: &str) -> std::io::Result<Vec<SocketAddr>> {
        let refused = |why: String| std::io::Error::new(std::io::ErrorKind::PermissionDenied, why);
        let (host, port) = split_host_port(netloc).ok_or_else(|| refused(format!("{netloc:?} is not host:port")))?;
        let port = port.unwrap_or(443);
        self.check_host(&host, port).map_err(refused)?;
        let addrs: Vec<SocketAddr> = netloc.to_socket_addrs()?.collect();
        self.check_addrs(&host, port, &addrs).map_err(refused)?;
        Ok(addrs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_list_has_the_official_hosts_only() {
        let l = AllowList::parse(DEFAULT.to_str().unwrap()).unwrap();
        assert!(l.check_url("https://api.ultravox.ai/api/calls").is_ok());
        assert!(l.check_url("https://api.twilio.com/2010-04-01/Accounts/AC1/Calls.json").is_ok());
        let e = l.check_url("http://169.254.169.254/latest/meta-data").unwrap_err();
        assert!(e.contains("not in dialer.allowed_hosts"), "{e}");
        assert!(l.check_url("http://127.0.0.1:5432").is_err());
        assert!(l.check_url("https://api.ultravox.ai.evil.example/").is_err());
        assert!(l.check_url("https://user@api.ultravox.ai/").unwrap_err().contains("credentials"));
        assert!(l.check_url("ftp://api.ultravox.ai/").is_err());
    }

    #[test]
    fn ports_and_addresses() {
        let l = AllowList::parse("127.0.0.1:8089, api.example.com, [::1]:9000").unwrap();
        assert_eq!(l.check_url("http://127.0.0.1:8089/x"), Ok(("127.0.0.1".into(), 8089)));
        assert!(l.check_url("http://127.0.0.1:5432/").is_err(), "only the listed port");
        assert!(l.check_url("https://api.example.com:8443/").is_ok(), "a bare host allows any port");
        assert!(l.check_url("http://[::1]:9000/").is_ok());
        // A listed name whose DNS answer is internal is refused; a listed internal address is not.
        let internal = [SocketAddr::from(([10, 0, 0, 7], 443))];
        assert!(l.check_addrs("api.example.com", 443, &internal).unwrap_err().contains("internal address"));
        let public = [SocketAddr::from(([93, 184, 216, 34], 443))];
        assert!(l.check_addrs("api.example.com", 443, &public).is_ok());
        assert!(AllowList::parse("a/b").is_err());
        assert!(AllowList::parse("host:notaport").is_err());
    }

    #[test]
    fn internal_ranges() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(is_internal(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["93.184.216.34", "8.8.8.8", "2606:4700::1111"] {
            assert!(!is_internal(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn ipv6_forms_that_carry_an_ipv4_address_are_judged_by_it() {
        for ip in [
            "::127.0.0.1",
            "::a9fe:a9fe",
            "::8.8.8.8", // IPv4-compatible: deprecated, refused whatever it carries
            "::ffff:0:127.0.0.1",
            "::ffff:0:a9fe:a9fe",
            "64:ff9b::127.0.0.1",
            "64:ff9b::10.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b:1::8.8.8.8",
            "2002:7f00:1::1",
            "2002:a9fe:a9fe::",
            "2002:c0a8:101::1",
            "fec0::1",
            "fed0:1::2",
            "2001:db8::1",
        ] {
            assert!(is_internal(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["::ffff:0:8.8.8.8", "64:ff9b::8.8.8.8", "2002:808:808::1", "2001:4860:4860::8888"] {
            assert!(!is_internal(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn the_resolver_refuses_before_connecting() {
        let l = AllowList::parse("127.0.0.1").unwrap();
        assert!(l.resolve("127.0.0.1:8089").is_ok());
        let e = l.resolve("localhost:8089").unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied);
        let l = AllowList::parse("localhost").unwrap();
        assert!(l.resolve("localhost:8089").unwrap_err().to_string().contains("internal address"), "a name resolving to loopback");
    }
}
