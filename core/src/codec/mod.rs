//! MQTT 3.1.1 and 5.0 wire codec: one packet model for both versions, decode
//! from a `BytesMut` (returning `Ok(None)` until a whole frame is buffered),
//! encode into a `BytesMut`. No I/O. Every violation is a typed
//! [`DecodeError`] naming the spec rule and mapping to the reason code sent.

mod decode;
mod encode;
mod error;
mod inbox;
mod packet;
mod properties;
mod property_codec;
mod props;
mod reason;
mod wire;

#[cfg(test)]
mod tests;

pub use decode::{decode_packet, AckKind, Decoder, ShortAck, TOPIC_FILTERS_PER_PACKET_MAX};
pub use encode::{encode, encode_forward, encode_publish, encode_within, encoded_len, Forward};
pub use error::{DecodeError, EncodeError};
pub use inbox::{Inbox, LARGE_FRAME_BYTES};
pub use packet::*;
pub use properties::{
    Properties, PropertyContext, PropertyId, SUBSCRIPTION_IDENTIFIER_MAX, USER_PROPERTIES_MAX,
};
pub use props::Props;
pub use reason::ReasonCode;
pub use wire::VARINT_MAX;
