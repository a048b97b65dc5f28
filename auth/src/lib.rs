//! shardmq-auth: authentication (none, X509, service-account tokens, webhook),
//! authorization rules and TLS configuration. Built in the TLS/auth issue; until
//! then every listener is anonymous and every action is allowed.
