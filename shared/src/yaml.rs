//! YAML read the way Kubernetes tools read it: a key repeated in a mapping keeps its last
//! value (kubeadm's dual-stack example repeats `clusterCIDR` on purpose), where
//! `serde_norway::Value` refuses the whole document.

use serde::de::{
    Deserialize, Deserializer, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor,
};
use serde_norway::value::{Tag, TaggedValue};
use serde_norway::{Mapping, Value};
use std::fmt;

/// A YAML value whose mappings keep the last of repeated keys.
pub struct LastKeyWins(pub Value);

impl<'de> Deserialize<'de> for LastKeyWins {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<LastKeyWins, D::Error> {
        d.deserialize_any(Builder)
    }
}

struct Builder;

impl<'de> Visitor<'de> for Builder {
    type Value = LastKeyWins;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_bool<E>(self, b: bool) -> Result<LastKeyWins, E> {
        Ok(LastKeyWins(Value::Bool(b)))
    }
    fn visit_i64<E>(self, n: i64) -> Result<LastKeyWins, E> {
        Ok(LastKeyWins(Value::Number(n.into())))
    }
    fn visit_u64<E>(self, n: u64) -> Result<LastKeyWins, E> {
        Ok(LastKeyWins(Value::Number(n.into())))
    }
    fn visit_f64<E>(self, n: f64) -> Result<LastKeyWins, E> {
        Ok(LastKeyWins(Value::Number(n.into())))
    }
    fn visit_str<E>(self, s: &str) -> Result<LastKeyWins, E> {
        Ok(LastKeyWins(Value::String(s.into())))
    }
    fn visit_string<E>(self, s: String) -> Result<LastKeyWins, E> {
        Ok(LastKeyWins(Value::String(s)))
    }
    fn visit_unit<E>(self) -> Result<LastKeyWins, E> {
        Ok(LastKeyWins(Value::Null))
    }
    fn visit_none<E>(self) -> Result<LastKeyWins, E> {
        Ok(LastKeyWins(Value::Null))
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<LastKeyWins, D::Error> {
        LastKeyWins::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<LastKeyWins, A::Error> {
        let mut items = Vec::new();
        while let Some(LastKeyWins(v)) = a.next_element()? {
            items.push(v);
        }
        Ok(LastKeyWins(Value::Sequence(items)))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<LastKeyWins, A::Error> {
        let mut m = Mapping::new();
        while let Some((LastKeyWins(k), LastKeyWins(v))) = a.next_entry()? {
            m.insert(k, v);
        }
        Ok(LastKeyWins(Value::Mapping(m)))
    }
    fn visit_enum<A: EnumAccess<'de>>(self, a: A) -> Result<LastKeyWins, A::Error> {
        let (tag, contents): (String, _) = a.variant()?;
        let LastKeyWins(value) = contents.newtype_variant()?;
        Ok(LastKeyWins(Value::Tagged(Box::new(TaggedValue {
            tag: Tag::new(tag),
            value,
        }))))
    }
}

/// Every document of `text`, repeated keys keeping their last value.
pub fn documents(text: &str) -> impl Iterator<Item = Result<Value, serde_norway::Error>> + '_ {
    serde_norway::Deserializer::from_str(text).map(|d| LastKeyWins::deserialize(d).map(|v| v.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_key_keeps_its_last_value_and_the_rest_reads_as_usual() {
        let docs: Vec<Value> = documents(
            "a: 1\nb: {x: 1}\na: 2\n---\nt: !foo {x: 1}\ns: [1, 2.5, null, ~, true]\nx: &r {y: 1}\nz: *r\n",
        )
        .collect::<Result<_, _>>()
        .unwrap();
        assert_eq!(
            docs[0],
            serde_norway::from_str::<Value>("a: 2\nb: {x: 1}\n").unwrap()
        );
        assert_eq!(
            docs[1],
            serde_norway::from_str::<Value>(
                "t: !foo {x: 1}\ns: [1, 2.5, null, ~, true]\nx: {y: 1}\nz: {y: 1}\n"
            )
            .unwrap()
        );
        assert!(documents("a: [1\n").next().unwrap().is_err());
    }
}
