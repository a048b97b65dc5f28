//! The [`Authenticator`] of one `authentications[]` entry: its methods in
//! config order, each applying to one kind of credential (X509: a client
//! certificate; ServiceAccountToken: authentication method `K8S-SAT`;
//! UsernamePassword: a user name; Custom: anything). The first method that
//! applies decides. Synchronous except Custom, which returns a request for
//! the server to send off its shard. MQTT 5.0 §3.1.2.9-10, §4.12.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::server::danger::ClientCertVerifier;
use shardmq_core::config::{Authentication, AuthenticationMethod, CustomSettings};

use crate::identity::{AuthError, ConnectInfo, Identity, MethodKind};
use crate::jwt::{JwtError, TokenVerifier, SAT_METHOD};
use crate::password::{PasswordFile, PasswordFileError};
use crate::webhook::{Webhook, WebhookError, WebhookRequest};
use crate::x509::{ClientCa, X509Error};

/// A method's settings that cannot be used (at load or reload).
#[derive(Debug, thiserror::Error)]
pub enum MethodError {
    #[error(transparent)]
    X509(#[from] X509Error),
    #[error(transparent)]
    Token(#[from] JwtError),
    #[error(transparent)]
    Password(#[from] PasswordFileError),
    #[error(transparent)]
    Webhook(#[from] WebhookError),
}

/// Which method of which policy failed to load or reload.
#[derive(Debug, thiserror::Error)]
#[error("authentications[{policy}].authenticationMethods[{index}]: {source}")]
pub struct AuthSetupError {
    pub policy: String,
    pub index: usize,
    #[source]
    pub source: MethodError,
}

enum Method {
    X509(Arc<ClientCa>),
    Token(TokenVerifier),
    Password {
        file: PathBuf,
        passwords: ArcSwap<PasswordFile>,
    },
    Custom {
        settings: CustomSettings,
        timeout: Duration,
        webhook: ArcSwap<Arc<Webhook>>,
    },
}

impl Method {
    fn kind(&self) -> MethodKind {
        match self {
            Method::X509(_) => MethodKind::X509,
            Method::Token(_) => MethodKind::ServiceAccountToken,
            Method::Password { .. } => MethodKind::UsernamePassword,
            Method::Custom { .. } => MethodKind::Custom,
        }
    }

    /// Whether this method handles the credentials `info` carries.
    fn applies(&self, info: &ConnectInfo<'_>) -> bool {
        match self {
            Method::X509(_) => !info.peer_certs.is_empty(),
            Method::Token(_) => info.auth_method == Some(SAT_METHOD),
            Method::Password { .. } => info.username.is_some(),
            Method::Custom { .. } => true,
        }
    }
}

/// What authentication decided, or what the server must still do.
#[derive(Debug)]
pub enum Outcome {
    Authenticated(Identity),
    /// The Custom method applies: send this on a thread that may block
    /// ([`WebhookRequest::send`]); its result is the decision.
    Webhook(WebhookRequest),
}

/// One `authentications[]` entry, loaded. Share it (`Arc`) among shards:
/// everything inside is read-only or swapped atomically on reload.
pub struct Authenticator {
    name: String,
    methods: Vec<Method>,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("name", &self.name)
            .field(
                "methods",
                &self.methods.iter().map(Method::kind).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Authenticator {
    /// Loads every method's files. `webhook_timeout` bounds each Custom
    /// call ([`crate::webhook::DEFAULT_TIMEOUT`] is a sensible value).
    pub fn new(
        config: &Authentication,
        webhook_timeout: Duration,
    ) -> Result<Authenticator, AuthSetupError> {
        // The handshake may go without a client certificate unless X509 is
        // the only way in.
        let x509_only = config.methods.len() == 1;
        let mut methods = Vec::with_capacity(config.methods.len());
        for (index, method) in config.methods.iter().enumerate() {
            let setup = |source: MethodError| AuthSetupError {
                policy: config.name.clone(),
                index,
                source,
            };
            let loaded = match method {
                AuthenticationMethod::X509(settings) => ClientCa::load(settings, x509_only)
                    .map(|ca| Method::X509(Arc::new(ca)))
                    .map_err(|e| setup(e.into()))?,
                AuthenticationMethod::ServiceAccountToken(settings) => {
                    TokenVerifier::load(settings)
                        .map(Method::Token)
                        .map_err(|e| setup(e.into()))?
                }
                AuthenticationMethod::UsernamePassword(settings) => {
                    let passwords =
                        PasswordFile::load(&settings.password_file).map_err(|e| setup(e.into()))?;
                    Method::Password {
                        file: settings.password_file.clone(),
                        passwords: ArcSwap::from_pointee(passwords),
                    }
                }
                AuthenticationMethod::Custom(settings) => {
                    let webhook =
                        Webhook::new(settings, webhook_timeout).map_err(|e| setup(e.into()))?;
                    Method::Custom {
                        settings: settings.clone(),
                        timeout: webhook_timeout,
                        webhook: ArcSwap::from_pointee(Arc::new(webhook)),
                    }
                }
            };
            methods.push(loaded);
        }
        Ok(Authenticator {
            name: config.name.clone(),
            methods,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The client certificate verifier for the TLS config of every port
    /// using this policy, when it has an X509 method: pass it to
    /// [`crate::tls::server_config`]. Mandatory (the handshake fails without
    /// a certificate) when X509 is the only method.
    pub fn client_cert_verifier(&self) -> Option<Arc<dyn ClientCertVerifier>> {
        self.methods.iter().find_map(|method| match method {
            Method::X509(ca) => Some(Arc::clone(ca) as Arc<dyn ClientCertVerifier>),
            _ => None,
        })
    }

    /// Whether AUTH re-authentication with `method` is possible here.
    pub fn supports_auth_method(&self, method: &str) -> bool {
        method == SAT_METHOD && self.methods.iter().any(|m| matches!(m, Method::Token(_)))
    }

    /// Decides on `info` at `now`: the first method (in config order) that
    /// applies to the presented credentials accepts or rejects the client;
    /// later methods are not tried after a rejection. A CONNECT naming an
    /// authentication method no configured method serves is refused first,
    /// with 0x8C Bad authentication method [MQTT-4.12.0-1].
    pub fn authenticate(
        &self,
        info: &ConnectInfo<'_>,
        now: SystemTime,
    ) -> Result<Outcome, AuthError> {
        if let Some(method) = info.auth_method {
            if !self.supports_auth_method(method) {
                return Err(AuthError::UnsupportedMethod(method.to_owned()));
            }
        }
        let Some(method) = self.methods.iter().find(|m| m.applies(info)) else {
            return Err(AuthError::NoCredentials);
        };
        match method {
            Method::X509(ca) => ca
                .authenticate(info.peer_certs, now)
                .map(Outcome::Authenticated),
            Method::Token(verifier) => {
                let token = info
                    .auth_data
                    .ok_or_else(|| AuthError::Token("no authentication data".to_owned()))?;
                verifier.verify(token, now).map(Outcome::Authenticated)
            }
            Method::Password { passwords, .. } => {
                let (Some(username), Some(password)) = (info.username, info.password) else {
                    return Err(AuthError::BadUsernameOrPassword);
                };
                if passwords.load().verify(username, password) {
                    Ok(Outcome::Authenticated(Identity {
                        method: MethodKind::UsernamePassword,
                        username: Some(username.to_owned()),
                        attributes: Default::default(),
                        expiry: None,
                    }))
                } else {
                    Err(AuthError::BadUsernameOrPassword)
                }
            }
            Method::Custom { webhook, .. } => Ok(Outcome::Webhook(webhook.load().request(info))),
        }
    }

    /// Re-reads every method's files (CA bundle, token keys, password file,
    /// webhook CA and client certificate). Each method keeps its previous
    /// state when its files are bad; every failure is returned.
    pub fn reload(&self) -> Result<(), Vec<AuthSetupError>> {
        let mut errors = Vec::new();
        for (index, method) in self.methods.iter().enumerate() {
            let result: Result<(), MethodError> = match method {
                Method::X509(ca) => ca.reload().map_err(Into::into),
                Method::Token(verifier) => verifier.reload().map_err(Into::into),
                Method::Password { file, passwords } => PasswordFile::load(file)
                    .map(|p| passwords.store(Arc::new(p)))
                    .map_err(Into::into),
                Method::Custom {
                    settings,
                    timeout,
                    webhook,
                } => Webhook::new(settings, *timeout)
                    .map(|w| webhook.store(Arc::new(Arc::new(w))))
                    .map_err(Into::into),
            };
            if let Err(source) = result {
                errors.push(AuthSetupError {
                    policy: self.name.clone(),
                    index,
                    source,
                });
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz::AuthorizationPolicy;
    use crate::test_pki::{days, Pki};
    use shardmq_core::config::{
        Authorization, AuthorizationRule, BrokerAction, BrokerResource, Principals,
        ServiceAccountTokenSettings, TokenKey, UsernamePasswordSettings, X509Attributes,
        X509Settings,
    };
    use shardmq_core::session::Permissions;
    use shardmq_core::topic::TopicName;

    /// `mosquitto_passwd -b -c pw alice secret`.
    const ALICE: &str = "alice:$7$101$mCEzUuO1jVfDW5f0$Fx4PHuw9NpLxjS1DbXon0iJd1dm5qWDCzMrIM+Q0hmq7G9m0JoSRfysr+IWpV/Z/O9U8MicF87wGvuGwTqQubg==\n";

    fn x509(pki: &Pki) -> AuthenticationMethod {
        AuthenticationMethod::X509(X509Settings {
            trusted_client_ca_cert: pki.write("clients-ca.pem", &pki.client_root.cert_pem),
            authorization_attributes: [(
                "clientA".to_string(),
                X509Attributes {
                    subject: "CN = clientA".into(),
                    attributes: [("group".to_string(), "testers".to_string())].into(),
                },
            )]
            .into(),
        })
    }

    fn passwords(pki: &Pki) -> AuthenticationMethod {
        AuthenticationMethod::UsernamePassword(UsernamePasswordSettings {
            password_file: pki.write("passwd", ALICE),
        })
    }

    fn authenticator(methods: Vec<AuthenticationMethod>) -> Authenticator {
        Authenticator::new(
            &Authentication {
                name: "policy".into(),
                methods,
            },
            crate::webhook::DEFAULT_TIMEOUT,
        )
        .unwrap()
    }

    fn identity(outcome: Result<Outcome, AuthError>) -> Result<Identity, AuthError> {
        match outcome? {
            Outcome::Authenticated(identity) => Ok(identity),
            Outcome::Webhook(request) => panic!("unexpected webhook {request:?}"),
        }
    }

    #[test]
    fn seed_flow_x509_clients_are_authorized_by_their_certificate_attributes() {
        let pki = Pki::new();
        let authn = authenticator(vec![x509(&pki)]);
        let authz = AuthorizationPolicy::new(&Authorization {
            name: "testtopic-rules".into(),
            cache: true,
            rules: vec![AuthorizationRule {
                principals: Principals {
                    attributes: vec![[("group".to_string(), "testers".to_string())].into()],
                    ..Principals::default()
                },
                broker_resources: vec![
                    BrokerResource {
                        action: BrokerAction::Connect,
                        topics: vec![],
                        client_ids: vec![],
                    },
                    BrokerResource {
                        action: BrokerAction::Publish,
                        topics: vec!["testtopic/#".into()],
                        client_ids: vec![],
                    },
                ],
            }],
        })
        .unwrap();
        let client_a = pki.client("clientA", days(30)).chain_der();
        let info = ConnectInfo {
            client_id: "a",
            peer_certs: &client_a,
            ..ConnectInfo::default()
        };
        let id = identity(authn.authenticate(&info, SystemTime::now())).unwrap();
        let perms = crate::permissions(Some(&authz), &id, "a");
        assert!(perms.can_connect());
        assert!(perms.can_publish(&TopicName::try_from("testtopic/1").unwrap()));
        assert!(!perms.can_publish(&TopicName::try_from("other/1").unwrap()));

        let client_b = pki.client("clientB", days(30)).chain_der();
        let info = ConnectInfo {
            peer_certs: &client_b,
            ..info
        };
        let id = identity(authn.authenticate(&info, SystemTime::now())).unwrap();
        assert!(!crate::permissions(Some(&authz), &id, "b").can_connect());
        assert!(crate::permissions(None, &id, "b").can_connect());
    }

    #[test]
    fn methods_are_tried_in_order_and_the_first_that_applies_decides() {
        let pki = Pki::new();
        let authn = authenticator(vec![x509(&pki), passwords(&pki)]);
        let verifier = authn.client_cert_verifier().unwrap();
        assert!(
            !verifier.client_auth_mandatory(),
            "password clients need no certificate"
        );
        let now = SystemTime::now();

        let chain = pki.client("clientA", days(1)).chain_der();
        let with_cert = ConnectInfo {
            client_id: "a",
            username: Some("alice"),
            password: Some(b"wrong"),
            peer_certs: &chain,
            ..ConnectInfo::default()
        };
        assert_eq!(
            identity(authn.authenticate(&with_cert, now))
                .unwrap()
                .method,
            MethodKind::X509
        );

        let good = ConnectInfo {
            client_id: "a",
            username: Some("alice"),
            password: Some(b"secret"),
            ..ConnectInfo::default()
        };
        let id = identity(authn.authenticate(&good, now)).unwrap();
        assert_eq!(id.method, MethodKind::UsernamePassword);
        assert_eq!(id.username.as_deref(), Some("alice"));

        let wrong = ConnectInfo {
            password: Some(b"wrong"),
            ..good
        };
        let err = identity(authn.authenticate(&wrong, now)).unwrap_err();
        assert_eq!(err.reason_code().as_u8(), 0x86);
        let no_password = ConnectInfo {
            password: None,
            ..good
        };
        assert_eq!(
            identity(authn.authenticate(&no_password, now)).unwrap_err(),
            AuthError::BadUsernameOrPassword
        );
        let nothing = ConnectInfo {
            client_id: "a",
            ..ConnectInfo::default()
        };
        let err = identity(authn.authenticate(&nothing, now)).unwrap_err();
        assert_eq!(err, AuthError::NoCredentials);
        assert_eq!(err.reason_code().as_u8(), 0x87);
    }

    #[test]
    fn x509_alone_makes_the_client_certificate_mandatory() {
        let pki = Pki::new();
        let authn = authenticator(vec![x509(&pki)]);
        assert!(authn
            .client_cert_verifier()
            .unwrap()
            .client_auth_mandatory());
        assert!(authenticator(vec![passwords(&pki)])
            .client_cert_verifier()
            .is_none());
    }

    #[test]
    fn tokens_need_the_k8s_sat_method_and_unknown_methods_get_0x8c() {
        let pki = Pki::new();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let authn = authenticator(vec![
            AuthenticationMethod::ServiceAccountToken(ServiceAccountTokenSettings {
                audiences: vec!["broker".into()],
                keys: vec![TokenKey::File(pki.write("sat.pem", &key.public_key_pem()))],
            }),
            passwords(&pki),
        ]);
        assert!(authn.supports_auth_method(SAT_METHOD));
        assert!(!authn.supports_auth_method("SCRAM-SHA-1"));
        let now = SystemTime::now();
        let exp = now.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 600;
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA),
            &serde_json::json!({"aud": "broker", "exp": exp, "sub": "sensor"}),
            &jsonwebtoken::EncodingKey::from_ed_pem(key.serialize_pem().as_bytes()).unwrap(),
        )
        .unwrap();
        let info = ConnectInfo {
            client_id: "s",
            auth_method: Some(SAT_METHOD),
            auth_data: Some(token.as_bytes()),
            ..ConnectInfo::default()
        };
        let id = identity(authn.authenticate(&info, now)).unwrap();
        assert_eq!(id.method, MethodKind::ServiceAccountToken);
        assert_eq!(id.username.as_deref(), Some("sensor"));
        // Re-authentication later, after the token expired.
        let later = now + Duration::from_secs(601);
        assert_eq!(
            identity(authn.authenticate(&info, later))
                .unwrap_err()
                .reason_code()
                .as_u8(),
            0x87
        );
        let no_data = ConnectInfo {
            auth_data: None,
            ..info
        };
        assert!(matches!(
            identity(authn.authenticate(&no_data, now)),
            Err(AuthError::Token(_))
        ));
        let scram = ConnectInfo {
            auth_method: Some("SCRAM-SHA-1"),
            username: Some("alice"),
            password: Some(b"secret"),
            ..info
        };
        let err = identity(authn.authenticate(&scram, now)).unwrap_err();
        assert_eq!(err.reason_code().as_u8(), 0x8C);
    }

    #[test]
    fn the_custom_method_hands_the_server_a_request_to_send() {
        let pki = Pki::new();
        let authn = authenticator(vec![AuthenticationMethod::Custom(CustomSettings {
            endpoint: "https://127.0.0.1:1/auth".into(),
            ca_cert_file: Some(pki.write("hook-ca.pem", &pki.server_root.cert_pem)),
            headers: Default::default(),
            client_cert: None,
        })]);
        let info = ConnectInfo {
            client_id: "c",
            ..ConnectInfo::default()
        };
        assert!(matches!(
            authn.authenticate(&info, SystemTime::now()),
            Ok(Outcome::Webhook(_))
        ));
    }

    #[test]
    fn load_and_reload_errors_name_the_policy_and_the_method() {
        let pki = Pki::new();
        let missing = AuthenticationMethod::UsernamePassword(UsernamePasswordSettings {
            password_file: pki.dir.path().join("missing"),
        });
        let err = Authenticator::new(
            &Authentication {
                name: "policy".into(),
                methods: vec![x509(&pki), missing],
            },
            crate::webhook::DEFAULT_TIMEOUT,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("authentications[policy].authenticationMethods[1]: "),
            "{err}"
        );
        assert!(err.contains("missing: cannot read password file"), "{err}");

        let authn = authenticator(vec![x509(&pki), passwords(&pki)]);
        std::fs::write(pki.dir.path().join("passwd"), "alice:plain\n").unwrap();
        let errors = authn.reload().unwrap_err();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].index, 1);
        // The previous password file stays in use.
        let good = ConnectInfo {
            client_id: "a",
            username: Some("alice"),
            password: Some(b"secret"),
            ..ConnectInfo::default()
        };
        assert!(identity(authn.authenticate(&good, SystemTime::now())).is_ok());
    }
}
