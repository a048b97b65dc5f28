//! MQTT 3.1.1 and 5.0 wire codec: one packet model for both versions, decode
//! from a `BytesMut` (returning `Ok(None)` until a whole frame is buffered),
//! encode into a `BytesMut`. No I/O. Every violation is a typed
//! [`DecodeError`] naming the spec rule and mapping to the reason code sent.

mod packet;
mod properties;
mod reason;

pub use packet::*;
pub use properties::Properties;
pub use reason::ReasonCode;
