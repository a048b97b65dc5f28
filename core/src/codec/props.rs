//! `Props`: the property set a packet (or a routed message) carries, boxed
//! only when it has any.
//! Reads go through `Deref` to an empty set, writes through `DerefMut`
//! (which allocates), so code reads `packet.properties.topic_alias` as if
//! the set were inline.

use std::ops::{Deref, DerefMut};

use super::properties::Properties;

/// A packet's properties: no allocation and one word when empty.
// PERF: `Properties` is ~400 bytes inline. Every decoded PUBLISH and every
// PUBACK built made and moved that much (a packet was 472 bytes) though
// telemetry almost never carries a property.
#[derive(Clone, Default)]
pub struct Props(Option<Box<Properties>>);

static EMPTY: Properties = Properties::EMPTY;

impl Props {
    /// The set by value (empty when there is none).
    pub fn into_inner(self) -> Properties {
        self.0.map(|b| *b).unwrap_or_default()
    }

    /// The set, if one was ever given (it may be empty).
    pub fn as_deref(&self) -> Option<&Properties> {
        self.0.as_deref()
    }

    /// A set already boxed.
    pub fn from_box(p: Box<Properties>) -> Props {
        Props(Some(p))
    }

    /// The box, if the set was ever given one.
    pub fn into_box(self) -> Option<Box<Properties>> {
        self.0
    }

    /// The set to change, if there is one. `DerefMut` allocates an empty
    /// set to write into; this does not, for code that only removes.
    pub fn get_mut(&mut self) -> Option<&mut Properties> {
        self.0.as_deref_mut()
    }

    /// Takes the set out, leaving an empty one.
    pub fn take(&mut self) -> Props {
        Props(self.0.take())
    }
}

impl Deref for Props {
    type Target = Properties;

    fn deref(&self) -> &Properties {
        self.0.as_deref().unwrap_or(&EMPTY)
    }
}

impl DerefMut for Props {
    fn deref_mut(&mut self) -> &mut Properties {
        self.0.get_or_insert_with(Box::default)
    }
}

impl From<Properties> for Props {
    fn from(p: Properties) -> Props {
        if p.is_empty() {
            Props(None)
        } else {
            Props(Some(Box::new(p)))
        }
    }
}

impl From<Props> for Properties {
    fn from(p: Props) -> Properties {
        p.into_inner()
    }
}

/// Equal when the sets are: an allocated empty set equals none.
impl PartialEq for Props {
    fn eq(&self, other: &Props) -> bool {
        **self == **other
    }
}

impl Eq for Props {}

impl PartialEq<Properties> for Props {
    fn eq(&self, other: &Properties) -> bool {
        **self == *other
    }
}

impl std::fmt::Debug for Props {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self).fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_set_allocates_nothing_and_equals_an_allocated_empty_one() {
        let none = Props::default();
        assert!(none.0.is_none());
        assert!(none.is_empty());
        let mut touched = Props::default();
        touched.user_properties.clear(); // a write: boxes an empty set
        assert!(touched.0.is_some());
        assert_eq!(none, touched);
        assert!(Props::from(Properties::default()).0.is_none());
        let mut none = Props::default();
        assert!(none.get_mut().is_none());
        assert!(none.0.is_none());
    }

    #[test]
    fn a_write_is_read_back_and_survives_clone_and_take() {
        let mut p = Props::default();
        p.user_properties.push(("k".into(), "v".into()));
        p.topic_alias = Some(7);
        let copy = p.clone();
        let taken = p.take();
        assert!(p.is_empty());
        assert_eq!(taken, copy);
        assert_eq!(taken.into_inner().topic_alias, Some(7));
    }

    #[test]
    fn packets_stay_small() {
        // The point of the box: a decoded packet moves in a few words.
        assert!(std::mem::size_of::<Props>() == std::mem::size_of::<usize>());
        assert!(std::mem::size_of::<super::super::Packet>() <= 96);
    }
}
