//! `listeners` -> `Vec<Listener>`: ports, bind addresses (unique across the
//! whole config), protocols, TLS (Manual files or `secretRef`, Automatic
//! certificate policy) and the authentication / authorization references,
//! which must name policies that exist. No file is opened here.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use super::access::Validated;
use super::error::Report;
use super::raw::{RawCertKey, RawListener, RawPort, RawTls};
use super::types::{
    Authentication, Authorization, AutomaticTls, CertKeyFiles, Listener, ListenerPort, ListenerTls,
    Protocol,
};
use super::validate::{cert_policy, enum_value, int_in, path, required};

/// `bindAddress` when a port gives none: all interfaces, as AIO listens.
pub const BIND_ADDRESS_DEFAULT: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);

/// The built-in listener when the config has no `listeners` section: plain
/// MQTT on loopback only, so an unconfigured broker is not reachable.
pub const DEFAULT_LISTENER_ADDR: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 1883);

/// `secretsDir`, for resolving `secretRef`s.
pub(crate) struct Secrets {
    pub dir: Option<PathBuf>,
    /// `secretsDir` was written (even if invalid): don't pile a second error
    /// on every `secretRef`.
    pub given: bool,
}

/// What listener validation needs from the rest of the config.
pub(crate) struct Context<'a> {
    pub secrets: &'a Secrets,
    pub authentications: &'a Validated<Authentication>,
    pub authorizations: &'a Validated<Authorization>,
}

pub(crate) fn default_listener() -> Listener {
    Listener {
        name: "default".to_owned(),
        ports: vec![ListenerPort {
            addr: DEFAULT_LISTENER_ADDR,
            protocol: Protocol::Mqtt,
            authentication_ref: None,
            authorization_ref: None,
            tls: None,
            shards: None,
        }],
    }
}

pub(crate) fn listeners(
    raw: Option<&[Option<RawListener>]>,
    context: &Context<'_>,
    report: &mut Report,
) -> Vec<Listener> {
    let Some(raw) = raw else {
        return vec![default_listener()];
    };
    if raw.is_empty() {
        report.error(
            "listeners",
            "at least one listener is required (leave the section out for the default listener on 127.0.0.1:1883)",
        );
    }
    let mut listeners = Vec::new();
    let mut names: Vec<(String, String)> = Vec::new();
    let mut bound: Vec<(SocketAddr, String)> = Vec::new();
    for (index, entry) in raw.iter().enumerate() {
        let Some(entry) = entry else { continue };
        let path = format!("listeners[{index}]");
        let name = required(report, format!("{path}.name"), entry.name.as_deref());
        if let Some(name) = name {
            if let Some((_, first)) = names.iter().find(|(seen, _)| seen == name) {
                report.error(
                    format!("{path}.name"),
                    format!("duplicate listener name \"{name}\" (also {first})"),
                );
            }
            names.push((name.to_owned(), path.clone()));
        }
        for (field, value) in [
            ("brokerRef", &entry.broker_ref),
            ("serviceName", &entry.service_name),
            ("serviceType", &entry.service_type),
        ] {
            if value.is_some() {
                report.kubernetes_only(format!("{path}.{field}"));
            }
        }
        let mut ports = Vec::new();
        match entry.ports.as_deref() {
            None => report.error(format!("{path}.ports"), "required"),
            Some([]) => report.error(format!("{path}.ports"), "at least one port is required"),
            Some(raw_ports) => {
                for (port_index, raw_port) in raw_ports.iter().enumerate() {
                    let port_path = format!("{path}.ports[{port_index}]");
                    if let Some(port) = port(raw_port, &port_path, context, report) {
                        check_unique_addr(port.addr, &port_path, &mut bound, report);
                        ports.push(port);
                    }
                }
            }
        }
        if let Some(name) = name {
            listeners.push(Listener {
                name: name.to_owned(),
                ports,
            });
        }
    }
    listeners
}

fn port(
    raw: &RawPort,
    path: &str,
    context: &Context<'_>,
    report: &mut Report,
) -> Option<ListenerPort> {
    if raw.node_port.is_some() {
        report.kubernetes_only(format!("{path}.nodePort"));
    }
    let number = match raw.port {
        None => {
            report.error(format!("{path}.port"), "required");
            None
        }
        Some(value) => int_in(report, format!("{path}.port"), value, 1, u16::MAX.into())
            .and_then(|n| u16::try_from(n).ok()),
    };
    let ip = match raw.bind_address.as_deref() {
        None => Some(BIND_ADDRESS_DEFAULT),
        Some(text) => {
            match text.parse::<IpAddr>() {
                Ok(ip) => Some(ip),
                Err(_) => {
                    report.error(
                    format!("{path}.bindAddress"),
                    format!("not an IP address: \"{text}\" (e.g. \"0.0.0.0\", \"127.0.0.1\", \"::\")"),
                );
                    None
                }
            }
        }
    };
    let protocol = protocol(raw.protocol.as_deref(), path, report);
    let authentication_ref = reference(
        raw.authentication_ref.as_deref(),
        &format!("{path}.authenticationRef"),
        "authentication",
        context.authentications,
        report,
    );
    let authorization_ref = reference(
        raw.authorization_ref.as_deref(),
        &format!("{path}.authorizationRef"),
        "authorization",
        context.authorizations,
        report,
    );
    let tls = match &raw.tls {
        None => Some(None),
        Some(tls) => listener_tls(tls, &format!("{path}.tls"), context, report).map(Some),
    };
    let shards = match &raw.shards {
        None => Some(None),
        Some(list) if list.is_empty() => {
            report.error(
                format!("{path}.shards"),
                "at least one shard, or leave it out for all shards",
            );
            None
        }
        Some(list) => {
            let mut out: Vec<usize> = Vec::with_capacity(list.len());
            let mut ok = true;
            for (k, v) in list.iter().enumerate() {
                match int_in(report, format!("{path}.shards[{k}]"), *v, 0, 1023)
                    .and_then(|n| usize::try_from(n).ok())
                {
                    Some(n) if out.contains(&n) => {
                        report.error(
                            format!("{path}.shards[{k}]"),
                            format!("shard {n} listed twice"),
                        );
                        ok = false;
                    }
                    Some(n) => out.push(n),
                    None => ok = false,
                }
            }
            ok.then_some(Some(out))
        }
    };
    Some(ListenerPort {
        addr: SocketAddr::new(ip?, number?),
        protocol: protocol?,
        authentication_ref,
        authorization_ref,
        tls: tls?,
        shards: shards?,
    })
}

fn protocol(text: Option<&str>, path: &str, report: &mut Report) -> Option<Protocol> {
    let Some(text) = text else {
        return Some(Protocol::Mqtt);
    };
    let path = format!("{path}.protocol");
    if text.eq_ignore_ascii_case("WebSockets") {
        report.error(path, "WebSockets is not supported yet (use Mqtt)");
        return None;
    }
    enum_value(report, path, text, &[("Mqtt", Protocol::Mqtt)])
}

/// A policy reference; `None` when absent or dangling (dangling is an error,
/// unless some policy failed to load and its name is unknown).
fn reference<T>(
    name: Option<&str>,
    path: &str,
    kind: &str,
    defined: &Validated<T>,
    report: &mut Report,
) -> Option<String> {
    let name = name?;
    if defined.names.iter().any(|defined| defined == name) {
        return Some(name.to_owned());
    }
    if defined.complete {
        report.error(
            path,
            format!("no {kind} named \"{name}\" (defined: {:?})", defined.names),
        );
    }
    None
}

/// Two ports conflict when they could not both be bound: the same address,
/// or a wildcard address (`0.0.0.0` for IPv4; `::`, dual-stack on Linux, for
/// both) on the same port as any other.
fn check_unique_addr(
    addr: SocketAddr,
    path: &str,
    bound: &mut Vec<(SocketAddr, String)>,
    report: &mut Report,
) {
    let overlaps = |other: &SocketAddr| {
        other.port() == addr.port()
            && (other.ip() == addr.ip()
                || wildcard_covers(other.ip(), addr.ip())
                || wildcard_covers(addr.ip(), other.ip()))
    };
    if let Some((other, other_path)) = bound.iter().find(|(other, _)| overlaps(other)) {
        let detail = if *other == addr {
            String::new()
        } else {
            format!(" ({other})")
        };
        report.error(
            path,
            format!("{addr} is already used by {other_path}{detail}"),
        );
    }
    bound.push((addr, path.to_owned()));
}

fn wildcard_covers(wildcard: IpAddr, other: IpAddr) -> bool {
    match wildcard {
        IpAddr::V4(v4) => v4.is_unspecified() && other.is_ipv4(),
        IpAddr::V6(v6) => v6.is_unspecified(),
    }
}

fn listener_tls(
    raw: &RawTls,
    path: &str,
    context: &Context<'_>,
    report: &mut Report,
) -> Option<ListenerTls> {
    #[derive(Clone, Copy)]
    enum Mode {
        Automatic,
        Manual,
    }
    let mode_path = format!("{path}.mode");
    let Some(text) = raw.mode.as_deref() else {
        report.error(mode_path, "required (Automatic or Manual)");
        return None;
    };
    let mode = enum_value(
        report,
        mode_path,
        text,
        &[("Automatic", Mode::Automatic), ("Manual", Mode::Manual)],
    )?;
    match mode {
        Mode::Manual => {
            if raw.cert_manager_certificate_spec.is_some() {
                report.warn(
                    format!("{path}.certManagerCertificateSpec"),
                    "ignored: tls.mode is Manual",
                );
            }
            let manual_path = format!("{path}.manual");
            let Some(manual) = &raw.manual else {
                report.error(
                    manual_path,
                    "required when tls.mode is Manual (certFile and keyFile, or secretRef)",
                );
                return None;
            };
            cert_key_files(manual, &manual_path, context.secrets, report).map(ListenerTls::Manual)
        }
        Mode::Automatic => {
            if raw.manual.is_some() {
                report.warn(format!("{path}.manual"), "ignored: tls.mode is Automatic");
            }
            let spec_path = format!("{path}.certManagerCertificateSpec");
            let Some(spec) = &raw.cert_manager_certificate_spec else {
                return Some(ListenerTls::Automatic(AutomaticTls {
                    cert: cert_policy(report, &spec_path, None, None, None),
                    san_dns: Vec::new(),
                    san_ip: Vec::new(),
                }));
            };
            for (field, value) in [
                ("issuerRef", &spec.issuer_ref),
                ("secretName", &spec.secret_name),
            ] {
                if value.is_some() {
                    report.kubernetes_only(format!("{spec_path}.{field}"));
                }
            }
            let cert = cert_policy(
                report,
                &spec_path,
                spec.duration.as_deref(),
                spec.renew_before.as_deref(),
                spec.private_key.as_ref(),
            );
            let san = spec.san.as_ref();
            let san_dns = san.and_then(|san| san.dns.clone()).unwrap_or_default();
            for (index, name) in san_dns.iter().enumerate() {
                if name.trim().is_empty() {
                    report.error(format!("{spec_path}.san.dns[{index}]"), "must not be empty");
                }
            }
            let mut san_ip = Vec::new();
            for (index, text) in san
                .and_then(|san| san.ip.as_deref())
                .unwrap_or_default()
                .iter()
                .enumerate()
            {
                match text.parse::<IpAddr>() {
                    Ok(ip) => san_ip.push(ip),
                    Err(_) => report.error(
                        format!("{spec_path}.san.ip[{index}]"),
                        format!("not an IP address: \"{text}\""),
                    ),
                }
            }
            Some(ListenerTls::Automatic(AutomaticTls {
                cert,
                san_dns,
                san_ip,
            }))
        }
    }
}

/// `certFile` + `keyFile`, or `secretRef: NAME` meaning
/// `<secretsDir>/NAME.crt` + `<secretsDir>/NAME.key`.
pub(crate) fn cert_key_files(
    raw: &RawCertKey,
    path: &str,
    secrets: &Secrets,
    report: &mut Report,
) -> Option<CertKeyFiles> {
    if let Some(name) = raw.secret_ref.as_deref() {
        let ref_path = format!("{path}.secretRef");
        if raw.cert_file.is_some() || raw.key_file.is_some() {
            report.error(
                ref_path,
                "give either secretRef or certFile and keyFile, not both",
            );
            return None;
        }
        if name.is_empty() || name.contains(['/', '\\']) || name == "." || name == ".." {
            report.error(
                ref_path,
                format!("not a secret name: \"{name}\" (a plain name, no path separators)"),
            );
            return None;
        }
        let Some(dir) = &secrets.dir else {
            if !secrets.given {
                report.error(
                    ref_path,
                    format!(
                        "needs the top-level secretsDir, where {name}.crt and {name}.key are read from (or give certFile and keyFile instead)"
                    ),
                );
            }
            return None;
        };
        return Some(CertKeyFiles {
            cert_file: dir.join(format!("{name}.crt")),
            key_file: dir.join(format!("{name}.key")),
        });
    }
    match (raw.cert_file.as_deref(), raw.key_file.as_deref()) {
        (None, None) => {
            report.error(path, "certFile and keyFile (or secretRef) are required");
            None
        }
        (Some(_), None) => {
            report.error(format!("{path}.keyFile"), "required with certFile");
            None
        }
        (None, Some(_)) => {
            report.error(format!("{path}.certFile"), "required with keyFile");
            None
        }
        (Some(cert), Some(key)) => {
            let cert_file = self::path(report, format!("{path}.certFile"), cert);
            let key_file = self::path(report, format!("{path}.keyFile"), key);
            Some(CertKeyFiles {
                cert_file: cert_file?,
                key_file: key_file?,
            })
        }
    }
}
